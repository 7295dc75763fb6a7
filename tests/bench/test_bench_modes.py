"""The inference mode is part of a prediction's identity (issue 19): one vocabulary (`zoo.modes`), a `mode` key
column that merges keep apart, the migration of DBs written before it, a dashboard that reads one mode at a time
and says which, and a README table that agrees with the dashboard's leaderboard mode by mode."""
from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from bench import store
from zoo.modes import UNKNOWN, describe, inference_mode, metrics_key, mode_of_options, parse_mode

from conftest import REPO  # noqa: E402


def test_one_vocabulary_of_modes():
    cases = {(None, 0): "plain", ("flip", 0): "flip", ("flip+crop", None): "flip+crop", (None, 5): "mc5",
             ("flip", 10): "flip+mc10", ("flip+crop", 3): "flip+crop+mc3", ("off", 0): "plain"}
    for (tta, n), mode in cases.items():
        assert inference_mode(tta, n) == mode
        assert inference_mode(*parse_mode(mode)) == mode  # round trip
    for bad in ("", "mc0", "crop", "flip+mc", "unknown", "flip+mc-1"):
        with pytest.raises(ValueError):
            parse_mode(bad)
    with pytest.raises(ValueError):
        inference_mode("rotate", 0)
    assert mode_of_options({"tta": "flip", "mc_dropout": 10}) == "flip+mc10"
    assert mode_of_options({"models": "all"}) == "plain"  # keys missing: the bench's defaults
    assert mode_of_options(None) == mode_of_options({"tta": "spin"}) == UNKNOWN
    assert [metrics_key(m) for m in ("plain", "flip", "flip+crop", "flip+mc10")] == \
        ["test", "test_tta", "test_tta_crop", None]
    assert describe("flip+mc10") == "flip TTA + 10 MC-Dropout passes"


def _preds(keys, model="m1", run="r1", age=30.0, mode: str | None = "plain") -> pd.DataFrame:
    df = pd.DataFrame({"model_id": model, "dataset": "d", "image_id": [f"img{k:04d}" for k in keys],
                       "perturbation": "none", "severity": 0, "age_pred": age, "sigma_aleatoric": np.nan,
                       "sigma_epistemic": np.nan, "sigma_tta": np.nan, "gender_prob": 0.5, "latency_ms": 1.0,
                       "bench_run": run})
    if mode is not None:
        df["mode"] = mode
    return df


