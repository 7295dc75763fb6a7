"""Where the benchmarked images live on disk, the one safe way to open one, and thumbnails of them (the Browser and
Attributes pages)."""
from __future__ import annotations

import json
import os
from pathlib import Path


def dataset_root(dataset: str) -> Path | None:
    """Where the dataset's images live: the scanned manifest's root (cache/manifests/<dataset>.json), else the
    team's shared copy (zoo.data.manifest.DEFAULT_ROOTS); None when neither exists."""
    from zoo.paths import cache_dir, shared_data_dir

    side = cache_dir() / "manifests" / f"{dataset}.json"
    try:
        root = Path(json.loads(side.read_text())["root"])
        if root.is_dir():
            return root
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        from zoo.data.manifest import DEFAULT_ROOTS
    except Exception:
        DEFAULT_ROOTS = {}
    if dataset in DEFAULT_ROOTS:
        root = shared_data_dir() / DEFAULT_ROOTS[dataset]
        if root.is_dir():
            return root
    return None


def safe_image_path(root: str | Path, rel: str) -> Path | None:
    """root/rel if it is a file that stays inside root (no absolute paths, '..' or symlinks out); else None."""
    from zoo.data.readers import outside_root  # the scan's rule, so the scan and the Browser agree on every file

    if not rel or os.path.isabs(rel) or "\x00" in rel or not Path(root).is_dir():
        return None
    if outside_root(root, Path(root) / rel) is not None:
        return None
    p = (Path(root) / rel).resolve()
    return p if p.is_file() else None


THUMB, FULL = 160, 640  # grid cell width in px; the largest side kept for Streamlit's full-screen view


def thumbnail(path: str | Path, width: int = THUMB, full: int = FULL) -> bytes | None:
    """The image as JPEG bytes for a thumbnail grid: at its own resolution up to `full` px (Streamlit's full-screen
    view shows the pixels it is given, no more), and at least `width` px wide so that every cell of a grid is the
    same size; None when it does not decode. Pass a path from `safe_image_path`."""
    import cv2

    path = Path(path)
    img = cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_2 if path.stat().st_size > 400_000 else cv2.IMREAD_COLOR)
    if img is None:
        return None
    h, w = img.shape[:2]
    k = min(full / max(h, w), max(1.0, width / w))
    if k != 1:
        img = cv2.resize(img, (max(1, round(w * k)), max(1, round(h * k))),
                         interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return buf.tobytes() if ok else None
