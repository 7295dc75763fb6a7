"""Which checkpoints ship in git under a size cap, decided by rule rather than by hand.

Every run's record (`run.json`, `config.yaml`, `history.csv`) always ships; checkpoints are dropped until the total
fits the cap: data-strategy variants first (their value is in their metrics, which ship anyway), then the largest
of the rest. Headline runs (name `headline…`) are dropped only when they alone exceed the cap, and then only those
no runnable ensemble needs (as a member or a member's parent), oldest first: a newer headline supersedes them. The decision is written to `runs/.gitignore`, so
`git add` can never commit a dropped checkpoint by accident, and a dropped checkpoint that an earlier commit already
tracks is untracked (an ignore rule alone would keep shipping it); the local copies stay usable for benching.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from zoo.paths import runs_dir
from zoo.registry import list_runs

# Run-name prefixes whose checkpoints the photo comparison shows first: one model per formulation and backbone,
# and the ensemble's members.
CORE_PREFIXES = ("formulation/", "ensemble_member/", "backbone/", "pretrained/")
HEADER = "# Written by `python -m zoo ship`: checkpoints left out of git to keep the shipped zoo under its cap.\n"


@dataclass
class Checkpoint:
    run_id: str
    name: str
    mb: float
    file: str = "best.safetensors"
    created: str = ""

    @property
    def path(self) -> str:
        return f"{self.run_id}/{self.file}"

    @property
    def tier(self) -> int:
        """0 never dropped, 1 dropped after every tier-2 checkpoint, 2 dropped first."""
        if self.name.startswith("headline"):
            return 0
        return 1 if self.name.startswith(CORE_PREFIXES) else 2


def plan(cap_mb: float, root: Path | None = None) -> tuple[list[Checkpoint], list[Checkpoint]]:
    """(kept, dropped) checkpoints of single runs so that the kept ones total at most `cap_mb`."""
    root = root or runs_dir()
    runs = list_runs(root)
    ckpts = []
    for r in runs:
        path = root / r.id / r.checkpoint_file
        if r.kind != "ensemble" and path.is_file():
            ckpts.append(Checkpoint(r.id, r.name, path.stat().st_size / 1e6, path.name, r.created or ""))
    kept = sorted(ckpts, key=lambda c: (-c.tier, -c.mb, c.run_id))  # the next to drop is kept[0]
    dropped = []
    while sum(c.mb for c in kept) > cap_mb and kept and kept[0].tier > 0:
        dropped.append(kept.pop(0))
    needed = _ensemble_needs(runs, {c.run_id for c in ckpts})
    spare = sorted((c for c in kept if c.run_id not in needed), key=lambda c: (c.created, c.run_id))
    while sum(c.mb for c in kept) > cap_mb and spare:
        dropped.append(spare[0])
        kept.remove(spare.pop(0))
    if sum(c.mb for c in kept) > cap_mb:
        raise ValueError(f"headline checkpoints that ensembles need alone exceed the {cap_mb} MB cap")
    return sorted(kept, key=lambda c: c.run_id), dropped


def _ensemble_needs(runs: list, present: set[str]) -> set[str]:
    """Runs whose checkpoints some ensemble needs, counting only ensembles whose every member (and an adapted
    member's parent) has a checkpoint: one already missing a member cannot run whatever ships."""
    by_id = {r.id: r for r in runs}
    needed: set[str] = set()
    for e in (r for r in runs if r.kind == "ensemble"):
        need = set(e.members) | {by_id[m].parent for m in e.members if m in by_id and by_id[m].parent}
        if need <= present:
            needed |= need
    return needed


def write_ignore(dropped: list[Checkpoint], root: Path | None = None) -> Path:
    root = root or runs_dir()
    path = root / ".gitignore"
    path.write_text(HEADER + "".join(f"/{c.path}\n" for c in sorted(dropped, key=lambda c: c.run_id)))
    return path


def untrack(dropped: list[Checkpoint], root: Path | None = None) -> list[str]:
    """Remove dropped checkpoints from git's index (never from disk); returns the paths git tracked. Outside a git
    work tree there is nothing to untrack."""
    root = root or runs_dir()
    paths = [c.path for c in dropped]
    git = ["git", "-C", str(root)]
    if not paths or subprocess.run([*git, "rev-parse"], capture_output=True).returncode != 0:
        return []
    tracked = subprocess.run([*git, "ls-files", "--", *paths], capture_output=True, text=True, check=True).stdout.split()
    if tracked:
        subprocess.run([*git, "rm", "--cached", "--quiet", "--", *tracked], check=True)
    return tracked
