"""The model registry: every finished run is a folder `artifacts/runs/<id>/` with `run.json` (+ checkpoint).

Kinds: `single` (one trained network), `ensemble` (members by id), `adapted` (a parent network with BatchNorm
statistics re-estimated on another dataset). `load(id)` returns a predictor with the common inference API.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

from zoo.paths import runs_dir
from zoo.runs import RUN_FILE, RunRecord

if TYPE_CHECKING:  # torch (and pandas) imported on use: readers of run.json (the dashboard) stay light
    import pandas as pd
    import torch

    from zoo.predictor import ModesPredictor


def list_runs(root: Path | None = None) -> list[RunRecord]:
    """Every registered run (by id); a hand-edited, unreadable file is skipped."""
    return RunRecord.load_all(root or runs_dir())


def write_run(record: Mapping, root: Path | None = None) -> Path:
    """Write `run.json` for record["id"] atomically (a kill leaves the old record or none, never half of one)."""
    record = record.to_dict() if isinstance(record, RunRecord) else record
    out = (root or runs_dir()) / record["id"] / "run.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(out)
    return out


def get_run(model_id: str, root: Path | None = None) -> RunRecord:
    root = root or runs_dir()
    if "/" in model_id or "\\" in model_id or model_id.startswith("."):
        raise ValueError(f"invalid model id {model_id!r}")
    if not (root / model_id / RUN_FILE).exists():
        known = [r.id for r in list_runs(root)]
        raise KeyError(f"no model {model_id!r} in {root}; known: {', '.join(known) or '(registry empty)'}")
    return RunRecord.load(root / model_id / RUN_FILE)


def model_row(run: RunRecord | Mapping,
              runs: Mapping[str, RunRecord | Mapping] | Callable[[str], RunRecord | Mapping] | None = None,
              root: Path | None = None) -> dict:
    """The bench DB's `models` row of a run (RunRecord.to_row; a dict record is read through RunRecord)."""
    return RunRecord.from_dict(run).to_row(runs if runs is not None else (lambda m: get_run(m, root)), root)


def load_state(run_dir: Path, name: str = "best.safetensors") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = run_dir / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: this run's checkpoint was not shipped")
    return {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}


