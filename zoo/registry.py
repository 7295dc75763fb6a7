"""The model registry: every finished run is a folder `artifacts/runs/<id>/` with `run.json` (+ checkpoint).

Kinds: `single` (one trained network), `ensemble` (members by id), `adapted` (a parent network with BatchNorm
statistics re-estimated on another dataset). `load(id)` returns a predictor with the common inference API.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from zoo.config import TrainConfig
from zoo.inference import EnsemblePredictor, Predictor
from zoo.paths import runs_dir


def list_runs(root: Path | None = None) -> list[dict]:
    root = root or runs_dir()
    if not root.is_dir():
        return []
    runs = []
    for p in sorted(root.glob("*/run.json")):
        try:
            runs.append(json.loads(p.read_text()))
        except json.JSONDecodeError:
            continue  # a half-written file cannot exist (atomic writes) but a hand-edited one might
    return runs


def write_run(record: dict, root: Path | None = None) -> Path:
    """Write `run.json` for record["id"] atomically (a kill leaves the old record or none, never half of one)."""
    out = (root or runs_dir()) / record["id"] / "run.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(out)
    return out


def get_run(model_id: str, root: Path | None = None) -> dict:
    root = root or runs_dir()
    if "/" in model_id or "\\" in model_id or model_id.startswith("."):
        raise ValueError(f"invalid model id {model_id!r}")
    path = root / model_id / "run.json"
    if not path.exists():
        known = [r["id"] for r in list_runs(root)]
        raise KeyError(f"no model {model_id!r} in {root}; known: {', '.join(known) or '(registry empty)'}")
    return json.loads(path.read_text())


def load_state(run_dir: Path, name: str = "best.safetensors") -> dict[str, torch.Tensor]:
    path = run_dir / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: this run's checkpoint was not shipped")
    return {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}


def build_network(run: dict, root: Path | None = None) -> torch.nn.Module:
    """The network of a single or adapted run, with its weights (an adapted run's checkpoint holds only what
    differs from its parent's: BatchNorm statistics)."""
    from zoo.model import AgeGenderModel

    root = root or runs_dir()
    own = load_state(root / run["id"], run.get("checkpoint", "best.safetensors"))
    if run["kind"] == "single":
        cfg = TrainConfig.from_dict({"name": run.get("name", ""), **run["config"]})
        model = AgeGenderModel(cfg, load_pretrained=False)  # weights come from the checkpoint
        model.load_state_dict(own)
        return model.eval()
    model = build_network(get_run(run["parent"], root), root)
    unknown = set(own) - set(model.state_dict())
    if unknown:
        raise ValueError(f"{run['id']}: checkpoint tensors its parent does not have: {sorted(unknown)[:5]}")
    model.load_state_dict(own, strict=False)
    return model.eval()


def input_framing(run: dict, dataset: str, root: Path | None = None) -> str | None:
    """The framing a model reads `dataset` with: the one its config trained that dataset with (None: the dataset's
    own). Ensembles agree with their members or use the dataset's own; adapted runs follow their parent."""
    if run.get("kind") == "ensemble":
        found = {input_framing(get_run(m, root), dataset, root) for m in run.get("members", [])}
        return found.pop() if len(found) == 1 else None
    if run.get("kind") == "adapted" and run.get("parent"):
        return input_framing(get_run(run["parent"], root), dataset, root)
    for e in (run.get("config") or {}).get("datasets") or []:
        if isinstance(e, dict) and e.get("name") == dataset and e.get("framing"):
            return e["framing"]
    return None


def load(model_id: str, root: Path | None = None, runtime: str = "eager") -> Predictor | EnsemblePredictor:
    """A registered model as a predictor. `runtime` (zoo.export.RUNTIMES): what runs its network on the CPU: `eager`
    (the reference), `onnx` (ONNX Runtime on a cached export), `compile`, or `auto` (the measured fastest with equal
    outputs); an ensemble's members each get it. MC-Dropout samples the head dropout in torch (zoo.export)."""
    from zoo.export import make_runner, resolve_runtime

    root = root or runs_dir()
    run = get_run(model_id, root)
    if run["kind"] == "ensemble":
        return EnsemblePredictor([load(m, root, runtime) for m in run["members"]], model_id, run)
    resolve_runtime(runtime)  # an unknown name fails before the network is built
    size = (run if run["kind"] == "single" else get_run(run["parent"], root))["config"]["img_size"]
    model = build_network(run, root)
    return Predictor(model, size, model_id, run, make_runner(model, model_id, runtime, root), resolve_runtime(runtime))


def missing_weights(run: dict, by_id: dict[str, dict], root: Path | None = None) -> str | None:
    """Why a registered run cannot predict (its checkpoint, an ensemble member's or an adapted run's parent's was not
    shipped), or None when it can."""
    root = root or runs_dir()
    if run.get("kind") == "ensemble":
        if not run.get("members"):
            return "an ensemble without members"
        for m in run["members"]:
            why = f"member {m} is not registered" if m not in by_id else missing_weights(by_id[m], by_id, root)
            if why:
                return why if why.startswith("member") else f"member {m}: {why}"
        return None
    if run.get("kind") == "adapted":  # its checkpoint holds BatchNorm statistics; the weights are the parent's
        parent = by_id.get(run.get("parent"))
        why = "is not registered" if parent is None else missing_weights(parent, by_id, root)
        if why:
            return f"parent {run.get('parent')} {why}" if parent is None else f"parent {run['parent']}: {why}"
    ck = root / run["id"] / run.get("checkpoint", "best.safetensors")
    return None if ck.is_file() else f"checkpoint {ck.name} not shipped"


def select_models(spec: str, root: Path | None = None) -> list[str]:
    """Model ids from a selector: `best` (the runnable model with the lowest val MAE), `all` / `zoo` (every
    runnable model), or comma-separated ids (checked to exist)."""
    runs = list_runs(root)
    by_id = {r["id"]: r for r in runs}
    runnable = [r for r in runs if missing_weights(r, by_id, root) is None]
    spec = (spec or "best").strip()
    if spec == "best":
        scored = [(r.get("metrics", {}).get("val", {}).get("mae", float("nan")), r["id"]) for r in runnable]
        scored = [s for s in scored if s[0] == s[0]]
        if not scored:
            raise ValueError("no runnable model with a val MAE is registered")
        return [min(scored)[1]]
    if spec in ("all", "zoo"):
        return [r["id"] for r in runnable]
    ids = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    for i in ids:
        if not i.startswith("peer:"):
            get_run(i, root)  # KeyError listing the known ids
    return ids


def runs_table(root: Path | None = None) -> pd.DataFrame:
    """One row per registered model: what it is, its cost and its test accuracy."""
    rows = []
    for r in list_runs(root):
        cfg = r.get("config", {})
        test = r.get("metrics", {}).get("test", {})
        rows.append({"id": r["id"], "kind": r["kind"], "name": r.get("name", ""), "backbone": cfg.get("backbone"),
                     "formulation": cfg.get("formulation"), "img_size": cfg.get("img_size"),
                     "params_M": r.get("params", np.nan) / 1e6, "MFLOPs": r.get("flops", np.nan) / 1e6,
                     "img_s": r.get("infer_img_s", np.nan), "val_mae": r.get("metrics", {}).get("val", {}).get("mae"),
                     "test_mae": test.get("mae"), "gender_acc": test.get("gender_acc"), "commit": r.get("commit")})
    return pd.DataFrame(rows)
