"""Run the registry's models on one face crop (the Compare page). Streamlit-free so the benchmark can time it."""
from __future__ import annotations

import os
import threading
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
    """(runnable models as plain dicts: run.json's content, or a peer's {id, name, kind}; [(id, why not runnable)]):
    a run is runnable when its weights (or, for an ensemble, every member's, for an adapted run its own and its
    parent's) are present; external peers are always listed."""
    from dashboard.data.registry import read_runs
    from zoo.paths import runs_dir
    from zoo.registry import missing_weights

    root = root or runs_dir()
    runs = read_runs(root)
    by_id = {r.id: r for r in runs}
    ok, skipped = [], []
    for r in runs:
        why = missing_weights(r, by_id, root)
        (skipped.append((r.id, why)) if why else ok.append(r.to_dict()))  # plain dicts, as the peers' below
    from zoo.peers import list_peers

    # External peers carry their own weights (inside their package); one that fails to load shows its error.
    ok += [{"id": p, "name": p, "kind": "peer"} for p in list_peers()]
    return ok, skipped


def runtime() -> str:
    """The runtime of the zoo networks (zoo.export.RUNTIMES): `auto` (the measured fastest with equal outputs on
    this CPU) unless DASHBOARD_RUNTIME names another."""
    return os.environ.get("DASHBOARD_RUNTIME", "auto") or "auto"


def load_predictor(model_id: str, root: Path | None = None):
    from zoo.peers import is_peer, load_peer
    from zoo.registry import load

    set_torch_threads()  # before loading: an ONNX Runtime session takes torch's thread count
    return load_peer(model_id) if is_peer(model_id) else load(model_id, root, runtime=runtime())


class ModelPool:
    """Loaded predictors, shared by every session of the app and filled in the background from app start.

    Loading the shipped zoo takes seconds (timm builds each network in Python: ~0.1 s for a MobileNet, ~0.8 s for a
    ResNet-50, plus the first import of timm), far more than predicting one photo with all of it; so `preload` starts
    a daemon thread when the app opens and the first photo finds the models ready. `get` never loads a model twice:
    a page asking for one that the thread is still loading waits for it. Ensembles are built from the pool's own
    members instead of loading each member again."""

    def __init__(self, root: Path | None = None):
        self.root = root
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._loaded: dict[str, object] = {}
        self._thread: threading.Thread | None = None

    def get(self, model_id: str):
        with self._guard:
            lock = self._locks.setdefault(model_id, threading.Lock())
        with lock:
            if model_id not in self._loaded:
                self._loaded[model_id] = self._load(model_id)
            return self._loaded[model_id]

    def _load(self, model_id: str):
        from zoo.peers import is_peer
        from zoo.inference import EnsemblePredictor
        from zoo.registry import get_run

        if not is_peer(model_id):
            run = get_run(model_id, self.root)
            if run.kind == "ensemble":
                return EnsemblePredictor([self.get(m) for m in run.members], model_id, run.to_dict())
        return load_predictor(model_id, self.root)

    def loaded(self) -> int:
        return len(self._loaded)

    def preload(self, model_ids: list[str]) -> threading.Thread:
        """Load `model_ids` in a daemon thread (once per pool) and run each once on a blank crop, so the first real
        photo does not pay for the first forward either; failures are left for `get` to raise on the page."""
        def work() -> None:
            from zoo.faces import FacePipeline

            FacePipeline().detect(np.full((64, 64, 3), 128, np.uint8))  # loads the detector and landmark model
            blank = np.full((64, 64, 3), 128, np.uint8)
            for mid in model_ids:
                try:
                    predict_one(self.get(mid), blank, mc_dropout=2)
                except Exception:  # noqa: BLE001 (the Compare page shows this model's error when it runs it)
                    pass

        with self._guard:
            if self._thread is None:
                self._thread = threading.Thread(target=work, name="model-preload", daemon=True)
                self._thread.start()
        return self._thread


def predict_one(predictor, crop: np.ndarray, mc_dropout: int = 10, tta: str | None = None) -> dict:
    """One model on one canonical crop -> {age, sigma_*, gender_prob, seconds}, resized to the model's input as
    the bench and `zoo predict` do (`zoo.pipeline.predict_crops`)."""
    from zoo.pipeline import predict_crops

    set_torch_threads()
    t0 = time.perf_counter()
    out = predict_crops(predictor, crop[None], mc_dropout=int(mc_dropout), tta=tta)
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
    from zoo.inference import total_sigma

    df["sigma_total"] = total_sigma(df["sigma_aleatoric"], df["sigma_epistemic"])
    return df
