"""Evaluate any predictor (single, ensemble, adapted) on a dataset split with the core metrics."""
from __future__ import annotations

import numpy as np

from zoo.data.cache import load_images
from zoo.data.manifest import load_manifest
from zoo.metrics import all_metrics


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
