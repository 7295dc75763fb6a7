"""`python -m zoo predict` and `zoo.load(id).predict_photos`: any photos in, one row per face out; photos without a
face are predicted on the flagged fallback crop; unusable files get a reason; the bench reads a loosely framed photo
through the same aligned crop as the photo comparison. Photos are built from scikit-image's astronaut portrait."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from zoo import faces as F


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    from skimage.data import astronaut

    return np.ascontiguousarray(astronaut()[20:260, 110:340])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """One tiny network in a temp registry (trained on generated crops: only the plumbing matters here)."""
    import torch

    base = tmp_path_factory.mktemp("predict")
    root = base / "utk"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        cv2.imwrite(str(root / f"{20 + i}_{i % 2}_0_2017010{i:010d}.jpg.chip.jpg"),
                    rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    env = {"ZOO_ARTIFACTS": str(base / "artifacts"), "ZOO_CACHE": str(base / "cache")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        from zoo.config import TrainConfig
        from zoo.data.manifest import scan
        from zoo.train import train

        scan("utkface", root, progress=False)
        r = train(TrainConfig(name="tiny", backbone="seed_cnn", backbone_kwargs={"width": 8, "hidden": 32},
                              img_size=32, epochs=1, batch_size=8, dropout=0.3), progress=False)
        yield {"id": r["id"], "env": env, "base": base}
    torch.set_num_threads(threads)


def _photos(folder, face) -> dict[str, int]:
    """A folder of mixed photos -> {file name: faces expected}."""
    folder.mkdir()
    canvas = np.full((500, 700, 3), 60, np.uint8)
    canvas[200:200 + face.shape[0], 400:400 + face.shape[1]] = face  # loose framing, off centre
    cv2.imwrite(str(folder / "loose.png"), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    two = np.full((260, 520, 3), 200, np.uint8)
    two[10:250, 10:240] = face
    two[60:180, 330:445] = face[::2, ::2]
    cv2.imwrite(str(folder / "two.jpg"), cv2.cvtColor(two, cv2.COLOR_RGB2BGR))
    noise = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "noface.png"), noise)
    ok, buf = cv2.imencode(".jpg", face)
    (folder / "truncated.jpg").write_bytes(buf.tobytes()[: len(buf) // 3])
    (folder / "notes.txt").write_text("not a photo")
    (folder / "sub").mkdir()
    cv2.imwrite(str(folder / "sub" / "face.jpg"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    return {"loose.png": 1, "two.jpg": 2, "noface.png": 0, "truncated.jpg": 0, "notes.txt": 0, "face.jpg": 1}


def test_predict_cli_writes_one_row_per_face_with_reasons(model, face, tmp_path, monkeypatch, capsys):
    from zoo.cli import main

    for k, v in model["env"].items():
        monkeypatch.setenv(k, v)
    expected = _photos(tmp_path / "in", face)
    out = tmp_path / "out.csv"
    assert main(["predict", str(tmp_path / "in"), "--models", model["id"], "-o", str(out), "--annotate",
                 str(tmp_path / "annotated"), "--mc-dropout", "3", "-q"]) == 0
    rows = pd.read_csv(out)
    rows["name"] = rows["file"].map(lambda p: p.split("/")[-1])
    assert sorted(rows.groupby("name").size().to_dict().items()) == sorted(
        {n: max(1, k) for n, k in expected.items()}.items())  # one row per face; one for a file without any
    found = rows[rows["face_found"]]
    assert found.groupby("name").size().to_dict() == {n: k for n, k in expected.items() if k}
    assert (found["score"] > 0).all() and found[["box_w", "box_h"]].gt(20).all().all()
    two = rows[rows["name"] == "two.jpg"].sort_values("face")
    assert list(two["face"]) == [0, 1] and two["box_w"].iloc[0] > two["box_w"].iloc[1]  # largest first
    col = f"{model['id']}:age"
    nof = rows[rows["name"] == "noface.png"].iloc[0]
    assert not nof["face_found"] and "fallback" in nof["reason"] and np.isfinite(nof[col])  # predicted, flagged
    assert "damaged or truncated" in rows[rows["name"] == "truncated.jpg"].iloc[0]["reason"]
    assert "not an image" in rows[rows["name"] == "notes.txt"].iloc[0]["reason"]
    assert rows.loc[rows["name"].isin(["truncated.jpg", "notes.txt"]), col].isna().all()
    assert rows.loc[rows["face_found"], [col, f"{model['id']}:p_female", f"{model['id']}:sigma"]].notna().all().all()
    assert (rows.loc[rows["face"] == 0, "seconds"] >= 0).all()
    printed = capsys.readouterr().out
    assert "time per photo: median" in printed and "2 unusable files" in printed
    assert len(list((tmp_path / "annotated").glob("*.jpg"))) == 3  # the photos with a face
    # JSON: the same rows, predictions nested per model
    js = tmp_path / "out.json"
    assert main(["predict", str(tmp_path / "in" / "two.jpg"), "--models", model["id"], "-o", str(js), "-q"]) == 0
    data = json.loads(js.read_text())
    assert len(data) == 2 and set(data[0]["predictions"][model["id"]]) == {"age", "sigma", "p_female"}


def test_predict_cli_bad_arguments_are_one_line_errors(model, tmp_path, monkeypatch, capsys):
    from zoo.cli import main

    for k, v in model["env"].items():
        monkeypatch.setenv(k, v)
    assert main(["predict", str(tmp_path / "nope.jpg"), "--models", model["id"]]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "x.png").write_bytes(b"")
    assert main(["predict", str(tmp_path / "x.png"), "--models", "nosuchmodel"]) == 2
    assert "no model 'nosuchmodel'" in capsys.readouterr().err


def test_load_predict_photos_api(model, face, monkeypatch):
    import zoo

    for k, v in model["env"].items():
        monkeypatch.setenv(k, v)
    rows = zoo.load(model["id"]).predict_photos([face, np.zeros((50, 60, 3), np.uint8)])
    assert [r.face_found for r in rows] == [True, False]
    assert rows[0].crop.shape == (F.CROP_SIZE, F.CROP_SIZE, 3)
    assert 0 <= rows[0].predictions[model["id"]]["p_female"] <= 1
    both = zoo.Pipeline.from_ids([model["id"]], mc_dropout=2).predict_photos([face])
    assert both[0].predictions[model["id"]]["sigma"] > 0


def test_bench_and_photo_comparison_see_the_same_aligned_crop(face, tmp_path, monkeypatch):
    """A loosely framed photo in a `detect` dataset: the bench's input equals what the photo page computes."""
    from zoo.data.cache import image_loader
    from zoo.data.manifest import scan
    from zoo.photos import decode_photo

    monkeypatch.setenv("ZOO_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "photos"
    _photos(root, face)
    pd.DataFrame({"path": ["loose.png", "noface.png"], "age": [42, 30]}).to_csv(root / "labels.csv", index=False)
    m = scan("csv", root, progress=False)
    assert m.framing == "detect"
    load = image_loader(m, progress=False)
    for name in ("loose.png", "noface.png"):
        i = int(np.flatnonzero(m.frame["path"] == name)[0])
        bench = load(i, 64)
        # the Compare page: decode the upload, detect, align (or the fallback), then predict_crops' resize
        rgb = decode_photo((root / name).read_bytes()).rgb
        found = F.FacePipeline().detect(rgb)  # photo settings: also looks for small faces
        crop = F.warp_to_template(rgb, found[0].landmarks) if found else F.fallback_crop(rgb)
        from zoo.data.cache import square_resize

        assert np.array_equal(bench, square_resize(crop, 64)), name
        assert bool(found) == (name == "loose.png")
