"""Run the registry's models on one face crop (the Compare page). Streamlit-free so the benchmark can time it."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd


def set_torch_threads() -> None:
    """One intra-op thread by default: on the 2-core machines this project targets, a dashboard sharing the CPU with
    a training or bench process is ~40x slower with 2 spinning OpenMP threads than with 1 (measured: resnet18 at
    64 px, 660 ms vs 17 ms per image). DASHBOARD_TORCH_THREADS overrides."""
    import torch

    n = int(os.environ.get("DASHBOARD_TORCH_THREADS", "1") or 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(max(1, n))


def available_models(root: Path | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """(runnable model records, [(id, why not runnable)]): a run is runnable when its weights (or, for an ensemble,
    every member's, for an adapted run its own) are present; external peers are always listed."""
    from dashboard.queries import read_runs
    from zoo.paths import runs_dir

    root = root or runs_dir()
    runs = read_runs(root)
    by_id = {r["id"]: r for r in runs}
    ok, skipped = [], []

    def has_weights(r: dict) -> str | None:
        if r.get("kind") == "ensemble":
            for m in r.get("members", []):
                if m not in by_id:
                    return f"member {m} is not registered"
                why = has_weights(by_id[m])
                if why:
                    return f"member {m}: {why}"
            return None if r.get("members") else "an ensemble without members"
        if r.get("kind") == "adapted" and r.get("parent") not in by_id:
            return f"parent {r.get('parent')} is not registered"
        ck = root / r["id"] / r.get("checkpoint", "best.safetensors")
        return None if ck.is_file() else f"checkpoint {ck.name} not shipped"

    for r in runs:
        why = has_weights(r)
        (skipped.append((r["id"], why)) if why else ok.append(r))
    from bench.peers import list_peers

    # External peers carry their own weights (inside their package); one that fails to load shows its error.
    ok += [{"id": p, "name": p, "kind": "peer"} for p in list_peers()]
    return ok, skipped


def load_predictor(model_id: str, root: Path | None = None):
    from bench.peers import is_peer, load_peer
    from zoo.registry import load

    set_torch_threads()
    return load_peer(model_id) if is_peer(model_id) else load(model_id, root)


def predict_one(predictor, crop: np.ndarray, mc_dropout: int = 10, tta: str | None = None) -> dict:
    """One model on one square RGB uint8 crop -> {age, sigma_*, gender_prob, seconds}. The crop is resized to the
    model's input with `zoo.data.cache.square_resize` (INTER_AREA), the geometry used in training."""
    from zoo.data.cache import square_resize

    set_torch_threads()
    size = int(getattr(predictor, "img_size", crop.shape[0]))
    x = square_resize(crop, size)[None]
    t0 = time.perf_counter()
    out = predictor.predict(x, mc_dropout=int(mc_dropout), tta=tta)
    res = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in out.items()}
    res["seconds"] = time.perf_counter() - t0
    return res


def results_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows of {model_id, label, kind, age, sigma_aleatoric, sigma_epistemic, sigma_tta, gender_prob, seconds,
    error} -> frame with sigma_total = sqrt(aleatoric² + epistemic²) (whichever exist)."""
    cols = ["model_id", "label", "kind", "age", "sigma_aleatoric", "sigma_epistemic", "sigma_tta", "gender_prob",
            "seconds", "error"]
    df = pd.DataFrame(rows).reindex(columns=cols)
    for c in ("age", "sigma_aleatoric", "sigma_epistemic", "sigma_tta", "gender_prob", "seconds"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    a, e = df["sigma_aleatoric"].to_numpy(float), df["sigma_epistemic"].to_numpy(float)
    both = np.sqrt(np.nan_to_num(a) ** 2 + np.nan_to_num(e) ** 2)
    df["sigma_total"] = np.where(np.isnan(a) & np.isnan(e), np.nan, both)
    return df