def _network_holding(cfg, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """cfg's network holding the checkpoint `state`. Built on the meta device, so no random init is spent on weights
    the checkpoint replaces (the 18 shipped networks load 3.8x faster), and given the checkpoint's tensors; built on
    the CPU, as training builds it, when that cannot hold every tensor of the network (one the checkpoint lacks, such
    as a non-persistent buffer, or a layer meta tensors cannot build)."""
    import torch

    from zoo.model import AgeGenderModel

    try:
        with torch.device("meta"):
            model = AgeGenderModel(cfg, load_pretrained=False)
    except (NotImplementedError, RuntimeError):
        model = None
    if model is not None and {n for n, _ in [*model.named_parameters(), *model.named_buffers()]} == set(state):
        model.load_state_dict(state, assign=True)
        return model
    model = AgeGenderModel(cfg, load_pretrained=False)
    model.load_state_dict(state)
    return model


def build_network(run: RunRecord | Mapping, root: Path | None = None) -> torch.nn.Module:
    """The network of a single or adapted run, with its weights (an adapted run's checkpoint holds only what
    differs from its parent's: BatchNorm statistics)."""
    from zoo.config import TrainConfig

    run = RunRecord.from_dict(run)
    root = root or runs_dir()
    own = load_state(root / run.id, run.checkpoint_file)
    if run.kind == "single":
        cfg = TrainConfig.from_dict({"name": run.name, **run.config})  # raises on a config this version rejects
        return _network_holding(cfg, own).eval()
    model = build_network(get_run(run.parent, root), root)
    unknown = set(own) - set(model.state_dict())
    if unknown:
        raise ValueError(f"{run.id}: checkpoint tensors its parent does not have: {sorted(unknown)[:5]}")
    model.load_state_dict(own, strict=False)
    return model.eval()


def input_framing(run: RunRecord | Mapping, dataset: str, root: Path | None = None) -> str | None:
    """The framing a model reads `dataset` with (RunRecord.framing)."""
    return RunRecord.from_dict(run).framing(dataset, lambda m: get_run(m, root))


def load(model_id: str, root: Path | None = None, runtime: str = "eager") -> ModesPredictor:
    """A registered model as a predictor. `runtime` (zoo.export.RUNTIMES): what runs its network on the CPU: `eager`
    (the reference), `onnx` (ONNX Runtime on a cached export, exported first if missing), `onnx-cached` (ONNX
    Runtime where the export is already cached, its backbone not built in torch; else eager), `compile`, or `auto`
    (the measured fastest with equal outputs); an ensemble's members each get it. MC-Dropout samples the head
    dropout in torch (zoo.export)."""
    from zoo.export import exported_network, make_runner, resolve_runtime
    from zoo.inference import EnsemblePredictor, NetworkPredictor

    root = root or runs_dir()
    run = get_run(model_id, root)
    if run.kind == "ensemble":
        return EnsemblePredictor([load(m, root, runtime) for m in run.members], model_id, run.to_dict())
    size = run.preprocessing(lambda m: get_run(m, root)).img_size
    name = resolve_runtime(runtime)  # an unknown name fails here, before any network is built
    if name == "onnx-cached":
        found = exported_network(run, root)
        if found is not None:
            return NetworkPredictor(found[0], size, model_id, run.to_dict(), found[1], "onnx")
    model = build_network(run, root)
    return NetworkPredictor(model, size, model_id, run.to_dict(), make_runner(model, model_id, runtime, root), name)


def missing_weights(run: RunRecord | Mapping, by_id: Mapping[str, RunRecord | Mapping],
                    root: Path | None = None) -> str | None:
    """Why a registered run cannot predict (its checkpoint, an ensemble member's or an adapted run's parent's was not
    shipped), or None when it can."""
    root = root or runs_dir()
    run = RunRecord.from_dict(run)
    if run.kind == "ensemble":
        if not run.members:
            return "an ensemble without members"
        for m in run.members:
            why = f"member {m} is not registered" if m not in by_id else missing_weights(by_id[m], by_id, root)
            if why:
                return why if why.startswith("member") else f"member {m}: {why}"
        return None
    if run.kind == "adapted":  # its checkpoint holds BatchNorm statistics; the weights are the parent's
        parent = by_id.get(run.parent)
        why = "is not registered" if parent is None else missing_weights(parent, by_id, root)
        if why:
            return f"parent {run.parent} {why}" if parent is None else f"parent {run.parent}: {why}"
    ck = root / run.id / run.checkpoint_file
    return None if ck.is_file() else f"checkpoint {ck.name} not shipped"


def select_models(spec: str, root: Path | None = None) -> list[str]:
    """Model ids from a selector: `best` (the runnable model with the lowest val MAE), `all` / `zoo` (every
    runnable model), or comma-separated ids (checked to exist)."""
    runs = list_runs(root)
    by_id = {r.id: r for r in runs}
    runnable = [r for r in runs if missing_weights(r, by_id, root) is None]
    spec = (spec or "best").strip()
    if spec == "best":
        scored = [(r.val_mae if r.val_mae is not None else float("nan"), r.id) for r in runnable]
        scored = [s for s in scored if s[0] == s[0]]
        if not scored:
            raise ValueError("no runnable model with a val MAE is registered")
        return [min(scored)[1]]
    if spec in ("all", "zoo"):
        return [r.id for r in runnable]
    from zoo.cliargs import split_list

    ids = split_list(spec)
    for i in ids:
        if not i.startswith("peer:"):
            get_run(i, root)  # KeyError listing the known ids
    return ids


def runs_table(root: Path | None = None) -> pd.DataFrame:
    """One row per registered model: what it is, its cost and its test accuracy."""
    import numpy as np
    import pandas as pd

    rows = []
    runs = list_runs(root)
    by_id = {r.id: r for r in runs}
    for r in runs:
        m = r.to_row(by_id)
        test = r.metrics.get("test") or {}
        nan = lambda v: np.nan if v is None else v  # noqa: E731
        rows.append({"id": m["model_id"], "kind": m["kind"], "name": r.name, "backbone": m["backbone"],
                     "formulation": m["formulation"], "img_size": m["img_size"],
                     "params_M": nan(m["params"]) / 1e6, "MFLOPs": nan(m["flops"]) / 1e6,
                     "img_s": nan(m["infer_img_s"]), "val_mae": r.val_mae,
                     "test_mae": r.test_mae, "gender_acc": test.get("gender_acc"), "commit": r.commit})
    return pd.DataFrame(rows)
