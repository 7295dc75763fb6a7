"""dashboard/data (queries, stats, studies, images): SQL aggregates agree with bench.metrics (the numbers of `python -m bench report`), the app
survives a writer holding the DB, bad DB files are reported, and image paths cannot escape the dataset root."""
from __future__ import annotations

import time

import duckdb
import numpy as np
import pandas as pd
import pytest

from conftest import db_writer
from dashboard import demo
from dashboard.data import db as DB, images, queries as Q, stats, studies

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("qdb") / "bench.duckdb"
    demo.write_predictions_db(path, demo.demo_models(6), demo.make_images(1500, seed=1), seed=1, pert_images=40,
                              perturbations={"blur": 2, "jpeg": 2})
    return str(path)


@pytest.fixture(scope="module")
def frame(db):
    con = duckdb.connect(db, read_only=True)
    try:
        return con.execute("""SELECT p.*, i.age, i.gender::DOUBLE AS gender, i.race FROM predictions p
                              JOIN images i USING (dataset, image_id)
                              WHERE p.perturbation = 'none' AND i.split = 'test' AND p.dataset = 'utkface'""").df()
    finally:
        con.close()


def test_leaderboard_matches_bench_metrics(db, frame):
    bm = pytest.importorskip("bench.metrics")
    lb = Q.model_scores.raw(db, DB.db_version(db), "utkface", "test").set_index("model_id")
    ref = bm.leaderboard(frame, n_boot=400).set_index("model_id").loc[lb.index]
    assert len(lb) == 6 and lb["n"].min() > 200
    for mine, theirs in [("mae", "mae"), ("rmse", "rmse"), ("cs5", "cs5"), ("acc10", "acc10"),
                         ("gender_acc", "gender_acc"), ("f1", "gender_f1")]:
        np.testing.assert_allclose(lb[mine], ref[theirs], atol=1e-9, err_msg=mine)
    np.testing.assert_allclose(lb["gender_auc"], ref["gender_auc"], atol=1e-3)  # logit-binned
    # Analytic intervals vs bench's percentile bootstrap: the same to a fraction of their width.
    for m, tol in [("mae", 0.2), ("rmse", 0.2), ("cs5", 0.2), ("acc10", 0.2), ("gender_acc", 0.3),
                   ("gender_auc", 0.45)]:
        width = ref[f"{m}_hi"] - ref[f"{m}_lo"]
        for side in ("lo", "hi"):
            rel = (lb[f"{m}_{side}"] - ref[f"{m}_{side}"]).abs() / width
            assert rel.max() < tol, (m, side, rel.max())
    assert (lb["mae_lo"] < lb["mae"]).all() and (lb["mae"] < lb["mae_hi"]).all()


def test_fairness_uncertainty_and_slices_match_bench_metrics(db, frame):
    bm = pytest.importorskip("bench.metrics")
    ver = DB.db_version(db)
    models = tuple(sorted(frame["model_id"].unique()))
    gaps = stats.group_gaps(Q.group_scores.raw(db, ver, models, "utkface", "test", "race"), min_n=1)
    gaps = gaps.set_index("model_id")
    summary = Q.uncertainty_summary.raw(db, ver, models, "utkface", "test")
    area = stats.aurc(Q.risk_coverage_curves.raw(db, ver, models, "utkface", "test"))
    ages = Q.group_scores.raw(db, ver, models, "utkface", "test", "age group")
    for m in models:
        sub = frame[frame["model_id"] == m]
        ref = bm.fairness_gaps(sub, "race")
        assert gaps.loc[m, "mae_gap"] == pytest.approx(ref["mae_gap"], abs=1e-9)
        assert gaps.loc[m, "gender_acc_gap"] == pytest.approx(ref["gender_acc_gap"], abs=1e-9)
        assert gaps.loc[m, "eq_odds_diff"] == pytest.approx(ref["equalized_odds_diff"], abs=1e-9)
        ref_age = bm.group_metrics(sub.assign(age_group=bm.age_group(sub["age"])), "age_group", n_boot=0)
        mine = ages[ages["model_id"] == m].set_index("grp")["mae"]
        for _, r in ref_age.iterrows():
            assert mine[r["age_group"]] == pytest.approx(r["mae"], abs=1e-9)
        if sub["sigma_aleatoric"].notna().any():
            cov = bm.interval_coverage(sub["age_pred"].values, sub["sigma_aleatoric"].values, sub["age"].values)
            row = summary[(summary["model_id"] == m) & (summary["source"] == "aleatoric")].iloc[0]
            for lv, v in cov.items():
                assert row[f"cov_{int(lv * 100)}"] == pytest.approx(v, abs=1e-9)
            sp = bm.sparsification(np.abs(sub["age_pred"] - sub["age"]).values, sub["sigma_aleatoric"].values)
            mine_aurc = area[(area["model_id"] == m) & (area["source"] == "aleatoric")]["aurc"].iloc[0]
            assert mine_aurc == pytest.approx(sp["aurc"], rel=0.02)  # 1 %-wide σ bins vs exact ranking


