"""The Browser's full-image view (issue 21, build point 4) under AppTest: "Details" under a thumbnail opens the
original file with every compared model's prediction and the image's attributes; "Flag label" writes one row to
the user's own flags file (upsert, unflag), never to the predictions DB; an unwritable flags location is a friendly
error and the flag stays on the page, in its CSV."""
from __future__ import annotations

import hashlib
import io
import re

import duckdb
import pandas as pd
import pytest

pytest.importorskip("streamlit.testing.v1")
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from conftest import REPO  # noqa: E402
from dashboard import demo  # noqa: E402
from dashboard.data import flags  # noqa: E402

APP = REPO / "dashboard" / "app.py"
TIMEOUT = 90


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    out = tmp_path_factory.mktemp("browser") / "artifacts"
    demo.write_demo_artifacts(out, n_images=120, n_models=4, perturbations={"blur": 2}, pert_images=15)
    return out


@pytest.fixture
def sent(monkeypatch) -> list[tuple[str, bytes]]:
    """(mimetype, bytes) of every media file the app hands to the browser."""
    got = []
    real = MemoryMediaFileStorage.load_and_get_id

    def record(self, path_or_data, mimetype, kind, filename=None):
        if isinstance(path_or_data, bytes):
            got.append((mimetype, path_or_data))
        return real(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    return got


def digest(path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def run(x) -> AppTest:
    """Run the app (an AppTest, or a widget just clicked or set) and check it raised nothing."""
    at = x.run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_browser(artifacts, dashboard_env) -> AppTest:
    dashboard_env(artifacts)
    at = run(AppTest.from_file(str(APP), default_timeout=TIMEOUT))
    return run(at.switch_page("views/browser.py"))


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if column in d.value.columns)


def by_prefix(widgets, prefix: str):
    return next(w for w in widgets if str(w.key).startswith(prefix))


def test_details_open_the_original_image_with_every_compared_model_and_flags_write_rows(
        artifacts, dashboard_env, sent, monkeypatch):
    monkeypatch.delenv(flags.ENV, raising=False)
    db = artifacts / "bench.duckdb"
    fpath = artifacts / "bench.flags.duckdb"
    fpath.unlink(missing_ok=True)
    before = digest(db)
    at = open_browser(artifacts, dashboard_env)
    details = [b for b in at.button if str(b.key).startswith("br_open_")]
    assert len(details) == len(at.get("image")) > 0, "one Details button under every thumbnail"
    assert not any("attribute" in d.value.columns for d in at.dataframe), "no image open yet"

    dataset, image_id = details[0].key.removeprefix("br_open_").split("/", 1)
    sent.clear()
    run(details[0].click())
    mode = next(re.search(r"inference mode \*\*(.+?)\*\*", str(c.value)).group(1) for c in at.caption
                if "Predictions of the browsed model" in str(c.value))
    with duckdb.connect(str(db), read_only=True) as con:
        img = con.execute("SELECT * FROM images WHERE dataset = ? AND image_id = ?", [dataset, image_id]).df()
        preds = con.execute("SELECT model_id, age_pred FROM predictions WHERE dataset = ? AND image_id = ? AND "
                            "perturbation = 'none' AND mode = ?", [dataset, image_id, mode]).df()

    # the original file, byte for byte: never a thumbnail blown up (issue 21 B12)
    original = (artifacts / "data" / dataset / img["path"].iloc[0]).read_bytes()
    assert any(data == original for _, data in sent), "the view shows the original file"
    assert any("original file" in im.caption for e in at.get("image") for im in e.proto.imgs)

    attrs = dict(frame_with(at, "attribute").itertuples(index=False))
    assert attrs["dataset"] == dataset and attrs["image id"] == image_id
    assert attrs["true age (label)"] == f"{img['age'].iloc[0]:.0f}"
    assert attrs["brightness (mean luma 0–255)"] == f"{img['brightness'].iloc[0]:.0f}"
    assert attrs["face found by the detector"] in ("yes", "no") and "face detector score" in attrs
    assert attrs["blur: Laplacian variance (low = blurry)"] == f"{img['blur'].iloc[0]:.0f}"

    table = frame_with(at, "σ aleatoric")
    compared = [m for m in at.session_state["models"] if m in set(preds["model_id"])]
    assert len(compared) >= 2
    assert len(table) >= len(compared), "one row per compared model (plus the browsed one)"
    expect = sorted(preds.loc[preds["model_id"].isin(compared), "age_pred"].round(6))
    assert set(expect) <= set(table["age"].round(6)), "every compared model's prediction, as stored"
    assert (table["error"].round(6) == (table["age"] - img["age"].iloc[0]).round(6)).all()

    # Flag label: one row in the user's own file; again: still one row (upsert); Unflag: none
    by_prefix(at.selectbox, "br_reason/").set_value("not a face / close-up")
    by_prefix(at.text_input, "br_note/").set_value("an eye close-up")
    run(at.button(key="br_flag").click())
    got = flags.read_flags(fpath)
    assert got[["dataset", "image_id", "reason", "note"]].values.tolist() == [
        [dataset, image_id, "not a face / close-up", "an eye close-up"]]
    assert "Flagged" in " ".join(s.value for s in at.success)
    listed = frame_with(at, "reason")
    assert listed[["image_id", "age"]].values.tolist() == [[image_id, img["age"].iloc[0]]], "the list, with labels"
    csv = [data for mime, data in sent if mime.startswith("text/csv")]
    assert csv and pd.read_csv(io.BytesIO(csv[-1]))["image_id"].tolist() == [image_id]

    by_prefix(at.selectbox, "br_reason/").set_value("wrong age")
    run(at.button(key="br_flag").click())
    assert flags.read_flags(fpath)[["image_id", "reason"]].values.tolist() == [[image_id, "wrong age"]]
    run(at.button(key="br_unflag").click())
    assert flags.read_flags(fpath).empty
    assert not any("reason" in d.value.columns and len(d.value) for d in at.dataframe)
    assert digest(db) == before, "the predictions DB is never written"


def test_an_unwritable_flags_location_is_a_friendly_error_and_the_flag_stays_on_the_page(
        artifacts, dashboard_env, sent, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv(flags.ENV, str(blocker / "flags.duckdb"))  # its folder is a file: nothing can be written
    db = artifacts / "bench.duckdb"
    before = digest(db)
    at = open_browser(artifacts, dashboard_env)
    first = next(b for b in at.button if str(b.key).startswith("br_open_"))
    dataset, image_id = first.key.removeprefix("br_open_").split("/", 1)
    run(first.click())
    by_prefix(at.text_input, "br_note/").set_value("toddler labelled 60")
    run(at.button(key="br_flag").click())
    errors = " ".join(e.value for e in at.error)
    assert "not writable" in errors and flags.ENV in errors and "CSV" in errors
    listed = frame_with(at, "reason")
    assert listed[["image_id", "note", "saved"]].values.tolist() == [[image_id, "toddler labelled 60", False]]
    csv = [data for mime, data in sent if mime.startswith("text/csv")]
    assert pd.read_csv(io.BytesIO(csv[-1]))["note"].tolist() == ["toddler labelled 60"], "nothing lost"
    assert not (blocker / "flags.duckdb").exists() and digest(db) == before
