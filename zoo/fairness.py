"""Evaluation of one binary attribute (e.g. `blond_or_glasses`) that a fairness-minded user can trust.

A model gives each image a probability p that the attribute is present; a threshold t turns it into a decision
(p >= t means "present"). Against the labels y (1 present, 0 absent) every image lands in one cell of the
confusion table: tp (said present, is present), fp (said present, is absent), tn (said absent, is absent) or
fn (said absent, is present). The metrics below are all read from that table:

- accuracy = (tp + tn) / n: the share of images decided right. Misleading when one class is rare.
- tpr (true-positive rate, = recall) = tp / (tp + fn): of the images that have the attribute, the share found.
- fpr (false-positive rate) = fp / (fp + tn): of the images without it, the share wrongly flagged.
- balanced_accuracy = (tpr + (1 - fpr)) / 2: accuracy as if both classes were equally common.
- precision = tp / (tp + fp): of the images flagged, the share that really have the attribute.
- f1 = 2 tp / (2 tp + fp + fn): the harmonic mean of precision and recall.
- roc_auc: the chance that a random positive image scores above a random negative one (ties count half);
  it ignores the threshold and measures ranking only (0.5 = no information, 1 = perfect).

Fairness across groups (gender, race): the same metrics per group, and for accuracy, tpr and fpr the gap, the
largest minus the smallest group value. A TPR gap of 0 is *equal opportunity* (every group's positives are
found equally often); *equalized odds* asks for both the TPR and the FPR gap to be 0, so its gap is the larger
of the two. Every number comes with a 95 % percentile-bootstrap confidence interval over images, because a
gap of 2 points measured on 300 men says little without one.

Point values use scikit-learn's metrics and Fairlearn's `MetricFrame`; the bootstrap recomputes the same
formulas from resampled confusion counts in a vectorised way (tested equal to scikit-learn). Post-processed
per-group thresholds use Fairlearn's `ThresholdOptimizer`; the likely-mislabelled list uses cleanlab's
confident learning. Labels that are NaN (unknown) and missing probabilities are ignored everywhere.
"""
from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Sequence
from functools import partial

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "tpr", "fpr",
           "n", "positives", "tp", "fp", "tn", "fn")
COUNTS = ("n", "positives", "tp", "fp", "tn", "fn")
GAP_METRICS = ("accuracy", "tpr", "fpr")
CONSTRAINTS = ("equalized_odds", "true_positive_rate_parity", "demographic_parity")
_CHUNK = 250  # bootstrap resamples per batch: bounds memory at chunk x n floats


def _valid(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, probabilities, kept mask) with rows lacking a label or a probability dropped."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if y.ndim != 1 or p.ndim != 1:
        raise ValueError(f"labels and probabilities must be 1-D arrays, got shapes {y.shape} and {p.shape}")
    if len(y) != len(p):
        raise ValueError(f"labels and probabilities differ in length ({len(y)} vs {len(p)})")
    bad = ~np.isnan(y) & (y != 0) & (y != 1)
    if bad.any():
        raise ValueError(f"labels must be 0, 1 or NaN; found {np.unique(y[bad])[:5].tolist()}")
    keep = ~np.isnan(y) & ~np.isnan(p)
    return y[keep], p[keep], keep