def test_every_query_runs_and_slices_cover_all_rows(db):
    ver = DB.db_version(db)
    lb = Q.model_scores.raw(db, ver, "utkface", "test")
    models = tuple(lb["model_id"][:3])
    n_clean = lb.set_index("model_id").loc[list(models), "n"].sum()
    for name, (_, uses_pert, _) in Q.SLICES.items():
        d = Q.slice_metrics.raw(db, ver, models, "utkface", "test", name)
        assert len(d), name
        if not uses_pert:
            assert d["n"].sum() == n_clean, name  # every clean row lands in exactly one slice value
    q = Q.slice_metrics.raw(db, ver, models, "utkface", "test", "lighting quartile (per dataset)")
    assert set(q["slice"]) <= {"Q1 darkest", "Q2", "Q3", "Q4 brightest", "unknown"}
    rob = Q.robustness.raw(db, ver, models, "utkface", "test")
    assert set(rob["severity"]) == {0, 1, 2} and set(rob["perturbation"]) == {"blur", "jpeg"}
    assert (rob.groupby(["model_id", "perturbation"])["mae"].apply(lambda s: s.iloc[-1] > s.iloc[0])).all()
    assert len(Q.mae_by_age.raw(db, ver, models, "utkface", "test"))
    assert Q.error_hist.raw(db, ver, models, "utkface", "test")["n"].sum() == n_clean
    pts = Q.scatter_sample.raw(db, ver, models[0], "utkface", "test", 50)
    assert len(pts) == 50
    keys = tuple(zip(pts["dataset"][:7], pts["image_id"][:7]))
    sel = Q.browser_rows.raw(db, ver, models[0], "*", "*", (), keys)
    assert set(sel["image_id"]) == {k[1] for k in keys}
    worst = Q.browser_rows.raw(db, ver, models[0], "utkface", "test", (("age group", "60+"),), limit=10)
    assert (worst["age"] >= 60).all() and worst["err"].abs().is_monotonic_decreasing
    gc = Q.gender_calibration.raw(db, ver, models, "utkface", "test")
    assert gc["n"].sum() > 0 and gc["prob"].between(0, 1).all()
    scores = Q.clean_scores.raw(db, ver, "test")
    frame = studies.study_frame(Q.models.raw(db, ver), scores, pd.DataFrame())
    cross = studies.cross_dataset(frame, scores)
    assert {"utkface", "appa"} <= set(cross["plain"].columns)
    assert len(cross["pairs"]) == 1 and cross["pairs"]["target"].iloc[0] == "appa"
    aug = studies.study(frame, "augment")
    assert aug["missing"] == ["none", "strong"]  # the 6-model demo zoo only trains `light`


