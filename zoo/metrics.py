"""Core accuracy metrics for age regression and gender classification (NaN labels are ignored).

Group slices, confidence intervals, fairness gaps and calibration build on these in `bench.metrics`.
"""
from __future__ import annotations

import numpy as np


def age_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    m = ~np.isnan(true) & ~np.isnan(pred)
    err = np.abs(pred[m] - true[m])
    if not len(err):
        return {"mae": float("nan"), "rmse": float("nan"), "cs5": float("nan"), "acc10": float("nan"), "n": 0}
    return {"mae": float(err.mean()), "rmse": float(np.sqrt((err**2).mean())),
            "cs5": float((err <= 5).mean()), "acc10": float((err <= 10).mean()), "n": int(len(err))}


def binary_auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC by the rank statistic (ties get average ranks)."""
    from scipy.stats import rankdata

    pos, neg = label == 1, label == 0
    if not pos.any() or not neg.any():
        return float("nan")
    r = rankdata(score)
    return float((r[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * neg.sum()))


def gender_metrics(prob_female: np.ndarray, true: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    m = ~np.isnan(true) & ~np.isnan(prob_female)
    p, t = prob_female[m], true[m].astype(int)
    if not len(t):
        return {"gender_acc": float("nan"), "gender_f1": float("nan"), "gender_auc": float("nan"), "n_gender": 0}
    hat = (p >= threshold).astype(int)
    tp, fp, fn = int(((hat == 1) & (t == 1)).sum()), int(((hat == 1) & (t == 0)).sum()), int(((hat == 0) & (t == 1)).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {"gender_acc": float((hat == t).mean()), "gender_f1": float(f1), "gender_auc": binary_auc(p, t),
            "n_gender": int(len(t))}


def young_auc(age_pred: np.ndarray, young: np.ndarray) -> float:
    """For sets without ages but with a `Young` label (CelebA-HQ): how well the predicted age ranks young above
    not young (ROC AUC of -age; 0.5 = no information)."""
    m = ~np.isnan(age_pred) & ~np.isnan(young)
    return binary_auc(-age_pred[m], young[m].astype(int))


def all_metrics(pred: dict[str, np.ndarray], age: np.ndarray, gender: np.ndarray,
                young: np.ndarray | None = None) -> dict[str, float]:
    out: dict[str, float] = {}
    if "age" in pred:
        out.update(age_metrics(pred["age"], age))
    if "age" in pred and young is not None and np.isfinite(young).any():
        out["young_auc"] = young_auc(pred["age"], young)
    if "gender_prob" in pred:
        out.update(gender_metrics(pred["gender_prob"], gender))
    return out


def total_sigma(aleatoric, epistemic) -> np.ndarray:
    """sqrt(aleatoric² + epistemic²) of whichever exist; NaN where neither does."""
    a, e = np.asarray(aleatoric, float), np.asarray(epistemic, float)
    both = np.sqrt(np.nan_to_num(a) ** 2 + np.nan_to_num(e) ** 2)
    return np.where(np.isnan(a) & np.isnan(e), np.nan, both)