def choose_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The decision threshold that maximises accuracy on these (validation) images.

    Tried: 0.5 and every point halfway between two consecutive distinct scores (plus just below the lowest and
    just above the highest score). Several thresholds can give the same accuracy; the one nearest 0.5 wins, so a
    well-calibrated model keeps its natural threshold unless moving it really helps. Choose it on val, then
    report test metrics at that fixed threshold (choosing on test would flatter the model)."""
    y, p, _ = _valid(y, p)
    if not len(y):
        raise ValueError("no labelled images with a probability to choose a threshold on")
    u = np.unique(p)
    cands = np.r_[0.5, u[0], (u[:-1] + u[1:]) / 2, np.nextafter(u[-1], np.inf)]
    order = np.argsort(p, kind="stable")
    ps, ys = p[order], y[order]
    pos_below = np.r_[0.0, np.cumsum(ys)]  # positives among the k lowest scores
    below = np.searchsorted(ps, cands, side="left")  # images with p < t, predicted absent
    correct = (ys.sum() - pos_below[below]) + (below - pos_below[below])
    best = np.lexsort((cands, np.abs(cands - 0.5), -correct))[0]
    return float(cands[best])


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """Accuracy, balanced accuracy, precision, recall, F1, ROC AUC, TPR, FPR and the confusion counts
    (tp, fp, tn, fn, n, positives) of one set of images, deciding "present" where p >= threshold.

    A rate whose denominator is empty is NaN: precision with nothing flagged, recall/TPR without positives,
    FPR without negatives; balanced accuracy and ROC AUC are NaN unless both classes are present."""
    y, p, _ = _valid(y, p)
    return _point(y, p, threshold)


def _point(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                                 precision_score, recall_score, roc_auc_score)

    nan = float("nan")
    n = len(y)
    if not n:
        return {**dict.fromkeys(METRICS, nan), **dict.fromkeys(COUNTS, 0)}
    t, hat = y.astype(int), (p >= threshold).astype(int)
    tn, fp, fn, tp = (int(c) for c in confusion_matrix(t, hat, labels=[0, 1]).ravel())
    both = tp + fn > 0 and tn + fp > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        recall = float(recall_score(t, hat, zero_division=np.nan))
        return {
            "accuracy": float(accuracy_score(t, hat)),
            "balanced_accuracy": float(balanced_accuracy_score(t, hat)) if both else nan,
            "precision": float(precision_score(t, hat, zero_division=np.nan)),
            "recall": recall,
            "f1": float(f1_score(t, hat, zero_division=np.nan)),
            "roc_auc": float(roc_auc_score(t, p)) if both else nan,
            "tpr": recall,
            "fpr": fp / (fp + tn) if fp + tn else nan,
            "n": n, "positives": tp + fn, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        }


def _from_counts(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """The metrics of `_point` from (weighted) confusion counts, one value per bootstrap resample."""
    with np.errstate(invalid="ignore", divide="ignore"):
        n, pos, neg = tp + fp + tn + fn, tp + fn, fp + tn
        tpr, fpr = tp / pos, fp / neg
        return {"accuracy": (tp + tn) / n, "balanced_accuracy": (tpr + 1 - fpr) / 2, "precision": tp / (tp + fp),
                "recall": tpr, "f1": 2 * tp / (2 * tp + fp + fn), "tpr": tpr, "fpr": fpr,
                "n": n, "positives": pos, "tp": tp, "fp": fp, "tn": tn, "fn": fn}


class _AucSlice:
    """ROC AUC of one slice of images under bootstrap weights, without re-sorting per resample: images are
    sorted by score once and tied scores pooled, so each resample only needs weighted sums."""

    def __init__(self, rows: np.ndarray, y: np.ndarray, p: np.ndarray):
        order = np.argsort(p[rows], kind="stable")
        self.cols = rows[order]
        ps = p[self.cols]
        self.starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
        self.pos = y[self.cols] == 1

    def __call__(self, w: np.ndarray) -> np.ndarray:
        if not len(self.cols):
            return np.full(len(w), np.nan)
        ws = w[:, self.cols]
        npos = np.add.reduceat(np.where(self.pos, ws, 0.0), self.starts, axis=1)
        nneg = np.add.reduceat(np.where(self.pos, 0.0, ws), self.starts, axis=1)
        lower = np.cumsum(nneg, axis=1) - nneg  # negatives scoring strictly below each distinct score
        with np.errstate(invalid="ignore", divide="ignore"):
            return (npos * (lower + 0.5 * nneg)).sum(1) / (npos.sum(1) * nneg.sum(1))


def _ci(value: float, draws: np.ndarray, level: float = 0.95) -> dict:
    draws = draws[~np.isnan(draws)]
    a = (1 - level) / 2
    lo, hi = (float(np.quantile(draws, a)), float(np.quantile(draws, 1 - a))) if draws.size else (np.nan, np.nan)
    return {"value": value, "lo": lo, "hi": hi}


def _group_key(v: object) -> object:
    return v.item() if isinstance(v, np.generic) else v


def attribute_report(y: np.ndarray, p: np.ndarray, threshold: float,
                     groups: dict[str, np.ndarray] | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Every metric of `binary_metrics`, overall and per group, plus the group gaps, each with a 95 % CI.

    Returns {"overall": {metric: {"value", "lo", "hi"}},
             "by_group": {column: {group value: {metric: {"value", "lo", "hi"}}}},
             "gaps": {column: {"accuracy"|"tpr"|"fpr"|"equalized_odds": {"value", "lo", "hi"}}},
             "threshold": threshold}.
    `groups` maps a column name (e.g. "gender") to one group value per image; images whose group is missing
    (None/NaN) count overall but in no group. A gap is the largest minus the smallest group value (groups where
    the metric is undefined are skipped); "equalized_odds" is the larger of the TPR and FPR gaps.

    The CIs are percentile bootstrap intervals: images are drawn with replacement `n_boot` times (seeded, so a
    report is reproducible), every number is recomputed on each draw, and the middle 95 % of the draws is the
    interval. Groups are resampled jointly with the whole set, so a gap's CI reflects both groups' noise. Draws
    where a metric is undefined (e.g. no positives drawn) are left out of its interval. A gap is never negative,
    so when the true gap is near 0 its interval sits a little above 0: read "lo near 0" as "no clear gap"."""
    from fairlearn.metrics import MetricFrame

    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n_all = len(np.asarray(y))
    y, p, keep = _valid(y, p)
    n = len(y)
    cols: dict[str, tuple[list, np.ndarray]] = {}  # column -> (group values, code per image; -1 = unknown)
    for col, g in (groups or {}).items():
        g = pd.Series(np.asarray(g, dtype=object))
        if len(g) != n_all:
            raise ValueError(f"group column {col!r} has {len(g)} values for {n_all} images")
        g = g[keep].reset_index(drop=True)
        known = ~g.isna().to_numpy()
        values = sorted(pd.unique(g[known]), key=lambda v: (str(type(v)), v))
        code = np.full(n, -1)
        code[known] = pd.Index(values).get_indexer(g[known])
        cols[col] = (values, code)

    report: dict = {"overall": {}, "by_group": {}, "gaps": {}, "threshold": float(threshold)}
    point = _point(y, p, threshold)
    group_points: dict[str, pd.DataFrame] = {}
    for col, (values, code) in cols.items():
        known = code >= 0
        if not known.any():
            group_points[col] = pd.DataFrame(columns=list(METRICS))
            continue
        # One metric returning all of `binary_metrics` (not one per metric): MetricFrame's per-call overhead
        # grows with the number of images, and 14 calls per group would cost more than the whole bootstrap.
        mf = MetricFrame(metrics={"all": partial(_point, threshold=threshold)}, y_true=y[known], y_pred=p[known],
                         sensitive_features=pd.Series(code[known], name=col))
        group_points[col] = pd.DataFrame(mf.by_group["all"].tolist(), index=mf.by_group.index)

    # One matrix product per chunk gives every slice's confusion counts: columns are (slice, cell).
    cell = np.select([(y == 1) & (p >= threshold), (y == 0) & (p >= threshold), y == 0], [0, 1, 2], 3)
    slices: list[tuple[tuple, np.ndarray]] = [(("overall",), np.arange(n))]
    for col, (values, code) in cols.items():
        slices += [((col, i), np.flatnonzero(code == i)) for i in range(len(values))]
    onehot = np.zeros((n, 4 * len(slices)))
    for s, (_, rows) in enumerate(slices):
        onehot[rows, 4 * s + cell[rows]] = 1.0
    aucs = [_AucSlice(rows, y, p) for _, rows in slices]

    rng = np.random.default_rng(seed)
    draws: dict[tuple, list[np.ndarray]] = {}
    for start in range(0, n_boot, _CHUNK):
        b = min(_CHUNK, n_boot - start)
        if n:
            idx = rng.integers(0, n, (b, n)) + n * np.arange(b)[:, None]
            w = np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(float)
        else:
            w = np.zeros((b, 0))
        counts = w @ onehot
        per_slice = {}
        for s, (key, _) in enumerate(slices):
            c = counts[:, 4 * s:4 * s + 4]
            per_slice[key] = {**_from_counts(c[:, 0], c[:, 1], c[:, 2], c[:, 3]), "roc_auc": aucs[s](w)}
            for m, v in per_slice[key].items():
                draws.setdefault((*key, m), []).append(v)
        for col, (values, _) in cols.items():
            for m in GAP_METRICS:
                stack = np.stack([per_slice[(col, i)][m] for i in range(len(values))], 1) if values \
                    else np.full((b, 1), np.nan)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all groups undefined: the gap is NaN
                    draws.setdefault((col, "gap", m), []).append(np.nanmax(stack, 1) - np.nanmin(stack, 1))
            draws.setdefault((col, "gap", "equalized_odds"), []).append(
                np.fmax(draws[(col, "gap", "tpr")][-1], draws[(col, "gap", "fpr")][-1]))
    d = {k: np.concatenate(v) for k, v in draws.items()}

    report["overall"] = {m: _ci(point[m], d[("overall", m)]) for m in METRICS}
    for col, (values, _) in cols.items():
        bg = group_points[col]
        report["by_group"][col] = {
            _group_key(v): {m: _ci(_as_value(m, bg.loc[i, m]), d[(col, i, m)]) for m in METRICS}
            for i, v in enumerate(values)}
        gaps = {m: float(bg[m].max() - bg[m].min()) if bg[m].notna().any() else float("nan") for m in GAP_METRICS}
        gaps["equalized_odds"] = float(np.fmax(gaps["tpr"], gaps["fpr"]))
        report["gaps"][col] = {m: _ci(v, d[(col, "gap", m)]) for m, v in gaps.items()}
    return report


