"""zoo/faces.py: the alignment math on synthetic landmarks with a known transform, and the pipeline on a real face
(scikit-image's bundled astronaut portrait): found, aligned onto the template, invariant to where the face sits."""
from __future__ import annotations

import numpy as np
import pytest

from zoo import faces as F


def similarity(scale: float, angle_deg: float, shift: tuple[float, float]) -> np.ndarray:
    a = np.radians(angle_deg)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([rot, np.array(shift)[:, None]])


@pytest.mark.parametrize("scale,angle,shift", [(1.0, 0.0, (0, 0)), (0.37, 12.0, (40, -7)), (2.5, -80.0, (-3, 150))])
def test_similarity_transform_recovers_a_known_transform(scale, angle, shift):
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    m = similarity(scale, angle, shift)
    dst = F.transform_points(m, src)
    est = F.similarity_transform(src, dst)
    assert np.allclose(est, m, atol=1e-9)
    back = F.similarity_transform(dst, src)  # and the inverse maps back
    assert np.allclose(F.transform_points(back, dst), src, atol=1e-9)


def test_similarity_transform_is_least_squares_and_never_reflects():
    src = F.TEMPLATE.copy()
    mirrored = src * [-1, 1]  # a reflection is not a similarity: the best fit must keep det > 0
    m = F.similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0
    rng = np.random.default_rng(1)
    noisy = F.transform_points(similarity(0.8, 5, (3, 4)), src) + rng.normal(0, 0.5, src.shape)
    m = F.similarity_transform(src, noisy)
    err = np.abs(F.transform_points(m, src) - noisy).mean()
    assert err < 0.6  # residual of the noise, not of a wrong transform
    with pytest.raises(ValueError, match="degenerate"):
        F.similarity_transform(np.ones((5, 2)), src)


def test_warp_puts_landmarks_on_the_template():
    """Draw dots where a known transform sends the template; warping by those points must bring them back."""
    m = similarity(1.7, 20, (90, 40))
    pts = F.transform_points(m, F.TEMPLATE)
    img = np.zeros((600, 600, 3), np.uint8)
    for x, y in pts:
        img[int(round(y)) - 3:int(round(y)) + 4, int(round(x)) - 3:int(round(x)) + 4] = 255
    crop = F.warp_to_template(img, pts)
    assert crop.shape == (F.CROP_SIZE, F.CROP_SIZE, 3)
    for x, y in F.TEMPLATE:
        assert crop[int(round(y)), int(round(x))].mean() > 120, (x, y)
    small = F.warp_to_template(img, pts, size=64)  # the template scales with the crop size
    x, y = F.TEMPLATE[4] * 64 / F.CROP_SIZE
    assert small[int(round(y)), int(round(x))].mean() > 60


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    from skimage.data import astronaut

    return np.ascontiguousarray(astronaut()[20:260, 110:340])


def test_a_real_face_is_found_with_landmarks_on_it(face):
    found = F.FacePipeline().detect(face)
    assert len(found) == 1
    f = found[0]
    x, y, w, h = f.box
    assert 60 <= w <= 160 and f.score > 0
    assert f.landmarks.shape == (5, 2)
    assert ((f.landmarks[:, 0] > x - 5) & (f.landmarks[:, 0] < x + w + 5)).all()
    # eyes above the nose, image-right eye first (dlib's order, as in TEMPLATE)
    assert f.landmarks[:4, 1].max() < f.landmarks[4, 1] and f.landmarks[0, 0] > f.landmarks[2, 0]
    crop, report = F.FacePipeline().primary(face)
    assert report.found and report.n_faces == 1 and crop.shape == (F.CROP_SIZE, F.CROP_SIZE, 3)
    again = F.FacePipeline().detect(crop)  # the aligned crop shows the face where the template says
    assert again and np.abs(again[0].landmarks - F.TEMPLATE).mean() < 6


def test_the_crop_does_not_depend_on_where_the_face_sits(face):
    """Loose framing: the face pasted into a larger background at an offset gives the same aligned crop."""
    pipe = F.FacePipeline()
    canvas = np.full((700, 900, 3), 90, np.uint8)
    canvas[300:300 + face.shape[0], 520:520 + face.shape[1]] = face
    a, rep_a = pipe.primary(face)
    b, rep_b = pipe.primary(canvas)
    assert rep_a.found and rep_b.found
    assert np.allclose(np.array(rep_b.box[:2]) - rep_a.box[:2], (520, 300), atol=10)  # boxes step with scale
    diff = np.abs(a.astype(int) - b.astype(int)).mean()
    assert diff < 6, f"mean abs pixel difference {diff:.1f}"


def test_no_face_takes_the_flagged_fallback_crop():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    crop, report = F.FacePipeline().primary(img)
    assert not report.found and report.n_faces == 0 and np.isnan(report.score)
    from zoo.data.cache import square_resize

    assert np.array_equal(crop, square_resize(img, F.CROP_SIZE))  # the documented fallback: the centre square
    assert report.as_row()["face_found"] is False


def test_given_boxes_skip_detection(face):
    pipe = F.FacePipeline()
    detected = pipe.detect(face)[0]
    given = pipe.detect(face, boxes=[detected.box])
    assert len(given) == 1 and np.isnan(given[0].score)
    assert np.abs(given[0].landmarks - detected.landmarks).max() < 3


def test_several_faces_largest_first(face):
    small = np.ascontiguousarray(face[::2, ::2])
    canvas = np.full((260, 520, 3), 200, np.uint8)
    canvas[10:250, 10:240] = face
    canvas[60:180, 330:445] = small
    crops, found = F.FacePipeline().crops(canvas)
    assert len(found) == 2 and found[0].area > found[1].area and found[0].box[0] < 240 <= found[1].box[0]
    assert not np.array_equal(crops[0], crops[1])


def test_detectors_are_a_registry():
    assert {"dlib_hog", "lbp"} <= set(F.list_detectors())
    with pytest.raises(ValueError, match="unknown face detector 'nosuch'; known: dlib_hog"):
        F.FacePipeline("nosuch")
    with pytest.raises(ValueError, match="already registered"):
        F.register_detector("dlib_hog")(lambda: None)
    assert F.pipeline_version("dlib_hog") != F.pipeline_version("lbp")


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="RGB uint8"):
        F.FacePipeline().detect(np.zeros((10, 10), np.uint8))
