"""Decoded-image cache: every image is decoded and resized once per (manifest, framing, size) into a uint8 array.

Training and benchmarking then index a memory-mapped [N, S, S, 3] array instead of decoding JPEGs, which keeps
them compute-bound on a 2-core machine. Rows follow the manifest's order (sorted by image_id).

Framing (`zoo.faces`): `aligned` images are used as they are (centre square, resized); `fixed` images are warped
from the landmarks their dataset declares for all of them (`zoo.data.readers.register_reader`); `detect` and
`boxes` images are warped to the canonical aligned crop from their stored landmarks (`zoo.data.detections`), or
take the documented fallback crop when no face was found. Caches of aligned crops are keyed by the face pipeline's
version (fixed crops: by the landmarks and the template).
"""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from zoo.data.manifest import Manifest
from zoo.paths import cache_dir, cache_lock


def square_resize(img: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square, then resize: the same geometry for training, benchmarking and uploaded photos."""
    h, w = img.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    img = img[y:y + s, x:x + s]
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def decode_image(path: Path, size: int) -> np.ndarray:
    """Decode an image file to RGB uint8 [size, size, 3]."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot decode {path}")
    return square_resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), size)


def aligned_image(path: Path, points: np.ndarray, size: int) -> np.ndarray:
    """The canonical aligned crop of a file from its stored landmarks [5, 2] (NaN: the fallback crop), at `size`:
    exactly `FacePipeline.primary`'s crop, resized like every crop (`square_resize`)."""
    from zoo.data.detections import read_rgb
    from zoo.faces import CROP_SIZE, fallback_crop, warp_to_template

    rgb = read_rgb(path)
    crop = fallback_crop(rgb) if np.isnan(points).any() else warp_to_template(rgb, points, CROP_SIZE)
    return square_resize(crop, size)


def _framing(manifest: Manifest, framing: str | None) -> str:
    return framing or manifest.framing


def cache_path(manifest: Manifest, size: int, framing: str | None = None) -> Path:
    framing = _framing(manifest, framing)
    if framing == "aligned":
        return cache_dir() / "images" / f"{manifest.dataset}-{manifest.hash}-{size}.npy"
    from zoo.faces import CROP_SIZE, TEMPLATE, pipeline_version

    if framing == "fixed":
        from zoo.data.readers import reader_landmarks

        landmarks = reader_landmarks(manifest.reader or manifest.dataset)
        blob = f"{landmarks.round(4).tolist()}|{TEMPLATE.round(2).tolist()}|{CROP_SIZE}"
        version = f"fixed-{hashlib.sha1(blob.encode()).hexdigest()[:8]}"
    else:
        version = pipeline_version()
    return cache_dir() / "images" / f"{manifest.dataset}-{manifest.hash}-{version}-{size}.npy"


def image_loader(manifest: Manifest, framing: str | None = None, progress: bool = True,
                 rows: np.ndarray | None = None):
    """`load(i, size)` -> uint8 [size, size, 3] of manifest row i under `framing`. Faces are detected first (or read
    from the detection store) for `rows` (default all), the only rows it can then load."""
    paths = manifest.abspaths()
    framing = _framing(manifest, framing)
    if framing == "aligned":
        return lambda i, size: decode_image(paths[i], size)
    if framing == "fixed":
        from zoo.data.detections import read_rgb
        from zoo.data.readers import reader_landmarks
        from zoo.faces import fixed_crop

        landmarks = reader_landmarks(manifest.reader or manifest.dataset)
        return lambda i, size: square_resize(fixed_crop(read_rgb(paths[i]), landmarks), size)
    from zoo.data.detections import detections, landmarks_of

    rows = np.arange(len(paths)) if rows is None else np.asarray(rows, dtype=int)
    points = dict(zip(rows.tolist(), landmarks_of(detections(manifest, rows, progress=progress))))
    return lambda i, size: aligned_image(paths[i], points[int(i)], size)


def build_cache(manifest: Manifest, size: int, workers: int = 2, progress: bool = True,
                framing: str | None = None) -> Path:
    """Decode every image of the manifest once. Written to a temp file and renamed, so a crash leaves no
    half-filled array that could be mistaken for a finished one."""
    out = cache_path(manifest, size, framing)
    if out.exists():
        return out
    with cache_lock(out.stem):
        return out if out.exists() else _build(manifest, size, out, workers, progress, framing)


def _build(manifest: Manifest, size: int, out: Path, workers: int, progress: bool, framing: str | None) -> Path:
    load = image_loader(manifest, framing, progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial.npy")
    n = len(manifest.frame)
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    with ThreadPoolExecutor(workers) as pool:  # cv2 releases the GIL while decoding
        for i, img in enumerate(tqdm(pool.map(lambda i: load(i, size), range(n)), total=n,
                                     desc=f"cache {manifest.dataset}@{size}px", disable=not progress,
                                     unit="img")):
            arr[i] = img
    arr.flush()
    del arr
    tmp.replace(out)
    out.with_suffix(".json").write_text(json.dumps({"manifest": manifest.hash, "size": size, "n": n,
                                                    "framing": _framing(manifest, framing)}))
    return out


def load_images(manifest: Manifest, size: int, in_memory: bool = True, progress: bool = True,
                framing: str | None = None) -> np.ndarray:
    """The cached array for (manifest, framing, size), building it on first use. `in_memory` copies it to RAM
    (a 64 px UTKFace cache is ~260 MB) so random batch indexing never touches the disk."""
    path = build_cache(manifest, size, progress=progress, framing=framing)
    arr = np.load(path, mmap_mode="r")
    if len(arr) != len(manifest.frame):
        raise ValueError(f"cache {path} has {len(arr)} rows but the manifest has {len(manifest.frame)}; delete it")
    return np.ascontiguousarray(arr) if in_memory else arr


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1]; the permuted view is already channels_last in memory."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
