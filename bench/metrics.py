"""The metrics layer of the benchmark (used by `python -m bench report` and the dashboard): pure functions on numpy
arrays and pandas frames, built on the core metrics in `zoo.metrics`.

    accuracy      MAE, RMSE, CS@5, ±10-year accuracy; gender accuracy / precision / recall / F1 / AUC / confusion
    groups        the same per slice (age group, gender, race, lighting and blur quantiles, dataset, perturbation),
                  each with percentile-bootstrap 95 % CIs (vectorised, seeded)
    fairness      max−min group MAE, gender-accuracy gap, equalized-odds difference
    uncertainty   Gaussian interval coverage, regression calibration error, Gaussian NLL, risk–coverage curve and
                  sparsification AUC

Frames follow the DB's column names: `age_pred`, `gender_prob` (predictions) and `age`, `gender` (labels); `gender`
1 = female is the positive class.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from zoo.data.manifest import AGE_GROUPS
from zoo.metrics import age_metrics, gender_metrics

AGE_GROUP_NAMES = [g[2] for g in AGE_GROUPS]
AGE_METRICS = ("mae", "rmse", "cs5", "acc10")
GENDER_METRICS = ("gender_acc", "gender_precision", "gender_recall", "gender_f1", "gender_auc")
COVERAGE_LEVELS = (0.5, 0.9, 0.95)


# ---------------------------------------------------------------------------------------------------------------
# Point metrics
# ---------------------------------------------------------------------------------------------------------------

def age_accuracy(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, CS@5 (share within 5 years), ±10-year accuracy and n (NaN rows ignored)."""
    return age_metrics(np.asarray(pred, float), np.asarray(true, float))