def _rows(db, sql):
    con = store.connect_read(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_merges_keep_each_mode_apart_and_each_key_once(tmp_path):
    db = tmp_path / "b.duckdb"
    for mode, age in (("flip", 31.0), ("plain", 30.0), ("mc5", 32.0)):
        store.write_part(db, "predictions", _preds(range(10), age=age, mode=mode))
    store.write_part(db, "predictions", _preds(range(5), run="r2", age=99.0, mode="plain"))  # a racing run
    assert store.merge(db)["predictions"] == 30
    assert _rows(db, "SELECT mode, count(*), min(age_pred), max(age_pred) FROM predictions GROUP BY ALL ORDER BY 1") \
        == [("flip", 10, 31.0, 31.0), ("mc5", 10, 32.0, 32.0), ("plain", 10, 30.0, 30.0)]
    store.write_part(db, "predictions", _preds(range(10), age=33.0, mode="flip"))  # replayed: nothing new
    assert store.merge(db)["predictions"] == 0
    known = store.query_known(db, "predictions", ["image_id", "mode"], "SELECT count(*) AS n FROM known "
                                                                       "WHERE mode = 'mc5'")
    assert known["n"].iloc[0] == 10


# The schema before issue 19: predictions without `mode`.
OLD_PREDICTIONS = ", ".join(f'"{c}" {t}' for c, t in store.TABLES["predictions"] if c != "mode")


def _old_db(path: Path) -> Path:
    """A DB in the old schema: rows of runs with TTA + MC options, plain options, options without those keys, NULL
    options, and rows whose run has no bench_runs row at all."""
    con = duckdb.connect(str(path))
    con.execute(f"CREATE TABLE predictions ({OLD_PREDICTIONS})")
    con.execute('CREATE TABLE bench_runs (run_id VARCHAR PRIMARY KEY, started TIMESTAMP, finished TIMESTAMP, '
                '"commit" VARCHAR, device VARCHAR, options JSON, n_rows BIGINT)')
    runs = {"r_flip_mc": {"tta": "flip", "mc_dropout": 10}, "r_plain": {"tta": None, "mc_dropout": 0},
            "r_crop": {"tta": "flip+crop", "mc_dropout": 0}, "r_mc": {"mc_dropout": 5},
            "r_old": {"models": "all"}, "r_null": None}
    for run, opts in runs.items():
        con.execute("INSERT INTO bench_runs VALUES (?, NULL, NULL, 'c', 'cpu', ?, 0)",
                    [run, None if opts is None else json.dumps(opts)])
    for k, run in enumerate([*runs, "r_missing"]):
        con.register("p", _preds(range(k * 10, k * 10 + 3 + k), run=run, mode=None))
        con.execute("INSERT INTO predictions SELECT * FROM p")
        con.unregister("p")
    con.close()
    return path


EXPECTED = {"r_flip_mc": "flip+mc10", "r_plain": "plain", "r_crop": "flip+crop", "r_mc": "mc5", "r_old": "plain",
            "r_null": UNKNOWN, "r_missing": UNKNOWN}


def test_an_old_db_is_migrated_with_each_rows_mode_from_its_runs_options(tmp_path):
    db = _old_db(tmp_path / "old.duckdb")
    got = store.query_known(db, "predictions", ["bench_run", "mode"], "SELECT count(*) AS n FROM known "
                                                                      "WHERE mode IS NULL")
    assert got["n"].iloc[0] == sum(3 + k for k in range(7))  # readable before any migration (mode NULL)
    counts = store.migrate(db)
    assert counts == {"flip+mc10": 3, "plain": 4 + 7, "flip+crop": 5, "mc5": 6, UNKNOWN: 8 + 9}
    assert dict(_rows(db, "SELECT DISTINCT bench_run, mode FROM predictions")) == EXPECTED
    cols = [r[0] for r in _rows(db, "DESCRIBE predictions")]
    assert cols == [c for c, _ in store.TABLES["predictions"]]
    assert store.migrate(db) == counts  # idempotent
    # After the migration the key includes the mode: a plain run over the flip+mc10 run's images adds its own rows.
    store.write_part(db, "predictions", _preds(range(0, 3), run="r_plain", mode="plain"))
    assert store.merge(db)["predictions"] == 3
    assert _rows(db, "SELECT count(*) FROM predictions WHERE image_id = 'img0000'") == [(2,)]


def test_the_first_write_migrates_and_old_parts_get_their_runs_mode(tmp_path):
    """No explicit step needed: any write connection (a merge) migrates in one transaction; a part written by an
    older bench (no `mode` column) merges with its run's mode."""
    import pyarrow.parquet as pq

    db = _old_db(tmp_path / "old.duckdb")
    old = store.to_arrow("predictions", _preds(range(100, 104), run="r_crop", mode="plain")).drop_columns(["mode"])
    folder = store.parts_dir(db) / "predictions"
    folder.mkdir(parents=True)
    pq.write_table(old, folder / "00000000000000000001-old.parquet")
    store.write_part(db, "predictions", _preds(range(200, 202), run="r_flip_mc", mode=None))  # mode left out
    assert store.merge(db)["predictions"] == 6
    assert dict(_rows(db, "SELECT image_id, mode FROM predictions WHERE image_id >= 'img0100'")) == {
        **{f"img{k:04d}": "flip+crop" for k in range(100, 104)}, "img0200": "flip+mc10", "img0201": "flip+mc10"}
    assert _rows(db, "SELECT count(*) FROM predictions WHERE mode IS NULL") == [(0,)]
    assert dict(_rows(db, "SELECT DISTINCT bench_run, mode FROM predictions")) == EXPECTED


def test_report_and_peer_records_never_pool_modes(tmp_path):
    from bench.report import peer_records, report

    db = tmp_path / "b.duckdb"
    images = pd.DataFrame({c: None for c, _ in store.TABLES["images"]}, index=range(20))
    images["dataset"], images["image_id"], images["split"] = "utkface", [f"img{k:04d}" for k in range(20)], "test"
    images["age"], images["gender"] = 30.0, 1
    store.write_part(db, "images", images)
    row = {c: None for c, _ in store.TABLES["models"]}
    store.write_part(db, "models", pd.DataFrame([{**row, "model_id": "peer:x", "name": "peer x", "kind": "peer",
                                                  "source": "peer"}]))
    for mode, age in (("plain", 32.0), ("flip", 34.0), ("flip+mc10", 35.0)):
        p = _preds(range(20), model="peer:x", age=age, mode=mode)
        p["dataset"] = "utkface"
        store.write_part(db, "predictions", p)
    store.merge(db)
    rec = peer_records(db)
    assert [r["id"] for r in rec] == ["peer:x"]
    assert {k: round(v["mae"], 6) for k, v in rec[0]["metrics"].items()} == {"test": 2.0, "test_tta": 4.0}
    text = report(db, n_boot=20)
    assert [m for m in re.findall(r"mode (\S+);", text)] == ["flip", "flip+mc10", "plain"]
    assert "mode plain" in report(db, n_boot=20, mode="plain") and "flip" not in report(db, n_boot=20, mode="plain")


# ------------------------------------------------------------------------------------------------- dashboard
def _two_mode_db(path: Path) -> tuple[list[str], float]:
    """The demo DB (every row flip+mc10) plus every row of two models again in mode `plain`, 3 years older."""
    from dashboard import demo

    models = demo.demo_models(5)
    demo.write_predictions_db(path, models, demo.make_images(300, seed=2), seed=2, pert_images=20,
                              perturbations={"blur": 1})
    picked = [models[0]["model_id"], models[1]["model_id"]]
    with store.connect_write(path) as con:
        con.execute(f"""INSERT INTO predictions BY NAME SELECT * REPLACE (age_pred + 3 AS age_pred, 'plain' AS mode)
                        FROM predictions WHERE model_id IN ('{picked[0]}', '{picked[1]}')""")
        con.execute("CHECKPOINT")
    return picked, 3.0


def test_dashboard_queries_read_one_mode(tmp_path):
    from dashboard.data import db as DB, queries as Q

    db = str(tmp_path / "bench.duckdb")
    picked, _ = _two_mode_db(Path(db))
    ver = DB.db_version(db)
    modes = Q.modes.raw(db, ver)
    assert list(modes["mode"]) == ["flip+mc10", "plain"] and list(modes["models"]) == [5, 2]
    default = Q.model_scores.raw(db, ver, "utkface", "test")
    flip = Q.model_scores.raw(db, ver, "utkface", "test", mode="flip+mc10")
    plain = Q.model_scores.raw(db, ver, "utkface", "test", mode="plain")
    assert default.equals(flip) and len(flip) == 5 and sorted(plain["model_id"]) == sorted(picked)
    f, p = flip.set_index("model_id").loc[picked], plain.set_index("model_id").loc[picked]
    assert (p["n"] == f["n"]).all()  # not twice the rows: never pooled
    assert np.allclose(p["bias"] - f["bias"], 3)  # each mode's own predictions
    for fn, args in ((Q.robustness, (tuple(picked), "utkface", "test")), (Q.clean_scores, ("test",)),
                     (Q.generalization, ("test",)), (Q.group_scores, (tuple(picked), "utkface", "test", "gender")),
                     (Q.mae_by_age, (tuple(picked), "utkface", "test", 10))):
        a, b = fn.raw(db, ver, *args, mode="flip+mc10"), fn.raw(db, ver, *args, mode="plain")
        a = a[a["model_id"].isin(picked)]
        assert len(a) == len(b) > 0 and set(b["model_id"]) == set(picked), fn.__name__
        assert abs(a["mae"].mean() - b["mae"].mean()) > 0.1, fn.__name__
    rows = Q.browser_rows.raw(db, ver, picked[0], "utkface", "test", mode="plain", limit=500)
    assert rows["image_id"].is_unique  # one row per image: one mode


def test_dashboard_shows_the_mode_in_use_and_switches_it(tmp_path, dashboard_env):
    pytest.importorskip("streamlit.testing.v1")
    from streamlit.testing.v1 import AppTest

    from dashboard.data import db as DB, queries as Q

    art = tmp_path / "artifacts"
    picked, _ = _two_mode_db(art / "bench.duckdb")
    dashboard_env(art)
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]

    def captions() -> str:
        return "\n".join(str(x.value) for x in at.caption)

    assert at.sidebar.selectbox(key="inference_mode").value == "flip+mc10"  # the mode most rows have
    assert "Inference mode **flip+mc10** (flip TTA + 10 MC-Dropout passes)" in captions()
    at.sidebar.selectbox(key="eval_dataset").set_value("utkface").run()
    at.sidebar.selectbox(key="inference_mode").set_value("plain").run()
    assert not at.exception
    assert "Inference mode **plain** (no TTA, deterministic)" in captions()
    board = next(d.value for d in at.dataframe if "id" in d.value.columns)
    db = str(art / "bench.duckdb")
    want = Q.model_scores.raw(db, DB.db_version(db), "utkface", "test", mode="plain").set_index("model_id")["mae"]
    assert sorted(board["id"]) == sorted(picked)
    assert np.allclose(board.set_index("id").loc[want.index, "MAE"], want)
    for page in ("views/errors.py", "views/fairness.py", "views/uncertainty.py", "views/robustness.py",
                 "views/generalization.py", "views/browser.py", "views/data_studies.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert "Inference mode **plain**" in captions(), page


# ------------------------------------------------------------------------------------ README vs leaderboard
MAE_COLUMNS = {"MAE": "plain", "MAE (flip TTA)": "flip", "MAE (flip+crop TTA)": "flip+crop"}


def _readme_rows(readme: str) -> list[dict]:
    from bench.readme import END, START

    block = readme.split(START)[1].split(END)[0].strip().splitlines()
    head = [c.strip() for c in block[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in line.strip("|").split("|")))) for line in block[2:]]


