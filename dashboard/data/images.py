"""Where the benchmarked images live on disk, and the one safe way to open one (the Browser page)."""
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
