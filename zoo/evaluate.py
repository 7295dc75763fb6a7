"""Evaluate any predictor (single, ensemble, adapted) on a dataset split with the core metrics, and its attribute heads
(zoo.attributes) with decision thresholds chosen on val (run.json `metrics["attributes"]`)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from zoo.attributes import attribute_matrix, predictor_attributes, predictor_targets
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
    every TTA mode (one pass over the widest mode's views); for a model with attribute outputs, `attributes` (their
    thresholds chosen on this dataset's val split, `attribute_report`)."""
    val, *val_labels = split_predictions(predictor, dataset, (None,), "val")
    test, *test_labels = split_predictions(predictor, dataset, (None, *TTA_KEYS), progress=progress)
    out = {"val": all_metrics(val[None], *val_labels),
           **by_record_key({m: all_metrics(p, *test_labels) for m, p in test.items()})}
    names = predictor_attributes(predictor)
    if names:
        targets = predictor_targets(predictor)
        out["attributes"] = attribute_report(names, split_attribute_labels(dataset, "val", names, targets), val[None],
                                             split_attribute_labels(dataset, "test", names, targets), test[None])
    return out


def split_attribute_labels(dataset: str, split: str, names: Sequence[str],
                           targets: Mapping[str, str] | None = None) -> np.ndarray:
    """float [N, K] labels of attributes / targets `names` on one split (row order of split_predictions); NaN where
    unknown, and for a name the dataset does not have at all."""
    f = load_manifest(dataset).frame
    f = f[f["split"].to_numpy() == split]
    out = np.full((len(f), len(names)), np.nan)
    for k, name in enumerate(names):
        try:
            out[:, k] = attribute_matrix([f], [name], targets)[0][:, 0]
        except ValueError:  # not an attribute of this dataset: unknown
            pass
    return out


def _plain(d: Mapping) -> dict:
    """numpy scalars -> Python numbers (run.json is JSON)."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in d.items()}


def attribute_scores(names: Sequence[str], labels: np.ndarray, pred: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per attribute head, at threshold 0.5 where `labels` (float [N, K], NaN unknown) are known: `attr:NAME:bacc`
    (balanced accuracy) and `attr:NAME:auc`; `attr_bacc`, their mean (the val score of attribute-only models;
    an attribute whose rows hold one class only, where balanced accuracy is undefined, counts its accuracy), and
    `attr_auc`, the mean of the defined AUCs (`select: attr_auc`)."""
    from zoo.fairness import binary_metrics

    out, baccs = {}, []
    for k, name in enumerate(names):
        y, p = labels[:, k], pred[f"attr:{name}"]
        known = np.isfinite(y) & np.isfinite(p)
        if not known.any():
            continue
        m = binary_metrics(y[known], p[known], 0.5)
        out[f"attr:{name}:bacc"], out[f"attr:{name}:auc"] = float(m["balanced_accuracy"]), float(m["roc_auc"])
        baccs.append(float(m["balanced_accuracy"]) if np.isfinite(m["balanced_accuracy"]) else float(m["accuracy"]))
    if baccs:
        out["attr_bacc"] = float(np.mean(baccs))
    aucs = [v for k, v in out.items() if k.endswith(":auc") and np.isfinite(v)]
    if aucs:
        out["attr_auc"] = float(np.mean(aucs))
    return out


def attribute_report(names: Sequence[str], val_labels: np.ndarray, val_pred: Mapping[str, np.ndarray],
                     test_labels: np.ndarray, test_pred: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """{name: {"threshold", "val", "test"}} for attribute heads: the decision threshold chosen on val (max accuracy,
    zoo.fairness.choose_threshold; 0.5 when val has no labels for it) and zoo.fairness.binary_metrics at that
    threshold on val and test, over the rows whose label is known. Labels: float [N, K] in `names` order; predictions:
    `attr:NAME` probabilities [N]."""
    from zoo.fairness import binary_metrics, choose_threshold

    out = {}
    for k, name in enumerate(names):
        parts = {}
        for split, labels, pred in (("val", val_labels, val_pred), ("test", test_labels, test_pred)):
            y, p = labels[:, k], np.asarray(pred[f"attr:{name}"], float)
            known = np.isfinite(y) & np.isfinite(p)
            parts[split] = (y[known].astype(int), p[known])
        yv, pv = parts["val"]
        threshold = float(choose_threshold(yv, pv)) if len(yv) else 0.5
        out[name] = {"threshold": threshold,
                     **{split: _plain(binary_metrics(y, p, threshold)) if len(y) else {"n": 0}
                        for split, (y, p) in parts.items()}}
    return out


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