def test_writer_holding_the_db_serves_last_results(tmp_path, monkeypatch):
    monkeypatch.setenv("DASHBOARD_DB_LOCK_TIMEOUT", "0.3")
    path = tmp_path / "bench.duckdb"
    demo.write_predictions_db(path, demo.demo_models(2), demo.make_images(120, seed=2), perturbations={})
    db = str(path)
    first = Q.model_scores(db, DB.db_version(db), "utkface", "test")
    assert Q.db_status(db, DB.db_version(db))["state"] == "ok"
    DB.reset_stale()
    with db_writer(db):
        ver = DB.db_version(db)
        t0 = time.perf_counter()
        again = Q.model_scores(db, ver, "utkface", "test")  # new version, locked -> the last good result
        assert again.equals(first) and DB.stale() == ["model_scores"]
        with pytest.raises(DB.DBBusy):  # never read before: nothing to fall back on
            Q.robustness(db, ver, ("x",), "utkface", "test")
        assert time.perf_counter() - t0 < 3
        assert Q.db_status(db, ver)["state"] == "ok"  # the status falls back too
    DB._BUSY_UNTIL.clear()
    DB.reset_stale()
    ver = DB.db_version(db)
    assert Q.model_scores(db, ver, "utkface", "test").equals(first) and DB.stale() == []


def test_db_states(tmp_path):
    missing = str(tmp_path / "none.duckdb")
    assert Q.db_status.raw(missing, DB.db_version(missing))["state"] == "missing"
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    assert Q.db_status.raw(str(empty), DB.db_version(empty))["state"] == "empty"
    junk = tmp_path / "junk.duckdb"
    junk.write_text("not a database at all\n" * 100)
    st = Q.db_status.raw(str(junk), DB.db_version(junk))
    assert st["state"] == "invalid" and "cannot be read" in st["message"]
    bad = tmp_path / "bad.duckdb"
    con = duckdb.connect(str(bad))
    for t in ("models", "images", "bench_runs"):
        con.execute(f"CREATE TABLE {t} (x INTEGER)")
    con.execute("CREATE TABLE predictions (model_id VARCHAR)")
    con.close()
    st = Q.db_status.raw(str(bad), DB.db_version(bad))
    assert st["state"] == "invalid" and "predictions lacks" in st["message"]
    no_rows = tmp_path / "norows.duckdb"
    demo.write_predictions_db(no_rows, [], demo.make_images(10), perturbations={})
    assert Q.db_status.raw(str(no_rows), DB.db_version(no_rows))["state"] == "empty"


