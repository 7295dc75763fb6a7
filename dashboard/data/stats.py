"""Statistics of the dashboard: 95 % confidence intervals and summaries computed from query frames.

Intervals are analytic: normal approximation for MAE / bias (n is in the thousands per model and in the hundreds
per group), a delta-method interval for RMSE (in dashboard.data.queries), Wilson intervals for proportions (CS@5,
±10y, gender accuracy, TPR/FPR) and Hanley–McNeil for AUCs (Mann–Whitney over binned scores: within ~1e-3 of the
exact value). `bench.metrics` (the numbers of `python -m bench report`) uses a percentile bootstrap over rows, which
would cost seconds per page on millions of rows; the point metrics are identical and the intervals agree to a
fraction of their width (tests/dashboard/test_dashboard_queries.py checks both against bench.metrics).

Names differ from bench.metrics where the meaning differs: `group_gaps` (bench.metrics.fairness_gaps works on
per-image rows, this on per-group aggregates) and `COVERAGE_Z` (nominal level -> z; bench.metrics.COVERAGE_LEVELS
is a tuple of levels).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

Z95 = 1.959963984540054
# Coverage levels for the Gaussian reliability diagram: nominal p -> z with P(|N(0,1)| <= z) = p.
COVERAGE_Z = {0.5: 0.6744897501960817, 0.68: 0.994457883209753, 0.8: 1.2815515655446004,
              0.9: 1.6448536269514722, 0.95: 1.959963984540054, 0.99: 2.5758293035489004}


def wilson(k, n, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    k, n = np.asarray(k, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        den = 1 + z**2 / n
        c = (p + z**2 / (2 * n)) / den
        h = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / den
    return c - h, c + h


def mean_ci(mean, sd, n, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    mean, sd, n = np.asarray(mean, float), np.asarray(sd, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        h = z * sd / np.sqrt(n)
    return mean - h, mean + h


# P(female) binned at 0.01 in logit space (~3000 bins): the Mann–Whitney AUC over bins differs from the exact one by
# half the share of female–male pairs that fall in one bin (measured: < 3e-4 on 300 images, < 4e-5 on 4k) and costs

def auc_hanley_mcneil(df: pd.DataFrame) -> pd.DataFrame:
    """Per model: AUC = s / (P N), where s = Σ over positives of (#negatives ranked below + ½ #tied) — the exact
    Mann–Whitney AUC with average ranks for ties — and the Hanley–McNeil 95 % interval. df: model_id, s, P, N."""
    P, N = df["P"].to_numpy(float), df["N"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = df["s"].to_numpy(float) / (P * N)
        q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
        se = np.sqrt(np.clip(auc * (1 - auc) + (P - 1) * (q1 - auc**2) + (N - 1) * (q2 - auc**2), 0, None) / (P * N))
    auc = np.where((P > 0) & (N > 0), auc, np.nan)
    return pd.DataFrame({"model_id": df["model_id"], "gender_auc": auc, "gender_auc_lo": auc - Z95 * se,
                         "gender_auc_hi": np.minimum(1.0, auc + Z95 * se)})



def group_gaps(groups: pd.DataFrame, min_n: int = 30) -> pd.DataFrame:
    """Per model, across groups with at least min_n images (unknown excluded): MAE gap (max - min), the groups at
    either end, gender-accuracy gap, and the equalized-odds difference max(range TPR, range FPR) of the
    gender classifier. `groups`: a `queries.group_scores` frame."""
    g = groups[(groups["grp"] != "unknown")]
    rows = []
    for mid, d in g.groupby("model_id", sort=False):
        da = d[d["n"] >= min_n].dropna(subset=["mae"])
        dg = d[d["n_gender"] >= min_n]
        row = {"model_id": mid, "groups": len(d)}
        if len(da) >= 2:
            hi, lo = da.loc[da["mae"].idxmax()], da.loc[da["mae"].idxmin()]
            row.update(mae_gap=hi["mae"] - lo["mae"], worst_group=hi["grp"], best_group=lo["grp"],
                       mae_gap_significant=bool(hi["mae_lo"] > lo["mae_hi"]))
        if len(dg) >= 2 and dg["gender_acc"].notna().any():
            row["gender_acc_gap"] = dg["gender_acc"].max() - dg["gender_acc"].min()
            tpr, fpr = dg["tpr"].dropna(), dg["fpr"].dropna()
            parts = [s.max() - s.min() for s in (tpr, fpr) if len(s) >= 2]
            row["eq_odds_diff"] = max(parts) if parts else np.nan
        rows.append(row)
    cols = ["model_id", "groups", "mae_gap", "worst_group", "best_group", "mae_gap_significant", "gender_acc_gap",
            "eq_odds_diff"]
    return pd.DataFrame(rows).reindex(columns=cols)




def coverage_long(summary: pd.DataFrame) -> pd.DataFrame:
    """queries.uncertainty_summary -> long (model_id, source, nominal, observed) for reliability plots."""
    if summary.empty:
        return pd.DataFrame(columns=["model_id", "source", "nominal", "observed"])
    parts = []
    for p in COVERAGE_Z:
        d = summary[["model_id", "source"]].copy()
        d["nominal"], d["observed"] = p, summary[f"cov_{int(round(p * 100))}"]
        parts.append(d)
    return pd.concat(parts, ignore_index=True).sort_values(["model_id", "source", "nominal"])



def aurc(curves: pd.DataFrame) -> pd.DataFrame:
    """Area under each risk–coverage curve (lower is better) per (model, source)."""
    rows = []
    for (mid, src), d in curves.groupby(["model_id", "source"], sort=False):
        cov = np.concatenate([[0.0], d["coverage"].to_numpy()])
        risk = np.concatenate([[d["mae"].iloc[0]], d["mae"].to_numpy()])
        rows.append({"model_id": mid, "source": src, "aurc": float(np.trapezoid(risk, cov))})
    return pd.DataFrame(rows, columns=["model_id", "source", "aurc"])
