"""The shipping rule: data-strategy checkpoints go first, then the largest; headline runs always stay."""
import json
import subprocess

import pytest

from conftest import REPO
from zoo.ship import plan, untrack, write_ignore


def _run(root, run_id, name, mb, kind="single", **record):
    d = root / run_id
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"id": run_id, "name": name, "kind": kind, **record}))
    if mb:
        (d / "best.safetensors").write_bytes(b"\0" * int(mb * 1e6))


def test_drops_strategies_first_then_largest_never_headline(tmp_path):
    _run(tmp_path, "h", "headline-resnet18", 5)
    _run(tmp_path, "f1", "formulation/l1", 1)
    _run(tmp_path, "b50", "backbone/resnet50", 4)
    _run(tmp_path, "aug", "augment/none", 1)
    _run(tmp_path, "ens", "ensemble", 0, kind="ensemble", members=["h"])
    kept, dropped = plan(cap_mb=7, root=tmp_path)
    assert [c.run_id for c in dropped] == ["aug", "b50"]  # the small strategy run goes before the big core one
    assert {c.run_id for c in kept} == {"h", "f1"} and sum(c.mb for c in kept) <= 7
    ignore = write_ignore(dropped, tmp_path).read_text()
    assert "/aug/best.safetensors" in ignore and "/b50/best.safetensors" in ignore and "/h/" not in ignore
    assert plan(cap_mb=100, root=tmp_path)[1] == []
    with pytest.raises(ValueError, match="headline"):
        plan(cap_mb=4, root=tmp_path)


def test_headlines_over_the_cap_drop_the_oldest_no_runnable_ensemble_needs(tmp_path):
    """Headlines alone over the cap: a newer headline supersedes an old one that no ensemble can use, while every
    checkpoint a runnable ensemble needs (members, and an adapted member's parent) stays."""
    _run(tmp_path, "old", "headline-first", 4, created="2026-11-01T00:00:00Z")
    _run(tmp_path, "older-but-needed", "headline-a", 4, created="2026-10-01T00:00:00Z")
    _run(tmp_path, "parent", "headline-b", 4, created="2026-10-02T00:00:00Z")
    _run(tmp_path, "child", "headline-b + AdaBN", 0.5, kind="adapted", parent="parent", checkpoint="bn.safetensors",
         created="2026-12-01T00:00:00Z")
    (tmp_path / "child" / "best.safetensors").rename(tmp_path / "child" / "bn.safetensors")
    _run(tmp_path, "new", "headline-attr", 4, created="2026-12-02T00:00:00Z")
    _run(tmp_path, "ens", "ensemble/headlines", 0, kind="ensemble", members=["older-but-needed", "child"])
    _run(tmp_path, "broken", "ensemble/old", 0, kind="ensemble", members=["old", "gone"])  # "gone" has no weights
    kept, dropped = plan(cap_mb=13, root=tmp_path)
    assert [c.run_id for c in dropped] == ["old"]
    assert {c.run_id for c in kept} == {"older-but-needed", "parent", "child", "new"}
    assert [c.run_id for c in plan(cap_mb=9, root=tmp_path)[1]] == ["old", "new"]  # oldest first
    with pytest.raises(ValueError, match="ensembles need"):
        plan(cap_mb=8, root=tmp_path)


def test_a_dropped_checkpoint_that_git_already_tracks_is_untracked(tmp_path):
    """An ignore rule does not stop git shipping a file an earlier commit added; ship must untrack it."""
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    _run(tmp_path, "h", "headline-resnet18", 2)
    _run(tmp_path, "aug", "augment/none", 1)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "both"], check=True)
    kept, dropped = plan(cap_mb=2.5, root=tmp_path)
    write_ignore(dropped, tmp_path)
    assert untrack(dropped, tmp_path) == ["aug/best.safetensors"]
    tracked = subprocess.run([*git, "ls-files"], capture_output=True, text=True, check=True).stdout.split()
    assert "aug/best.safetensors" not in tracked and "h/best.safetensors" in tracked
    assert (tmp_path / "aug" / "best.safetensors").is_file()  # the local copy stays
    assert untrack(dropped, tmp_path) == []  # idempotent


def test_the_checkpoints_git_ships_fit_the_cap():
    """What this checkout's git tracks (what a clone gets), not what the plan intended, stays within 120 MB."""
    repo = REPO
    ls = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "artifacts/runs"], capture_output=True)
    if ls.returncode != 0:
        pytest.skip("not a git checkout")
    ckpts = [repo / p for p in ls.stdout.decode().split("\0") if p.endswith(".safetensors")]
    assert ckpts, "no shipped checkpoint"
    assert sum(p.stat().st_size for p in ckpts) / 1e6 <= 120
