"""Where the project keeps its outputs: committed artifacts and a local, ignored cache.

Both can be moved with environment variables so tests and users never write into the checkout by accident.
"""
from __future__ import annotations

import os
from pathlib import Path

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
