"""Evaluate any predictor (single, ensemble, adapted) on a dataset split with the core metrics."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from zoo.data.cache import load_images
from zoo.data.manifest import extras_label, load_manifest
from zoo.metrics import all_metrics
from zoo.predictor import ModesPredictor

# run.json keys of the test metrics under each test-time augmentation mode (zoo.inference.TTA_MODES)
TTA_KEYS = {"flip": "test_tta", "flip+crop": "test_tta_crop"}


def split_predictions(predictor: ModesPredictor, dataset: str, modes: tuple[str | None, ...] = (None,),
                      split: str = "test", progress: bool = False,
                      ) -> tuple[dict[str | None, dict], np.ndarray, np.ndarray, np.ndarray]:
    """({TTA mode (None = off): predictions}, true age, true gender, Young label) on one split; the modes share
    their views. Images are framed as the model was trained to read this dataset."""
    from zoo.registry import input_framing

    m = load_manifest(dataset)
    idx = np.flatnonzero(m.frame["split"].to_numpy() == split)
    framing = input_framing(getattr(predictor, "info", None) or {}, dataset)
    images = load_images(m, predictor.img_size, in_memory=False, progress=progress, framing=framing)[idx]
    f = m.frame.iloc[idx]
    age, gender = f["age"].to_numpy(float), f["gender"].astype("float").to_numpy()
    return predictor.predict_modes(images, modes), age, gender, extras_label(f, "Young")


def split_metrics(predictor: ModesPredictor, dataset: str, modes: tuple[str | None, ...] = (None,),
                  split: str = "test", progress: bool = False) -> dict[str | None, dict]:
    """{TTA mode: metrics on one split}."""
    preds, age, gender, young = split_predictions(predictor, dataset, modes, split, progress)
    return {mode: all_metrics(pred, age, gender, young) for mode, pred in preds.items()}


def by_record_key(by_mode: dict[str | None, dict]) -> dict[str, dict]:
    """{TTA mode (None = off): test metrics} -> their run.json keys ("test", "test_tta", "test_tta_crop")."""
    return {"test" if m is None else TTA_KEYS[m]: r for m, r in by_mode.items()}


def tta_metrics(predictor: ModesPredictor, dataset: str, modes: Iterable[str] = TTA_KEYS) -> dict[str, dict]:
    """{run.json key: test metrics} under each TTA mode."""
    return by_record_key(split_metrics(predictor, dataset, tuple(modes)))


def registry_metrics(predictor: ModesPredictor, dataset: str, progress: bool = False) -> dict[str, dict]:
    """run.json's metrics of a model evaluated after training (ensembles, AdaBN): val, and test plain and under
    every TTA mode (one pass over the widest mode's views)."""
    return {"val": split_metrics(predictor, dataset, (None,), "val")[None],
            **by_record_key(split_metrics(predictor, dataset, (None, *TTA_KEYS), progress=progress))}


def add_tta_metrics(run_id: str, root: Path | None = None) -> dict:
    """Fill in the test metrics of every TTA mode missing from a registered model's run.json (records made before
    a mode existed); rewrites the record atomically and returns it."""
    from zoo.paths import runs_dir
    from zoo.registry import get_run, load, write_run

    root = root or runs_dir()
    record = get_run(run_id, root).to_dict()  # a copy to fill in and rewrite
    missing = [mode for mode, key in TTA_KEYS.items() if key not in record.get("metrics", {})]
    if missing:
        record["metrics"].update(tta_metrics(load(run_id, root), record["data"]["dataset"], missing))
        write_run(record, root)
    return record