def _as_value(metric: str, v: object) -> float | int:
    return int(v) if metric in COUNTS else float(v)


class _Scores(BaseEstimator):
    """A stand-in 'estimator' whose prediction is the score it is given: ThresholdOptimizer post-processes
    scores that already exist (prefit), so X is just the probabilities as one column."""

    def __init__(self) -> None:
        self.fitted_ = True  # what sklearn's check_is_fitted looks for, so prefit=True does not warn

    def fit(self, X: np.ndarray, y: np.ndarray) -> _Scores:
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, float)[:, 0]


class GroupThresholds:
    """Per-group decision rules fitted on val by Fairlearn's ThresholdOptimizer, applied to new scores.

    ThresholdOptimizer picks for each group a threshold (possibly a random mix of two, which is how it can hit
    a parity target exactly) that maximises accuracy subject to the constraint. The randomness is seeded, so
    the same scores always get the same decisions."""

    def __init__(self, optimizer: object, constraint: str, groups: list, seed: int = 0):
        self.optimizer, self.constraint, self.groups, self.seed = optimizer, constraint, groups, seed

    def predict(self, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        """0/1 decisions for scores `p` of images in groups `g`."""
        p = np.asarray(p, dtype=float)
        g = pd.Series(np.asarray(g, dtype=object))
        if p.ndim != 1 or len(p) != len(g):
            raise ValueError(f"scores and groups must be 1-D of one length, got {p.shape} and {len(g)}")
        if np.isnan(p).any():
            raise ValueError(f"{int(np.isnan(p).sum())} scores are NaN; group thresholds need a score per image")
        unseen = sorted({str(v) for v in g[~g.isin(self.groups)]})
        if unseen:
            raise ValueError(f"group(s) {', '.join(unseen)} not seen on val (known: "
                             f"{', '.join(map(str, self.groups))}); cannot pick their threshold")
        if not len(p):
            return np.zeros(0, dtype=int)
        out = self.optimizer.predict(p[:, None], sensitive_features=g.to_numpy(), random_state=self.seed)
        return np.asarray(out, dtype=int)

    def describe(self) -> dict:
        """{group: its rule in words}, e.g. 'p > 0.620' or '30% p > 0.410, 70% p > 0.580' (a random mix)."""
        def op(o: object) -> str:
            return f"p {o.operator} {o.threshold:.3f}"

        out = {}
        for grp, it in self.optimizer.interpolated_thresholder_.interpolation_dict.items():
            rule = op(it.operation0) if it.p1 == 0 else f"{it.p0:.0%} {op(it.operation0)}, {it.p1:.0%} {op(it.operation1)}"
            if it.get("p_ignore", 0) > 0:
                rule += f"; {it.p_ignore:.0%} of images instead positive w.p. {it.prediction_constant:.2f}"
            out[_group_key(grp)] = rule
        return out


def group_thresholds(y_val: np.ndarray, p_val: np.ndarray, g_val: np.ndarray,
                     constraint: str = "equalized_odds") -> GroupThresholds:
    """Fit per-group thresholds on validation scores that trade a little accuracy for a fairness constraint.

    - "equalized_odds": equal TPR and FPR across groups;
    - "true_positive_rate_parity": equal TPR (equal opportunity);
    - "demographic_parity": equal share flagged in every group.
    Images without a label or score are left out of the fit; every image needs a group."""
    from fairlearn.postprocessing import ThresholdOptimizer

    if constraint not in CONSTRAINTS:
        raise ValueError(f"unknown fairness constraint {constraint!r}; known: {', '.join(CONSTRAINTS)}")
    g = pd.Series(np.asarray(g_val, dtype=object))
    if len(g) != len(np.asarray(y_val)):
        raise ValueError(f"groups and labels differ in length ({len(g)} vs {len(np.asarray(y_val))})")
    y, p, keep = _valid(y_val, p_val)
    g = g[keep].reset_index(drop=True)
    if g.isna().any():
        raise ValueError(f"{int(g.isna().sum())} val images have no group; drop them or give them one")
    if not len(y):
        raise ValueError("no labelled val images to fit group thresholds on")
    values = sorted(pd.unique(g), key=lambda v: (str(type(v)), v))
    for v in values:
        if len(np.unique(y[(g == v).to_numpy()])) < 2:
            raise ValueError(f"group {v} has only one label on val; its thresholds cannot be fitted")
    opt = ThresholdOptimizer(estimator=_Scores(), constraints=constraint, objective="accuracy_score",
                             prefit=True, predict_method="predict")
    opt.fit(p[:, None], y.astype(int), sensitive_features=g.to_numpy())
    return GroupThresholds(opt, constraint, values)


def likely_mislabelled(y: np.ndarray, p_oos: np.ndarray, top: int | None = None) -> np.ndarray:
    """Indices of images whose label is probably wrong, most suspicious first (cleanlab's confident learning).

    `p_oos` must be out-of-sample probabilities (from a model that never trained on the image, e.g. cross-fitted
    or val/test), or the model will have memorised the wrong labels. Confident learning estimates how often each
    class is mislabelled as the other, flags that many images whose given label the model most confidently
    disputes, and ranks them by self-confidence (the probability given to the label they carry). Only flagged
    images are returned (possibly none); `top` keeps the first `top`. Indices refer to the input arrays."""
    from cleanlab.filter import find_label_issues

    if top is not None and top < 0:
        raise ValueError(f"top must be >= 0, got {top}")
    y, p, keep = _valid(y, p_oos)
    if ((p < 0) | (p > 1)).any():
        raise ValueError("p_oos must be probabilities in [0, 1]")
    if len(np.unique(y)) < 2:
        raise ValueError("likely_mislabelled needs images of both labels")
    ranked = find_label_issues(y.astype(int), np.column_stack([1 - p, p]),
                               return_indices_ranked_by="self_confidence", n_jobs=1)
    out = np.flatnonzero(keep)[np.asarray(ranked, dtype=int)]
    return out if top is None else out[:top]


def labels_csv(filenames: Sequence[str], y_pred: np.ndarray) -> str:
    """Test-set labels in the soft-biometric seed's format: a `filename,label` header, then one line per image
    with label 1 (attribute present) or -1 (absent). `y_pred` holds 0/1 (or bool) decisions, not probabilities."""
    y = np.asarray(y_pred)
    if y.ndim != 1:
        raise ValueError(f"predictions must be a 1-D array, got shape {y.shape}")
    if len(filenames) != len(y):
        raise ValueError(f"{len(filenames)} filenames but {len(y)} predictions")
    if y.dtype.kind in "fc" and np.isnan(y).any():
        raise ValueError(f"{int(np.isnan(y).sum())} predictions are NaN; every exported image needs a label")
    if y.dtype != bool and not np.isin(y, (0, 1)).all():
        raise ValueError(f"predictions must be 0/1 decisions, found {np.unique(y[~np.isin(y, (0, 1))])[:5].tolist()}")
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["filename", "label"])
    out.writerows((str(f), 1 if v else -1) for f, v in zip(filenames, y.tolist()))
    return buf.getvalue()
