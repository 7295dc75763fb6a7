"""Measured per-image attributes for the `images` table: what an image *is like*, independent of any model, so the
dashboard can slice errors by lighting, sharpness, compression, resolution, face size and background.

Pixel statistics (brightness, contrast, blur, background) are measured on the image centre-cropped and resized to
ATTR_SIZE px (`zoo.data.cache.square_resize`, the geometry models see), so they compare across datasets whose files
have different resolutions. File properties (resolution, JPEG quality) use the original file. The face columns
(found, count, score, box, and `face_size` = the largest face's box side / the file's shorter side, NULL without a
face) come from the one face pipeline, `zoo.faces`, run on the original file.
"""
from __future__ import annotations

import json
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
        return {**out, "brightness": np.nan, "contrast": np.nan, "blur": np.nan, "background": np.nan}
    out.update(pixel_stats(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    return out


def images_rows(manifest: Manifest, idx: np.ndarray, workers: int = 2, progress: bool = False) -> pd.DataFrame:
    """Rows of the `images` table (labels from the manifest, measured attributes, and what the face pipeline found
    in the file: `zoo.data.detections`) for manifest rows `idx`."""
    from zoo.data.detections import detections

    f = manifest.frame.iloc[np.asarray(idx, dtype=int)].reset_index(drop=True)
    paths = [manifest.root / p for p in f["path"]]
    with ThreadPoolExecutor(max(1, workers)) as pool:  # OpenCV releases the GIL while decoding
        attrs = list(tqdm(pool.map(image_attributes, paths), total=len(paths), unit="img", leave=False,
                          desc=f"attributes {manifest.dataset}", disable=not progress))
    a = pd.DataFrame(attrs, columns=[c for c in ATTRIBUTES if c != "face_size"])
    d = detections(manifest, idx, progress=progress)
    side = np.minimum(d["img_w"].to_numpy(float), d["img_h"].to_numpy(float))
    a["face_size"] = np.maximum(d["face_w"].to_numpy(float), d["face_h"].to_numpy(float)) / side
    extras = f["extras"] if "extras" in f else pd.Series([None] * len(f))
    return pd.DataFrame({
        "dataset": manifest.dataset, "image_id": f["image_id"].astype(str), "split": f["split"].astype(str),
        "path": f["path"].astype(str),
        "age": f["age"].astype(float), "age_min": f["age_min"].astype(float), "age_max": f["age_max"].astype(float),
        "gender": f["gender"].astype("Int8"), "race": f["race"].astype(object).where(f["race"].notna(), None),
        "extras": [e if isinstance(e, str) else json.dumps(e if isinstance(e, dict) else {}) for e in extras],
        **{c: a[c].astype(float) for c in ATTRIBUTES if c != "resolution"},
        "resolution": a["resolution"].astype("Int32"),
        "is_synthetic": manifest.dataset.startswith("synth"), "framing": manifest.framing,
        "face_found": d["face_found"].astype(bool), "n_faces": d["n_faces"].astype("Int32"),
        **{c: d[c].astype(float) for c in ("face_score", "face_x", "face_y", "face_w", "face_h")},
    })