def test_readme_table_and_dashboard_leaderboard_agree_for_every_model(monkeypatch):
    """The README's results table (regenerated from the shipped registry and bench DB) is the committed one, and for
    every model in it and every inference mode it has a column for, the dashboard's leaderboard in that mode
    (UTKFace test split) shows the same MAE: bench rows of that mode where the DB has them, else run.json's metrics
    of that mode; never another mode's."""
    from bench.report import peer_records
    from dashboard.data import db as DB, queries as Q, registry
    from bench.readme import MODE_COLUMNS, markdown_table, results_frame

    assert MODE_COLUMNS == MAE_COLUMNS
    artifacts = REPO / "artifacts"
    db = artifacts / "bench.duckdb"
    if not (artifacts / "runs").is_dir() or not db.is_file():
        pytest.skip("no shipped registry / bench DB in this checkout")
    monkeypatch.setenv("ZOO_ARTIFACTS", str(artifacts))
    monkeypatch.delenv("ZOO_BENCH_DB", raising=False)
    frame = results_frame("test", peer_records(db))
    committed = _readme_rows((REPO / "README.md").read_text())
    assert markdown_table(frame).splitlines()[2:] == [
        "| " + " | ".join(r.values()) + " |" for r in committed], "README table is stale: python -m bench readme " \
                                                                  "--update"
    ver, reg_ver = DB.db_version(str(db)), registry.registry_version()
    checked = 0
    for col, mode in MAE_COLUMNS.items():
        lb = Q.model_scores.raw(str(db), ver, "utkface", "test", mode=mode)
        board = registry.leaderboard_board(lb, registry.registry_table(reg_ver, mode)).set_index("model_id")
        for readme_row, (_, r) in zip(committed, frame.iterrows()):
            assert readme_row["model"] == r["model"]
            shown = readme_row[col]
            if r["id"] not in board.index or pd.isna(board.loc[r["id"], "mae"]):
                assert shown == "–", (r["id"], col)
            else:
                assert shown == f"{board.loc[r['id'], 'mae']:.2f}", (r["id"], col, board.loc[r["id"], "origin"])
                checked += 1
    assert checked >= len(committed)
