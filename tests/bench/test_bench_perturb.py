"""Perturbations: shape/dtype kept, deterministic, stronger with severity; and the measured image attributes."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from bench import perturb as P
from bench.attributes import image_attributes, jpeg_quality_from_table, pixel_stats
from zoo.plugins import UnknownName


def _image(size: int = 96) -> np.ndarray:
    """A face-like test image: textured background, a bright disc with edges, fine detail everywhere."""
    rng = np.random.default_rng(0)
    img = rng.integers(40, 200, (size, size, 3)).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    cv2.ellipse(img, (size // 2, size // 2), (size // 4, size // 3), 0, 0, 360, (210, 170, 150), -1)
    cv2.circle(img, (size // 2 - 10, size // 2 - 8), 4, (30, 30, 30), -1)
    cv2.circle(img, (size // 2 + 10, size // 2 - 8), 4, (30, 30, 30), -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _lapvar(img: np.ndarray) -> float:
    return float(cv2.Laplacian(P.luma(img), cv2.CV_32F, ksize=1).var())


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a.astype(float) - b.astype(float)) ** 2).mean())


@pytest.mark.parametrize("name", P.list_perturbations())
def test_every_perturbation_keeps_shape_dtype_and_is_deterministic(name):
    img = _image()
    p = P.get_perturbation(name)
    assert len(p.severities) >= 3
    for s in range(1, len(p.severities) + 1):
        a, b = P.apply(name, img, s), P.apply(name, img.copy(), s)
        assert a.shape == img.shape and a.dtype == np.uint8
        assert np.array_equal(a, b)
        assert not np.array_equal(a, img)
    assert np.array_equal(P.apply(name, img, 0), img)
    batch = P.apply(name, np.stack([img, img[::-1]]), 2)
    assert batch.shape == (2, *img.shape) and np.array_equal(batch[0], P.apply(name, img, 2))
    with pytest.raises(ValueError):
        P.apply(name, img, len(p.severities) + 1)


def _effects(name: str, measure) -> list[float]:
    img = _image()
    return [measure(img, P.apply(name, img, s)) for s in (1, 2, 3)]


def _strictly_increasing(v: list[float]) -> bool:
    return all(a < b for a, b in zip(v, v[1:]))


def test_severity_is_monotone_in_effect():
    lap0 = _lapvar(_image())
    blur = _effects("blur", lambda o, x: _lapvar(x))
    assert lap0 > blur[0] > blur[1] > blur[2]
    down = _effects("downscale", lambda o, x: _lapvar(x))
    assert lap0 > down[0] > down[1] > down[2]
    mean0 = P.luma(_image()).mean()
    dark = _effects("brightness", lambda o, x: P.luma(x).mean())
    assert mean0 > dark[0] > dark[1] > dark[2]
    bright = _effects("gamma", lambda o, x: P.luma(x).mean())
    assert mean0 < bright[0] < bright[1] < bright[2]
    assert _strictly_increasing(_effects("jpeg", _mse))
    outside = P.face_ellipse_mask(96, 96, soft=0.04) == 0
    inside = P.face_ellipse_mask(96, 96, soft=0.04) == 1
    bg = _effects("background", lambda o, x: np.abs(o.astype(float) - x)[outside].mean())
    assert _strictly_increasing(bg)
    for s in (1, 2, 3):  # the face itself is untouched
        assert np.array_equal(P.apply("background", _image(), s)[inside], _image()[inside])


def test_suites_and_registry():
    assert P.resolve_suite("none") == [("none", 0)]
    default = P.resolve_suite("default")
    assert default[0] == ("none", 0) and len(default) == 1 + 3 * len(P.list_perturbations())
    assert {"brightness", "gamma", "blur", "jpeg", "downscale", "background"} <= set(P.list_perturbations())
    assert P.resolve_suite("blur,jpeg") == [("none", 0)] + [("blur", s) for s in (1, 2, 3)] + \
        [("jpeg", s) for s in (1, 2, 3)]
    with pytest.raises(UnknownName, match="unknown perturbation 'sepia'; known: .*blur"):
        P.resolve_suite("sepia")
    with pytest.raises(ValueError):
        P.register_perturbation("tiny", severities=(1, 2))
    with pytest.raises(ValueError):
        P.register_perturbation("blur", severities=(1, 2, 3))(lambda img, v: img)


def test_jpeg_quality_is_estimated_from_the_quantisation_tables(tmp_path):
    img = _image(64)
    for q in (20, 37, 75, 95):
        path = tmp_path / f"q{q}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, q])
        assert image_attributes(path)["jpeg_quality"] == q
    png = tmp_path / "x.png"
    cv2.imwrite(str(png), img)
    a = image_attributes(png)
    assert np.isnan(a["jpeg_quality"]) and a["resolution"] == 64
    assert np.isnan(jpeg_quality_from_table([1, 2, 3]))


def test_pixel_attributes_follow_the_image():
    img = _image(128)
    base = pixel_stats(img)
    assert pixel_stats(P.apply("blur", img, 3))["blur"] < base["blur"] / 3
    assert pixel_stats(P.apply("brightness", img, 3))["brightness"] < base["brightness"] - 30
    assert pixel_stats(np.full_like(img, 100))["contrast"] == pytest.approx(0, abs=1e-3)
    assert pixel_stats(P.apply("background", img, 2))["background"] < base["background"] / 2  # flat grey


def test_image_rows_carry_the_face_pipeline_columns(tmp_path, monkeypatch):
    """A real face and a blank image in a `detect` dataset: found / not found, box, count, face_size (NULL without)."""
    import pandas as pd
    from skimage.data import astronaut

    from bench.attributes import images_rows
    from zoo.data.manifest import scan

    monkeypatch.setenv("ZOO_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "photos"
    root.mkdir()
    cv2.imwrite(str(root / "face.png"), cv2.cvtColor(astronaut()[20:260, 110:340], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(root / "blank.png"), np.full((120, 160, 3), 128, np.uint8))
    pd.DataFrame({"path": ["face.png", "blank.png"], "age": [42, 30]}).to_csv(root / "labels.csv", index=False)
    m = scan("csv", root, progress=False)
    rows = images_rows(m, np.arange(2)).set_index("path")
    face, blank = rows.loc["face.png"], rows.loc["blank.png"]
    assert face["face_found"] and face["n_faces"] == 1 and face["face_score"] > 0 and face["framing"] == "detect"
    assert 0.2 < face["face_size"] < 0.8 and 50 < face["face_w"] < 160
    assert not blank["face_found"] and blank["n_faces"] == 0 and np.isnan(blank["face_size"])
