"""Where an output came from: the git commit (marked `+dirty` when the tree had uncommitted changes)."""
from __future__ import annotations

import functools
import subprocess

from zoo.paths import REPO


@functools.cache
def git_commit() -> str:
    """The commit of the code this process runs. Cached at the first call (a trainer makes it when its run starts),
    so a long sweep keeps reporting the code it loaded, not a HEAD committed while it ran."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (sha or "unknown") + ("+dirty" if dirty else "")