def test_image_paths_stay_inside_the_root(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.jpg").write_bytes(b"x")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    (root / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    assert images.safe_image_path(root, "sub/a.jpg") == (root / "sub" / "a.jpg").resolve()
    for bad in ("../secret.jpg", "sub/../../secret.jpg", str(tmp_path / "secret.jpg"), "link.jpg", "", "sub",
                "missing.jpg", "a\x00b.jpg"):
        assert images.safe_image_path(root, bad) is None, bad
    assert images.safe_image_path(tmp_path / "nope", "a.jpg") is None


def test_generalization_matches_the_metrics_on_a_set_without_ages(tmp_path):
    """A CelebA-HQ-like set (no ages, `Young` in extras, some images without a face): gender accuracy, the AUC of
    predicted age for Young (ties included) and the face-found rate agree with zoo.metrics on the same rows."""
    from bench import store
    from zoo.metrics import gender_metrics, young_auc

    rng = np.random.default_rng(3)
    n = 400
    young = rng.integers(0, 2, n)
    gender = rng.integers(0, 2, n)
    age_pred = np.round(45 - 15 * young + rng.normal(0, 12, n))  # rounded: many ties
    p_female = np.clip(gender * 0.7 + rng.uniform(0, 0.3, n) + rng.normal(0, 0.2, n), 0, 1)
    ids = [f"i{k}" for k in range(n)]
    images = pd.DataFrame({c: None for c, _ in store.TABLES["images"]}, index=range(n))
    images = images.assign(dataset="celebahq", image_id=ids, split="test", gender=gender,
                           extras=[f'{{"Young": {y}, "Male": {1 - g}}}' for y, g in zip(young, gender)],
                           face_found=np.arange(n) % 10 != 0)
    preds = pd.DataFrame({"model_id": "m", "dataset": "celebahq", "image_id": ids, "perturbation": "none",
                          "severity": 0, "age_pred": age_pred, "sigma_aleatoric": np.nan, "sigma_epistemic": np.nan,
                          "sigma_tta": np.nan, "gender_prob": p_female, "latency_ms": 1.0, "bench_run": "r"})
    db = tmp_path / "g.duckdb"
    store.write_part(db, "images", images)
    store.write_part(db, "predictions", preds)
    store.merge(db)
    g = Q.generalization.raw(str(db), DB.db_version(db)).iloc[0]
    assert g["eval_dataset"] == "celebahq" and g["n"] == 0 and np.isnan(g["mae"])
    assert g["gender_acc"] == pytest.approx(gender_metrics(p_female, gender.astype(float))["gender_acc"])
    assert g["young_auc"] == pytest.approx(young_auc(age_pred, young.astype(float)), abs=1e-12)
    assert g["young_auc_lo"] < g["young_auc"] < g["young_auc_hi"]
    assert g["face_found_rate"] == pytest.approx(0.9)


def test_robustness_compares_models_on_the_shared_images(db, tmp_path):
    """Issue 21 (B7): one model perturbed on 10 images and another on 40 were compared as if alike; a model with
    no perturbed rows vanished. Now every model's n is that of the images all of them were perturbed on."""
    import shutil

    path = tmp_path / "b.duckdb"
    shutil.copy(db, path)
    con = duckdb.connect(str(path))
    mids = [r[0] for r in con.execute("SELECT DISTINCT model_id FROM predictions ORDER BY 1").fetchall()][:3]
    con.execute("""DELETE FROM predictions WHERE model_id = ? AND perturbation <> 'none' AND image_id NOT IN (
                   SELECT image_id FROM predictions WHERE model_id = ? AND perturbation = 'blur' AND severity = 1
                   AND dataset = 'utkface' ORDER BY image_id LIMIT 10)""", [mids[0], mids[0]])
    con.execute("DELETE FROM predictions WHERE model_id = ? AND perturbation <> 'none'", [mids[2]])
    con.close()
    df = Q.robustness.raw(str(path), DB.db_version(str(path)), tuple(mids), "utkface", "test")
    assert set(df["model_id"]) == set(mids[:2])
    assert set(df[df["perturbation"] == "blur"]["n"]) == {10}  # both models, every severity, clean included


# ------------------------------------------------------------------------------------------- attributes (issue 20)
@pytest.fixture(scope="module")
def attr_db(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("adb") / "bench.duckdb"
    demo.write_predictions_db(path, demo.demo_models(1) + demo.demo_attribute_models(), demo.make_images(1500, seed=4),
                              seed=4, perturbations={"blur": 1}, pert_images=30)
    return str(path)


def test_attribute_rows_thresholds_and_reports_come_from_zoo(attr_db):
    """Rows carry the labels zoo.attributes gives the images' extras (the composite included); thresholds come from
    the run record (else 0.5); the leaderboard, fairness and trade-off numbers are zoo.fairness's on those rows."""
    from dashboard.data import attributes as A
    from zoo.attributes import attribute_labels
    from zoo.fairness import attribute_report, binary_metrics

    ver = DB.db_version(attr_db)
    con = duckdb.connect(attr_db, read_only=True)
    imgs = con.execute("SELECT * FROM images WHERE dataset = 'utkface' AND split = 'test' ORDER BY image_id").df()
    models = con.execute("SELECT * FROM models").df()
    con.close()
    rows = A.attribute_rows.raw(attr_db, ver, "blond_or_glasses", "utkface", "test", ("cnn-attributes",))
    assert list(rows["image_id"]) == list(imgs["image_id"])
    want = attribute_labels(imgs, "blond_or_glasses", demo.DEMO_TARGETS)
    assert np.array_equal(rows["label"].to_numpy(float), want, equal_nan=True) and not np.isnan(want).all()
    assert A.attribute_rows.raw(attr_db, ver, "Smiling", "appa", "test")["label"].isna().all()  # no labels there

    th = A.model_thresholds(list(models["model_id"]), models, "blond_or_glasses", None)
    assert th["lite0-attributes"] == (0.42, "training") and th["cnn-attributes"] == (0.5, "default")
    assert th["mnv3-dldl-base"] == (0.5, "default")  # no attribute head, no run record: the default
    val = A.attribute_rows.raw(attr_db, ver, "blond_or_glasses", "utkface", "val", ("lite0-attributes",))
    from zoo.fairness import choose_threshold  # with val rows in the mode shown: chosen on them, as in the README

    want = choose_threshold(val["label"].to_numpy(float), val["prob"].to_numpy(float))
    assert len(val) and A.model_thresholds(["lite0-attributes"], models, "blond_or_glasses", val)["lite0-attributes"] \
        == (want, "val")
    assert A.model_thresholds(["peer:x"], models, "blond_or_glasses", val) == {"peer:x": (0.5, "default")}  # no row
    lb = A.leaderboard.raw(attr_db, ver, "blond_or_glasses", "utkface", "test",
                           (("cnn-attributes", 0.5), ("lite0-attributes", 0.42)), n_boot=50)
    cnn = lb.set_index("model_id").loc["cnn-attributes"]
    ref = attribute_report(rows["label"].to_numpy(float), rows["prob"].to_numpy(float), 0.5, None, 50)["overall"]
    for m in A.LEADERBOARD_METRICS:
        assert (cnn[m], cnn[f"{m}_lo"], cnn[f"{m}_hi"]) == pytest.approx(
            (ref[m]["value"], ref[m]["lo"], ref[m]["hi"]))
    assert lb["balanced_accuracy"].is_monotonic_decreasing

    fair = A.fairness.raw(attr_db, ver, "blond_or_glasses", "utkface", "test", "cnn-attributes", 0.5, n_boot=50)
    g = fair["groups"][fair["groups"]["column"] == "gender"].set_index("group")
    assert set(g.index) == {"female", "male"} and g["n"].sum() == rows[["label", "gender"]].notna().all(axis=1).sum()
    gap = fair["gaps"].set_index(["column", "metric"]).loc[("gender", "tpr"), "value"]
    assert gap == pytest.approx(abs(g.loc["female", "tpr"] - g.loc["male", "tpr"]))
    assert g.loc["male", "tpr"] < g.loc["female", "tpr"]  # the demo's planted weakness: hair on men
    sweep = A.tradeoff.raw(attr_db, ver, "blond_or_glasses", "utkface", "test", "cnn-attributes",
                           thresholds=(0.3, 0.5))
    at = sweep.set_index("threshold").loc[0.5]
    assert at["accuracy"] == pytest.approx(binary_metrics(rows["label"], rows["prob"], 0.5)["accuracy"])
    assert at["tpr_gap"] == pytest.approx(gap)


def test_galleries_pick_confident_errors_and_planted_label_noise(attr_db):
    from dashboard.data import attributes as A

    rows = A.attribute_rows.raw(attr_db, DB.db_version(attr_db), "Eyeglasses", "utkface", "test",
                                ("lite0-attributes",))
    wrong = int(((rows["prob"] >= 0.55) != (rows["label"] == 1))[rows["label"].notna()].sum())
    err = A.confident_errors(rows, 0.55, top=5)
    assert wrong > 5 and len(err) == 5 and ((err["prob"] >= 0.55) != (err["label"] == 1)).all()
    assert len(A.confident_errors(rows, 0.55, top=1000)) == wrong
    assert err["margin"].is_monotonic_decreasing
    sus = A.mislabelled(rows, top=15)
    assert len(sus) > 0
    # the demo flips 1 label in ~50: among the flagged images they are several times as common
    assert demo._flipped(sus["image_id"]).mean() > 4 * demo._flipped(rows["image_id"]).mean() > 0


def test_labels_csv_download_format(attr_db):
    """The seed's format: a `filename,label` header and one line per test image, 1 present / -1 absent at the
    threshold; file names (or, when two images share one, their paths inside the dataset)."""
    import csv
    import io

    from dashboard.data import attributes as A

    rows = A.attribute_rows.raw(attr_db, DB.db_version(attr_db), "blond_or_glasses", "utkface", "test",
                                ("cnn-attributes",))
    text = A.labels_csv(rows, 0.6)
    lines = text.splitlines()
    assert lines[0] == "filename,label" and len(lines) == len(rows) + 1 and text.endswith("\n")
    got = dict(csv.reader(io.StringIO(text)))
    got.pop("filename")
    want = {p.rsplit("/", 1)[-1]: ("1" if q >= 0.6 else "-1") for p, q in zip(rows["path"], rows["prob"])}
    assert got == want and set(got.values()) == {"1", "-1"}
    twins = pd.DataFrame({"path": ["a/x.jpg", "b/x.jpg"], "prob": [0.9, 0.1]})
    assert A.labels_csv(twins, 0.5).splitlines()[1:] == ["a/x.jpg,1", "b/x.jpg,-1"]


def test_embedding_map_joins_one_mode_and_expands_extras(db, frame):
    """Q.embedding_map: every point of the model's map once, with the clean prediction of the asked mode (NULL in a
    mode it lacks), errors that are the prediction's, and the images' yes/no extras as columns."""
    ver = DB.db_version(db)
    maps = Q.embedding_maps.raw(db, ver)
    mid = maps["model_id"].iloc[0]
    n_map = int(maps.loc[(maps["model_id"] == mid) & (maps["dataset"] == "utkface"), "n"].iloc[0])
    every = Q.embedding_map.raw(db, ver, mid, "utkface", "*")
    assert len(every) == n_map and every["image_id"].is_unique
    test = Q.embedding_map.raw(db, ver, mid, "utkface", "test", mode=demo.DEMO_MODE)
    assert set(test["split"]) == {"test"} and len(test) < n_map
    ref = frame[frame["model_id"] == mid].set_index("image_id")
    got = test.set_index("image_id")
    np.testing.assert_allclose(got["err"], (ref["age_pred"] - ref["age"]).loc[got.index], atol=1e-9)
    assert (got["abs_err"] == got["err"].abs()).all()
    assert set(got["Smiling"].dropna().unique()) <= {0, 1} and got["Smiling"].notna().mean() > 0.9
    assert Q.embedding_map.raw(db, ver, mid, "utkface", "test", mode="plain")["age_pred"].isna().all()


def test_model_relations_pair_twins_across_cycles_and_adabn_variants():
    """Generalization's side-by-side pairs: a mixed-data run with the run on its primary dataset alone at the same
    recipe (warm-up in epochs, budget and the val score selecting the epoch may differ), a second and third cycle of
    each with the other's (each starts from the previous cycle's twin, not from the same weights), and AdaBN variants with their parents; a run with another
    recipe is no twin."""
    from dashboard.data.registry import model_relations
    from zoo.runs import RunRecord

    def run(rid: str, datasets: list, pretrained: str = "imagenet", **kw) -> RunRecord:
        cfg = {"dataset": "utkface", "datasets": datasets, "backbone": "efficientnet_lite0", "pretrained": pretrained,
               "lr": 3e-4, "warmup_epochs": 0.3, "max_steps": 1000, **kw}
        return RunRecord.from_dict({"id": rid, "kind": "single", "name": rid, "config": cfg})

    utk, mix = [{"name": "utkface"}], [{"name": "utkface"}, {"name": "celebahq", "weight": 1.0}]
    runs = [run("mixed-1", mix, warmup_epochs=0.15), run("alone-1", utk), run("other-lr", utk, lr=1e-3),
            run("mixed-2", mix, "artifacts/runs/mixed-1/best.safetensors"),
            run("alone-2", utk, "artifacts/runs/alone-1/best.safetensors"),
            run("alone-2b", utk, "artifacts/runs/other-lr/best.safetensors"),
            run("mixed-3", mix, "artifacts/runs/mixed-2/best.safetensors", select="gender_acc@celebahq"),
            run("alone-3", utk, "artifacts/runs/alone-2/best.safetensors"),
            RunRecord.from_dict({"id": "alone-1-adabn", "kind": "adapted", "parent": "alone-1"})]
    got = {tuple(r) for r in model_relations(runs)[["model_id", "relation", "related"]].itertuples(index=False)}
    assert got == {("mixed-1", "single-dataset twin", "alone-1"), ("mixed-2", "single-dataset twin", "alone-2"),
                   ("mixed-3", "single-dataset twin", "alone-3"), ("alone-1", "AdaBN", "alone-1-adabn")}