def confusion(prob: np.ndarray, true: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """2x2 counts [[TN, FP], [FN, TP]] with female (1) positive; NaN rows ignored."""
    prob, true = np.asarray(prob, float), np.asarray(true, float)
    m = ~np.isnan(prob) & ~np.isnan(true)
    hat, t = (prob[m] >= threshold).astype(int), true[m].astype(int)
    return np.array([[np.sum((t == 0) & (hat == 0)), np.sum((t == 0) & (hat == 1))],
                     [np.sum((t == 1) & (hat == 0)), np.sum((t == 1) & (hat == 1))]])


def _div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def gender_accuracy(prob: np.ndarray, true: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (female positive), ROC AUC and n_gender."""
    prob, true = np.asarray(prob, float), np.asarray(true, float)
    core = gender_metrics(prob, true, threshold)
    (tn, fp), (fn, tp) = confusion(prob, true, threshold)
    return {"gender_acc": core["gender_acc"], "gender_precision": _div(tp, tp + fp),
            "gender_recall": _div(tp, tp + fn), "gender_f1": core["gender_f1"], "gender_auc": core["gender_auc"],
            "n_gender": core["n_gender"]}


def point_metrics(df: pd.DataFrame) -> dict[str, float]:
    """Every accuracy metric of one slice of a predictions ⋈ images frame."""
    out = age_accuracy(df["age_pred"].to_numpy(float), df["age"].to_numpy(float))
    if "gender_prob" in df and "gender" in df:
        out.update(gender_accuracy(df["gender_prob"].to_numpy(float), df["gender"].to_numpy(float)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap confidence intervals (vectorised over resamples)
# ---------------------------------------------------------------------------------------------------------------

def _resample_stats(err: np.ndarray, hit: np.ndarray, prob: np.ndarray, label: np.ndarray,
                    idx: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of every resample at once; idx [B, n] are row indices into the (NaN-free) inputs."""
    out: dict[str, np.ndarray] = {}
    if err.size:
        e = err[idx]
        out["mae"] = e.mean(1)
        out["rmse"] = np.sqrt((e ** 2).mean(1))
        out["cs5"] = (e <= 5).mean(1)
        out["acc10"] = (e <= 10).mean(1)
    if hit.size:
        h, t, p = hit[idx], label[idx], prob[idx]
        tp = (h & (t == 1)).sum(1)
        fp = ((p >= 0.5) & (t == 0)).sum(1)
        fn = ((p < 0.5) & (t == 1)).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["gender_acc"] = h.mean(1)
            out["gender_precision"] = tp / (tp + fp)
            out["gender_recall"] = tp / (tp + fn)
            out["gender_f1"] = 2 * tp / (2 * tp + fp + fn)
            pos = (t == 1).sum(1)
            neg = t.shape[1] - pos
            r = rankdata(p, axis=1)  # average ranks for ties, per resample
            out["gender_auc"] = (np.where(t == 1, r, 0).sum(1) - pos * (pos + 1) / 2) / (pos * neg)
    return out


def bootstrap_ci(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 chunk: int = 250) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs of every accuracy metric of one slice: {metric: (lo, hi)}.

    Age and gender are resampled with their own valid rows (a model without a gender head has no gender CI).
    Seeded, so the same slice always gets the same interval; resamples run `chunk` at a time to bound memory."""
    pred, true = df["age_pred"].to_numpy(float), df["age"].to_numpy(float)
    ok = ~np.isnan(pred) & ~np.isnan(true)
    err = np.abs(pred - true)[ok]
    if "gender_prob" in df and "gender" in df:
        prob, lab = df["gender_prob"].to_numpy(float), df["gender"].to_numpy(float)
        okg = ~np.isnan(prob) & ~np.isnan(lab)
        prob, lab = prob[okg], lab[okg].astype(int)
    else:
        prob, lab = np.empty(0), np.empty(0, int)
    hit = (prob >= 0.5) == (lab == 1)
    rng = np.random.default_rng(seed)
    stats: dict[str, list[np.ndarray]] = {}
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        parts = {}
        if err.size:
            parts.update(_resample_stats(err, np.empty(0, bool), prob, lab, rng.integers(0, err.size, (b, err.size))))
        if hit.size:
            parts.update(_resample_stats(np.empty(0), hit, prob, lab, rng.integers(0, hit.size, (b, hit.size))))
        for k, v in parts.items():
            stats.setdefault(k, []).append(v)
    a = (1 - level) / 2
    out = {}
    for k, v in stats.items():
        s = np.concatenate(v)
        s = s[~np.isnan(s)]
        out[k] = (float(np.quantile(s, a)), float(np.quantile(s, 1 - a))) if s.size else (np.nan, np.nan)
    return out


def metrics_with_ci(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Point metrics plus `<metric>_lo` / `<metric>_hi` 95 % bootstrap bounds."""
    out = point_metrics(df)
    if n_boot > 0:
        for k, (lo, hi) in bootstrap_ci(df, n_boot=n_boot, seed=seed).items():
            out[f"{k}_lo"], out[f"{k}_hi"] = lo, hi
    return out


# ---------------------------------------------------------------------------------------------------------------
# Slices
# ---------------------------------------------------------------------------------------------------------------

def age_group(age: np.ndarray | pd.Series) -> pd.Categorical:
    """0-12 / 13-19 / 20-39 / 40-59 / 60+ (zoo.data.manifest.AGE_GROUPS), NaN for unknown ages."""
    a = np.asarray(age, float)
    edges = [-np.inf] + [hi + 1 for _, hi, _ in AGE_GROUPS[:-1]] + [np.inf]
    codes = np.searchsorted(edges, a, side="right") - 1
    codes = np.where(np.isnan(a), -1, codes)
    return pd.Categorical.from_codes(codes, categories=AGE_GROUP_NAMES)


def quantile_bins(values: np.ndarray | pd.Series, q: int = 4, labels: Iterable[str] | None = None) -> pd.Categorical:
    """Equal-count bins (Q1 = lowest); NaN stays NaN. Bin edges come from the values given, so compute them on the
    images table (one row per image), not on predictions (one row per image per model)."""
    v = pd.Series(np.asarray(values, float))
    names = list(labels) if labels is not None else [f"Q{i + 1}" for i in range(q)]
    if v.notna().sum() < q:
        return pd.Categorical([np.nan] * len(v), categories=names)
    return pd.qcut(v.rank(method="first"), q, labels=names).array


def add_slices(df: pd.DataFrame, q: int = 4) -> pd.DataFrame:
    """Slice columns for a predictions ⋈ images frame: age_group, gender_label, lighting (brightness quantiles,
    Q1 darkest), sharpness (blur quantiles, Q1 blurriest), condition (`none`, `blur@2`, …). Quantile edges are
    computed per dataset over distinct images so every model is sliced identically."""
    out = df.copy()
    out["age_group"] = age_group(out["age"])
    out["gender_label"] = out["gender"].map({0: "male", 1: "female"}).astype(object) if "gender" in out else None
    if "perturbation" in out:
        sev = out["severity"].astype(int).astype(str)
        out["condition"] = np.where(out["perturbation"] == "none", "none", out["perturbation"] + "@" + sev)
    for col, name in (("brightness", "lighting"), ("blur", "sharpness")):
        if col not in out:
            continue
        keys = ["dataset", "image_id"] if {"dataset", "image_id"} <= set(out.columns) else None
        if keys:
            images = out.drop_duplicates(keys)[keys + [col]].copy()
            images[name] = np.asarray(images.groupby("dataset", group_keys=False)[col]
                                      .transform(lambda s: pd.Series(np.asarray(quantile_bins(s, q)), index=s.index)))
            out = out.merge(images[keys + [name]], on=keys, how="left")
        else:
            out[name] = np.asarray(quantile_bins(out[col], q))
    return out


def group_metrics(df: pd.DataFrame, by: str | list[str], n_boot: int = 1000, seed: int = 0,
                  min_n: int = 1) -> pd.DataFrame:
    """One row per group of `by` with n, point metrics and 95 % bootstrap CIs (groups with < min_n rows dropped)."""
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, g in df.groupby(by, observed=True, dropna=True, sort=True):
        if len(g) < min_n:
            continue
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), **metrics_with_ci(g, n_boot=n_boot, seed=seed)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------------
# Fairness
# ---------------------------------------------------------------------------------------------------------------

def _rates(prob: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    (tn, fp), (fn, tp) = confusion(prob, true)
    return _div(tp, tp + fn), _div(fp, fp + tn)


def fairness_gaps(df: pd.DataFrame, by: str, min_n: int = 1) -> dict[str, object]:
    """Disparities across the groups of `by` (e.g. race, gender_label, age_group):

    mae_gap              max − min group MAE (with the worst and best group)
    gender_acc_gap       max − min group gender accuracy
    equalized_odds_diff  max(TPR gap, FPR gap) across groups, female positive (Hardt et al. 2016)"""
    groups = [(k, g) for k, g in df.groupby(by, observed=True, dropna=True) if len(g) >= min_n]
    mae = {k: age_accuracy(g["age_pred"], g["age"])["mae"] for k, g in groups}
    mae = {k: v for k, v in mae.items() if not np.isnan(v)}
    out: dict[str, object] = {"by": by, "groups": len(groups)}
    if mae:
        worst, best = max(mae, key=mae.get), min(mae, key=mae.get)
        out.update(mae_gap=mae[worst] - mae[best], worst_group=worst, best_group=best)
    else:
        out.update(mae_gap=np.nan, worst_group=None, best_group=None)
    if "gender_prob" in df and "gender" in df:
        acc, tpr, fpr = {}, {}, {}
        for k, g in groups:
            p, t = g["gender_prob"].to_numpy(float), g["gender"].to_numpy(float)
            a = gender_accuracy(p, t)["gender_acc"]
            if not np.isnan(a):
                acc[k] = a
            r_tp, r_fp = _rates(p, t)
            if not np.isnan(r_tp):
                tpr[k] = r_tp
            if not np.isnan(r_fp):
                fpr[k] = r_fp
        gap = lambda d: float(max(d.values()) - min(d.values())) if d else np.nan  # noqa: E731
        out["gender_acc_gap"] = gap(acc)
        tg, fg = gap(tpr), gap(fpr)
        out["tpr_gap"], out["fpr_gap"] = tg, fg
        out["equalized_odds_diff"] = float(np.nanmax([tg, fg])) if not (np.isnan(tg) and np.isnan(fg)) else np.nan
    return out


# ---------------------------------------------------------------------------------------------------------------
# Uncertainty quality
# ---------------------------------------------------------------------------------------------------------------

def total_sigma(df: pd.DataFrame, parts: Iterable[str] = ("sigma_aleatoric", "sigma_epistemic", "sigma_tta")
                ) -> np.ndarray:
    """sqrt of the sum of the available variances per row; NaN where none of them was computed."""
    cols = [df[c].to_numpy(float) for c in parts if c in df]
    if not cols:
        return np.full(len(df), np.nan)
    s = np.stack(cols)
    var = np.nansum(s ** 2, axis=0)
    return np.where(np.isnan(s).all(0), np.nan, np.sqrt(var))


def _valid(*arrays: np.ndarray) -> list[np.ndarray]:
    arrays = [np.asarray(a, float) for a in arrays]
    m = np.logical_and.reduce([~np.isnan(a) for a in arrays])
    return [a[m] for a in arrays]


def interval_coverage(pred: np.ndarray, sigma: np.ndarray, true: np.ndarray,
                      levels: Iterable[float] = COVERAGE_LEVELS) -> dict[float, float]:
    """Share of labels inside the central Gaussian interval pred ± z·sigma, per nominal level (ideal: = level)."""
    pred, sigma, true = _valid(pred, sigma, true)
    if not pred.size:
        return {lv: float("nan") for lv in levels}
    z = np.abs(true - pred) / np.maximum(sigma, 1e-12)
    return {lv: float((z <= norm.ppf(0.5 + lv / 2)).mean()) for lv in levels}


def calibration_error(pred: np.ndarray, sigma: np.ndarray, true: np.ndarray,
                      levels: Iterable[float] | None = None) -> float:
    """Regression calibration error: mean |observed − nominal| coverage of central Gaussian intervals over levels
    0.05, 0.10, …, 0.95 (Kuleshov et al. 2018, with central intervals). 0 = calibrated."""
    levels = np.arange(1, 20) / 20 if levels is None else np.asarray(list(levels), float)
    cov = interval_coverage(pred, sigma, true, levels)
    return float(np.mean([abs(cov[lv] - lv) for lv in levels]))


def gaussian_nll(pred: np.ndarray, sigma: np.ndarray, true: np.ndarray, min_sigma: float = 1e-3) -> float:
    """Mean negative log-likelihood of the labels under N(pred, sigma²) (sigma floored at `min_sigma`)."""
    pred, sigma, true = _valid(pred, sigma, true)
    if not pred.size:
        return float("nan")
    s = np.maximum(sigma, min_sigma)
    return float(np.mean(0.5 * np.log(2 * np.pi * s ** 2) + (true - pred) ** 2 / (2 * s ** 2)))


def risk_coverage(err: np.ndarray, uncertainty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k most certain predictions, k = 1..n: (coverage k/n, mean error of those k). Ties in uncertainty
    are broken by a stable sort, so the curve is deterministic."""
    err, unc = _valid(err, uncertainty)
    if not err.size:
        return np.empty(0), np.empty(0)
    e = err[np.argsort(unc, kind="stable")]
    k = np.arange(1, len(e) + 1)
    return k / len(e), np.cumsum(e) / k


def sparsification(err: np.ndarray, uncertainty: np.ndarray) -> dict[str, float]:
    """Area under the risk–coverage curve (AURC, mean of the curve over its n points; lower = better), the oracle
    area (ranking by the true error), a random ranking's area (= mean error) and AUSE = AURC − oracle
    (sparsification error: 0 when uncertainty orders errors perfectly)."""
    err, unc = _valid(err, uncertainty)
    if not err.size:
        return {"aurc": np.nan, "oracle_aurc": np.nan, "random_aurc": np.nan, "ause": np.nan}
    aurc = float(risk_coverage(err, unc)[1].mean())
    oracle = float(risk_coverage(err, err)[1].mean())
    return {"aurc": aurc, "oracle_aurc": oracle, "random_aurc": float(err.mean()), "ause": aurc - oracle}


def leaderboard(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                by: str = "model_id") -> pd.DataFrame:
    """One row per model (clean images): n, MAE, RMSE, CS@5, ±10y, gender acc / F1 / AUC with 95 % CIs, sorted
    by MAE."""
    t = group_metrics(df, by, n_boot=n_boot, seed=seed)
    return t.sort_values("mae", na_position="last", ignore_index=True) if not t.empty else t

