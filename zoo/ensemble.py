"""Ensembles as registry entries: a list of member ids, evaluated and registered like any other model."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from zoo.evaluate import registry_metrics, split_predictions
from zoo.paths import runs_dir
from zoo.provenance import git_commit
from zoo.registry import get_run, load, write_run
from zoo.runs import RunRecord


def make_ensemble(members: list[str], name: str = "", root: Path | None = None, progress: bool = True) -> dict:
    root = root or runs_dir()
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two members")
    runs = [get_run(m, root) for m in members]
    datasets = {r.data["dataset"] for r in runs}
    if len(datasets) != 1:
        raise ValueError(f"ensemble members were trained on different datasets: {sorted(datasets)}")
    mid = "ensemble-" + hashlib.sha1(",".join(sorted(members)).encode()).hexdigest()[:8]
    out = root / mid / "run.json"
    if out.exists():
        return RunRecord.load(out).to_dict()
    record = {"id": mid, "kind": "ensemble", "name": name or f"ensemble of {len(members)}",
              "members": sorted(members), "data": runs[0].data,
              "config": {"backbone": "+".join(sorted({r.config["backbone"] for r in runs})),
                         "formulation": "+".join(sorted({r.config["formulation"] for r in runs})),
                         "img_size": max(r.img_size for r in runs)},
              "params": sum(r.params for r in runs), "flops": sum(r.flops for r in runs),
              "infer_img_s": 1 / sum(1 / r.infer_img_s for r in runs),
              "commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    predictor, dataset = load_members(record, root), runs[0].data["dataset"]
    record["metrics"] = registry_metrics(predictor, dataset, progress)
    write_run(record, root)  # only now: a killed evaluation leaves no empty run folder
    return record


def greedy_select(val_ages: dict[str, np.ndarray], target: np.ndarray) -> list[str]:
    """Forward selection on validation predictions (Caruana et al. 2004, without replacement): start from the best
    single model, add whichever candidate lowers the mean's val MAE most, stop when none does. Chosen on val, so the
    test numbers of the result stay honest."""
    mae = {k: float(np.abs(v - target).mean()) for k, v in val_ages.items()}
    chosen = [min(mae, key=mae.get)]
    best, total = mae[chosen[0]], val_ages[chosen[0]].astype(float)
    while len(chosen) < len(val_ages):
        trial = {k: float(np.abs((total + v) / (len(chosen) + 1) - target).mean())
                 for k, v in val_ages.items() if k not in chosen}
        k = min(trial, key=trial.get)
        if trial[k] >= best:
            break
        chosen.append(k)
        best, total = trial[k], total + val_ages[k]
    return chosen


def select_members(candidates: list[str], root: Path | None = None, progress: bool = True) -> list[str]:
    """`greedy_select` over the candidates' age predictions on the val split of their dataset."""
    from tqdm import tqdm

    root = root or runs_dir()
    dataset = get_run(candidates[0], root).data["dataset"]
    preds = {}
    for c in tqdm(candidates, desc="val predictions", disable=not progress):
        pred, age, _, _ = split_predictions(load(c, root), dataset, split="val")
        preds[c] = pred[None]["age"]
    return greedy_select(preds, age)


def load_members(record: dict, root: Path):
    from zoo.inference import EnsemblePredictor

    return EnsemblePredictor([load(m, root) for m in record["members"]], record["id"], record)
