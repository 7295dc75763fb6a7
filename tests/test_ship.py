"""The shipping rule: data-strategy checkpoints go first, then the largest; headline runs always stay."""
import json

import pytest

from zoo.ship import plan, write_ignore


def _run(root, run_id, name, mb, kind="single"):
    d = root / run_id
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"id": run_id, "name": name, "kind": kind}))
    if mb:
        (d / "best.safetensors").write_bytes(b"\0" * int(mb * 1e6))


def test_drops_strategies_first_then_largest_never_headline(tmp_path):
    _run(tmp_path, "h", "headline-resnet18", 5)
    _run(tmp_path, "f1", "formulation/l1", 1)
    _run(tmp_path, "b50", "backbone/resnet50", 4)
    _run(tmp_path, "aug", "augment/none", 1)
    _run(tmp_path, "ens", "ensemble", 0, kind="ensemble")
    kept, dropped = plan(cap_mb=7, root=tmp_path)
    assert [c.run_id for c in dropped] == ["aug", "b50"]  # the small strategy run goes before the big core one
    assert {c.run_id for c in kept} == {"h", "f1"} and sum(c.mb for c in kept) <= 7
    ignore = write_ignore(dropped, tmp_path).read_text()
    assert "/aug/best.safetensors" in ignore and "/b50/best.safetensors" in ignore and "/h/" not in ignore
    assert plan(cap_mb=100, root=tmp_path)[1] == []
    with pytest.raises(ValueError, match="headline"):
        plan(cap_mb=4, root=tmp_path)
