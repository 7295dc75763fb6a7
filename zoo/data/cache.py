"""Decoded-image cache: every image is decoded and resized once per (manifest, size) into a uint8 array on disk.

Training and benchmarking then index a memory-mapped [N, S, S, 3] array instead of decoding JPEGs, which keeps
them compute-bound on a 2-core machine. Rows follow the manifest's order (sorted by image_id).
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from zoo.data.manifest import Manifest
from zoo.paths import cache_dir


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


def cache_path(manifest: Manifest, size: int) -> Path:
    return cache_dir() / "images" / f"{manifest.dataset}-{manifest.hash}-{size}.npy"


def build_cache(manifest: Manifest, size: int, workers: int = 2, progress: bool = True) -> Path:
    """Decode every image of the manifest once. Written to a temp file and renamed, so a crash leaves no
    half-filled array that could be mistaken for a finished one."""
    out = cache_path(manifest, size)
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial.npy")
    paths = manifest.abspaths()
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
    with ThreadPoolExecutor(workers) as pool:  # cv2 releases the GIL while decoding
        for i, img in enumerate(tqdm(pool.map(lambda p: decode_image(p, size), paths), total=len(paths),
                                     desc=f"cache {manifest.dataset}@{size}px", disable=not progress,
                                     unit="img")):
            arr[i] = img
    arr.flush()
    del arr
    tmp.replace(out)
    out.with_suffix(".json").write_text(json.dumps({"manifest": manifest.hash, "size": size, "n": len(paths)}))
    return out


def load_images(manifest: Manifest, size: int, in_memory: bool = True, progress: bool = True) -> np.ndarray:
    """The cached array for (manifest, size), building it on first use. `in_memory` copies it to RAM
    (a 64 px UTKFace cache is ~260 MB) so random batch indexing never touches the disk."""
    path = build_cache(manifest, size, progress=progress)
    arr = np.load(path, mmap_mode="r")
    if len(arr) != len(manifest.frame):
        raise ValueError(f"cache {path} has {len(arr)} rows but the manifest has {len(manifest.frame)}; delete it")
    return np.ascontiguousarray(arr) if in_memory else arr


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1]; the permuted view is already channels_last in memory."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
