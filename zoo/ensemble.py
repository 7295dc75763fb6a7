"""Ensembles as registry entries: a list of member ids, evaluated and registered like any other model."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from zoo.evaluate import evaluate
from zoo.paths import runs_dir
from zoo.provenance import git_commit
from zoo.registry import get_run, load


def make_ensemble(members: list[str], name: str = "", root: Path | None = None, progress: bool = True) -> dict:
    root = root or runs_dir()
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two members")
    runs = [get_run(m, root) for m in members]
    datasets = {r["data"]["dataset"] for r in runs}
    if len(datasets) != 1:
        raise ValueError(f"ensemble members were trained on different datasets: {sorted(datasets)}")
    mid = "ensemble-" + hashlib.sha1(",".join(sorted(members)).encode()).hexdigest()[:8]
    out = root / mid / "run.json"
    if out.exists():
        return json.loads(out.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"id": mid, "kind": "ensemble", "name": name or f"ensemble of {len(members)}",
              "members": sorted(members), "data": runs[0]["data"],
              "config": {"backbone": "+".join(sorted({r["config"]["backbone"] for r in runs})),
                         "formulation": "+".join(sorted({r["config"]["formulation"] for r in runs})),
                         "img_size": max(r["config"]["img_size"] for r in runs)},
              "params": sum(r["params"] for r in runs), "flops": sum(r["flops"] for r in runs),
              "infer_img_s": 1 / sum(1 / r["infer_img_s"] for r in runs),
              "commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    predictor, dataset = load_members(record, root), runs[0]["data"]["dataset"]
    record["metrics"] = evaluate(predictor, dataset, progress=progress)
    record["metrics"]["test_tta"] = evaluate(predictor, dataset, splits=("test",), tta="flip")["test"]
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(out)
    return record


def load_members(record: dict, root: Path):
    from zoo.inference import EnsemblePredictor

    return EnsemblePredictor([load(m, root) for m in record["members"]], record["id"], record)
