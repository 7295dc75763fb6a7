"""Where the project keeps its outputs: committed artifacts and a local, ignored cache.

Both can be moved with environment variables so tests and users never write into the checkout by accident.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent


def artifacts_dir() -> Path:
    """Committed outputs: registry of runs, split files, shipped checkpoints, bench DB."""
    return Path(os.environ.get("ZOO_ARTIFACTS", REPO / "artifacts"))


def cache_dir() -> Path:
    """Rebuildable local state: manifests, decoded-image arrays. Never committed."""
    return Path(os.environ.get("ZOO_CACHE", REPO / ".cache"))


def splits_dir() -> Path:
    return artifacts_dir() / "splits"


def runs_dir() -> Path:
    return artifacts_dir() / "runs"


def shared_data_dir() -> Path:
    """The team's real datasets (`../shared/data` beside the checkout); may be absent."""
    return Path(os.environ.get("ZOO_SHARED_DATA", REPO.parent / "shared" / "data"))


@contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold an exclusive lock on `name` within the cache folder while building a shared cache file (a manifest,
    face detections, a decoded-image array), so concurrent jobs on one machine (two trainings, bench shards) build it
    once instead of racing on its temporary file. Builders re-check for the finished file once they hold it."""
    path = cache_dir() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
