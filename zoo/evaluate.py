"""Evaluate any predictor (single, ensemble, adapted) on a dataset split with the core metrics."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from zoo.data.cache import load_images
from zoo.data.manifest import load_manifest
from zoo.metrics import all_metrics

# run.json keys of the test metrics under each test-time augmentation mode (zoo.inference.TTA_MODES)
TTA_KEYS = {"flip": "test_tta", "flip+crop": "test_tta_crop"}


def predict_splits(predictor, dataset: str, splits: tuple[str, ...] = ("val", "test"), tta: str | None = None,
                   progress: bool = False) -> dict[str, tuple[dict, np.ndarray, np.ndarray]]:
    """{split: (predictions, true age, true gender)} for each split of a dataset."""
    m = load_manifest(dataset)
    images = load_images(m, predictor.img_size, progress=progress)
    age = m.frame["age"].to_numpy(float)
    gender = m.frame["gender"].astype("float").to_numpy()
    out = {}
    for split in splits:
        idx = np.flatnonzero(m.frame["split"].to_numpy() == split)
        out[split] = (predictor.predict(images[idx], tta=tta), age[idx], gender[idx])
    return out


def evaluate(predictor, dataset: str, splits: tuple[str, ...] = ("val", "test"), tta: str | None = None,
             progress: bool = False) -> dict[str, dict]:
    results = predict_splits(predictor, dataset, splits, tta, progress)
    return {split: all_metrics(*res) for split, res in results.items()}


def tta_metrics(predictor, dataset: str, modes: Iterable[str] = TTA_KEYS) -> dict[str, dict]:
    """{run.json key: test metrics} under each TTA mode."""
    return {TTA_KEYS[m]: evaluate(predictor, dataset, ("test",), tta=m)["test"] for m in modes}


def add_tta_metrics(run_id: str, root: Path | None = None) -> dict:
    """Fill in the test metrics of every TTA mode missing from a registered model's run.json (records made before
    a mode existed); rewrites the record atomically and returns it."""
    from zoo.paths import runs_dir
    from zoo.registry import get_run, load, write_run

    root = root or runs_dir()
    record = get_run(run_id, root)
    missing = [mode for mode, key in TTA_KEYS.items() if key not in record.get("metrics", {})]
    if missing:
        record["metrics"].update(tta_metrics(load(run_id, root), record["data"]["dataset"], missing))
        write_run(record, root)
    return record
