"""Every SQL read of the predictions database (bench/SCHEMA.md): the SQL pieces and the queries the pages run.

Every query has the signature `fn(db: str, ver: str, ...)`, returns a small pandas DataFrame and is wrapped by
`dashboard.data.db.query` (cached on the DB version; `fn.raw` is uncached). Aggregations run in SQL (DuckDB) so
pages stay fast on millions of rows; intervals come from dashboard.data.stats.

Names differ from bench.metrics where the meaning differs: `model_scores` (bench.metrics.leaderboard), `group_scores`
(bench.metrics.group_metrics), `risk_coverage_curves` (bench.metrics.risk_coverage).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from bench import store
from dashboard.data.db import DBBusy, connect, query, sql
from dashboard.data.stats import COVERAGE_Z, Z95, auc_hanley_mcneil, mean_ci, wilson
from zoo.data.manifest import AGE_GROUPS
from zoo.runs import RunRecord

AGE_GROUP_NAMES = [g[2] for g in AGE_GROUPS]  # as bench.metrics.AGE_GROUP_NAMES
# Tables and columns a readable DB has: the bench's schema (bench.store.TABLES), never a copy of it.
TABLES = {t: set(store.columns(t)) for t in store.TABLES}
# Tables a DB written before they existed lacks (every bench write adds them): it is still readable, and the
# queries of such a table (dashboard.data.attributes) return nothing.
OPTIONAL_TABLES = ("attributes", "embeddings")
# Uncertainty sources: label -> SQL expression (NULL where not available).
SIGMA_SOURCES = {
    "aleatoric": "sigma_aleatoric",
    "MC-Dropout": "CASE WHEN kind <> 'ensemble' THEN sigma_epistemic END",
    "ensemble spread": "CASE WHEN kind = 'ensemble' THEN sigma_epistemic END",
    "TTA": "sigma_tta",
    "total (aleatoric ⊕ epistemic)": "sqrt(sigma_aleatoric * sigma_aleatoric + sigma_epistemic * sigma_epistemic)",
}
# P(female) binned at 0.01 in logit space (~3000 bins): the Mann–Whitney AUC over bins differs from the exact one by
# half the share of female–male pairs that fall in one bin (measured: < 3e-4 on 300 images, < 4e-5 on 4k) and costs
# a quarter of grouping by every distinct probability.
AUC_BIN_SQL = ("round(ln(greatest(p.gender_prob, 1e-9) / greatest(1 - p.gender_prob, 1e-9)) * 100)::INTEGER")


# ---------------------------------------------------------------------------------------------------- SQL pieces
def _models_clause(models, alias: str = "p") -> tuple[str, list]:
    if models is None:
        return "", []
    models = list(models)
    if not models:
        return " AND FALSE", []
    return f" AND {alias}.model_id IN ({', '.join('?' * len(models))})", models


# The mode a query reads when none is given: the one most rows were made in (one mode, never a mix of them).
DEFAULT_MODE_SQL = "SELECT mode FROM predictions GROUP BY mode ORDER BY count(*) DESC, mode LIMIT 1"


def _mode_where(mode: str | None, alias: str = "p") -> tuple[str, list]:
    """Every prediction query reads one inference mode (`zoo.modes`): `mode`, or the DB's most common one."""
    if mode:
        return f"{alias}.mode = ?", [mode]
    return f"{alias}.mode = ({DEFAULT_MODE_SQL})", []


def _eval_where(dataset: str, split: str, clean: bool = True, mode: str | None = None) -> tuple[str, list]:
    w, prm = [], []
    mw, mp = _mode_where(mode)
    w.append(mw)
    prm += mp
    if clean:
        w.append("p.perturbation = 'none'")
    if dataset and dataset != "*":
        w.append("p.dataset = ?")
        prm.append(dataset)
    if split and split != "*":
        w.append("i.split = ?")
        prm.append(split)
    return (" AND ".join(w) or "TRUE"), prm


AGE_GROUP_SQL = ("CASE WHEN i.age IS NULL THEN 'unknown' WHEN i.age < 13 THEN '0-12' WHEN i.age < 20 THEN '13-19' "
                 "WHEN i.age < 40 THEN '20-39' WHEN i.age < 60 THEN '40-59' ELSE '60+' END")
GENDER_SQL = "CASE i.gender WHEN 0 THEN 'male' WHEN 1 THEN 'female' ELSE 'unknown' END"
RACE_SQL = "coalesce(i.race, 'unknown')"

# Slices of the Errors page: name -> (SQL label expression, uses perturbed rows?, sort order of labels or None).
SLICES = {
    "age group": (AGE_GROUP_SQL, False, AGE_GROUP_NAMES + ["unknown"]),
    "gender": (GENDER_SQL, False, ["male", "female", "unknown"]),
    "race": (RACE_SQL, False, None),
    "lighting (brightness)": (
        "CASE WHEN i.brightness IS NULL THEN 'unknown' WHEN i.brightness < 60 THEN 'dark (<60)' "
        "WHEN i.brightness < 100 THEN 'dim (60-100)' WHEN i.brightness < 170 THEN 'normal (100-170)' "
        "ELSE 'bright (≥170)' END", False,
        ["dark (<60)", "dim (60-100)", "normal (100-170)", "bright (≥170)", "unknown"]),
    "contrast": (
        "CASE WHEN i.contrast IS NULL THEN 'unknown' WHEN i.contrast < 35 THEN 'flat (<35)' "
        "WHEN i.contrast < 70 THEN 'normal (35-70)' ELSE 'high (≥70)' END", False,
        ["flat (<35)", "normal (35-70)", "high (≥70)", "unknown"]),
    "blur (Laplacian variance)": (
        "CASE WHEN i.blur IS NULL THEN 'unknown' WHEN i.blur < 50 THEN 'very blurry (<50)' "
        "WHEN i.blur < 150 THEN 'blurry (50-150)' WHEN i.blur < 500 THEN 'soft (150-500)' ELSE 'sharp (≥500)' END",
        False, ["very blurry (<50)", "blurry (50-150)", "soft (150-500)", "sharp (≥500)", "unknown"]),
    "lighting quartile (per dataset)": (
        "coalesce('Q' || q.light_q || CASE q.light_q WHEN 1 THEN ' darkest' WHEN 4 THEN ' brightest' ELSE '' END, "
        "'unknown')", False, ["Q1 darkest", "Q2", "Q3", "Q4 brightest", "unknown"]),
    "sharpness quartile (per dataset)": (
        "coalesce('Q' || q.sharp_q || CASE q.sharp_q WHEN 1 THEN ' blurriest' WHEN 4 THEN ' sharpest' ELSE '' END, "
        "'unknown')", False, ["Q1 blurriest", "Q2", "Q3", "Q4 sharpest", "unknown"]),
    "JPEG quality": (
        "CASE WHEN i.jpeg_quality IS NULL THEN 'not JPEG' WHEN i.jpeg_quality < 50 THEN 'q<50' "
        "WHEN i.jpeg_quality < 75 THEN 'q50-74' WHEN i.jpeg_quality < 90 THEN 'q75-89' ELSE 'q≥90' END", False,
        ["q<50", "q50-74", "q75-89", "q≥90", "not JPEG"]),
    "resolution": (
        "CASE WHEN i.resolution IS NULL THEN 'unknown' WHEN i.resolution < 100 THEN '<100 px' "
        "WHEN i.resolution < 200 THEN '100-199 px' WHEN i.resolution < 400 THEN '200-399 px' ELSE '≥400 px' END",
        False, ["<100 px", "100-199 px", "200-399 px", "≥400 px", "unknown"]),
    "face size": (
        "CASE WHEN i.face_size IS NULL THEN 'no detection' WHEN i.face_size < 0.4 THEN 'small (<0.4)' "
        "WHEN i.face_size < 0.7 THEN 'medium (0.4-0.7)' ELSE 'large (≥0.7)' END", False,
        ["small (<0.4)", "medium (0.4-0.7)", "large (≥0.7)", "no detection"]),
    "dataset": ("p.dataset", False, None),
    "synthetic": ("CASE WHEN i.is_synthetic THEN 'synthetic' ELSE 'real' END", False, ["real", "synthetic"]),
    "perturbation": ("p.perturbation || CASE WHEN p.severity > 0 THEN ' s' || p.severity ELSE '' END", True, None),
}

# Equal-count quartiles of brightness / blur over the distinct images of each dataset (as bench.metrics.add_slices).
QUARTILES_SQL = """(SELECT dataset, image_id,
        CASE WHEN brightness IS NOT NULL THEN ntile(4) OVER (PARTITION BY dataset, brightness IS NULL
                                                            ORDER BY brightness, image_id) END AS light_q,
        CASE WHEN blur IS NOT NULL THEN ntile(4) OVER (PARTITION BY dataset, blur IS NULL
                                                      ORDER BY blur, image_id) END AS sharp_q
    FROM images)"""


def _from(*exprs: str) -> str:
    """predictions p ⋈ images i (+ quartiles q when an expression needs them)."""
    f = "predictions p JOIN images i USING (dataset, image_id)"
    if any(re.search(r"\bq\.", e) for e in exprs):
        f += f" LEFT JOIN {QUARTILES_SQL} q ON q.dataset = p.dataset AND q.image_id = p.image_id"
    return f


BASE_AGG = """
    count(i.age) FILTER (WHERE p.age_pred IS NOT NULL) AS n,
    avg(abs(p.age_pred - i.age)) AS mae,
    stddev_samp(abs(p.age_pred - i.age)) AS sd_ae,
    avg(p.age_pred - i.age) AS bias,
    stddev_samp(p.age_pred - i.age) AS sd_err,
    count(i.gender) FILTER (WHERE p.gender_prob IS NOT NULL) AS n_gender,
    count(*) FILTER (WHERE p.gender_prob IS NOT NULL AND i.gender IS NOT NULL
                     AND (p.gender_prob >= 0.5) = (i.gender = 1)) AS k_gender,
    count(*) FILTER (WHERE p.gender_prob >= 0.5 AND i.gender = 1) AS tp,
    count(*) FILTER (WHERE p.gender_prob >= 0.5 AND i.gender = 0) AS fp,
    count(*) FILTER (WHERE p.gender_prob < 0.5 AND i.gender = 1) AS fn,
    count(*) FILTER (WHERE p.gender_prob < 0.5 AND i.gender = 0) AS tn
"""


def _finish(df: pd.DataFrame) -> pd.DataFrame:
    """Add CIs and rates to BASE_AGG columns."""
    if df.empty:
        for c in ("mae_lo", "mae_hi", "bias_lo", "bias_hi", "gender_acc", "gender_acc_lo", "gender_acc_hi", "tpr",
                  "fpr", "tpr_lo", "tpr_hi", "fpr_lo", "fpr_hi"):
            df[c] = pd.Series(dtype=float)
        return df
    for c in ("n", "n_gender", "k_gender", "tp", "fp", "fn", "tn"):
        df[c] = df[c].fillna(0).astype("int64")
    df["mae_lo"], df["mae_hi"] = mean_ci(df["mae"], df["sd_ae"], df["n"])
    df["bias_lo"], df["bias_hi"] = mean_ci(df["bias"], df["sd_err"], df["n"])
    with np.errstate(invalid="ignore", divide="ignore"):
        df["gender_acc"] = df["k_gender"] / df["n_gender"].where(df["n_gender"] > 0)
        df["tpr"] = df["tp"] / (df["tp"] + df["fn"]).where(lambda s: s > 0)
        df["fpr"] = df["fp"] / (df["fp"] + df["tn"]).where(lambda s: s > 0)
        df["f1"] = 2 * df["tp"] / (2 * df["tp"] + df["fp"] + df["fn"]).where(lambda s: s > 0)
    df["gender_acc_lo"], df["gender_acc_hi"] = wilson(df["k_gender"], df["n_gender"])
    df["tpr_lo"], df["tpr_hi"] = wilson(df["tp"], df["tp"] + df["fn"])
    df["fpr_lo"], df["fpr_hi"] = wilson(df["fp"], df["fp"] + df["tn"])
    return df


# ------------------------------------------------------------------------------------------------------ queries
@query
def db_status(db: str, ver: str) -> dict:
    """{'state': ok|missing|empty|invalid|busy, 'message', counts...} — never raises."""
    if not ver or not Path(db).is_file():
        return {"state": "missing", "message": f"No predictions database at `{db}`."}
    try:
        with connect(db) as con:
            tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
            missing = [t for t in TABLES if t not in tables and t not in OPTIONAL_TABLES]
            if missing:
                return {"state": "invalid" if tables else "empty",
                        "message": f"`{db}` has no table(s) {', '.join(missing)}: it is not (yet) a predictions "
                                   "database (see bench/SCHEMA.md)."}
            bad = []
            for t, cols in TABLES.items():
                if t not in tables:  # an optional one (above)
                    continue
                have = {r[0] for r in con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [t]).fetchall()}
                if cols - have:
                    bad.append(f"{t} lacks {', '.join(sorted(cols - have))}")
            if bad:
                return {"state": "invalid", "message": f"`{db}` does not follow bench/SCHEMA.md: {'; '.join(bad)} "
                                                       f"(written by an older bench? `python -m bench migrate --db "
                                                       f"{db}`, or the next `python -m bench run` on it, adds the "
                                                       "missing columns)."}
            n_pred, n_models, n_images = con.execute(
                "SELECT (SELECT count(*) FROM predictions), (SELECT count(*) FROM models), "
                "(SELECT count(*) FROM images)").fetchone()
            last = con.execute("SELECT max(finished) FROM bench_runs").fetchone()[0]
    except DBBusy:
        raise
    except Exception as e:  # a corrupt or foreign file: say so, do not crash the app
        return {"state": "invalid", "message": f"`{db}` cannot be read as a DuckDB database: {type(e).__name__}: {e}"}
    if n_pred == 0:
        return {"state": "empty", "message": f"`{db}` exists but holds no predictions yet.", "models": n_models,
                "images": n_images, "predictions": 0}
    return {"state": "ok", "message": "", "models": int(n_models), "images": int(n_images),
            "predictions": int(n_pred), "last_run": str(last) if last is not None else None}


@query
def models(db: str, ver: str) -> pd.DataFrame:
    """The models table plus parsed info fields (parent, adapted_to, members) and rows of predictions."""
    df = sql(db, """
        SELECT m.*, coalesce(c.n_rows, 0) AS n_rows FROM models m
        LEFT JOIN (SELECT model_id, count(*) AS n_rows FROM predictions GROUP BY model_id) c USING (model_id)
        ORDER BY m.model_id""")
    runs = [RunRecord.from_row(row) for row in df.to_dict("records")]  # None: a peer (no run record in info)
    df["parent"] = [r.parent if r else None for r in runs]
    df["adapted_to"] = [r.adapted_to if r else None for r in runs]
    df["members"] = [",".join(r.members) if r else "" for r in runs]
    df["label"] = [n if n and n != m else m for n, m in zip(df["name"], df["model_id"])]
    return df


@query
def eval_sets(db: str, ver: str) -> pd.DataFrame:
    """(dataset, split) pairs with clean predictions: images, rows. Sets with ages first (an age tool opens on a set
    whose MAE it can show), then the largest."""
    return sql(db, """
        WITH c AS (SELECT dataset, image_id, count(*) AS rows FROM predictions WHERE perturbation = 'none'
                   GROUP BY ALL)
        SELECT c.dataset, i.split, count(*) AS images, sum(c.rows) AS rows
        FROM c JOIN images i USING (dataset, image_id) GROUP BY ALL
        ORDER BY count(i.age) > 0 DESC, images DESC""")


@query
def model_scores(db: str, ver: str, dataset: str, split: str, mode: str | None = None) -> pd.DataFrame:
    """One row per model with clean predictions on (dataset, split) in one inference mode: accuracy with 95 % CIs,
    cost, latency."""
    where, prm = _eval_where(dataset, split, mode=mode)
    base = f"FROM predictions p JOIN images i USING (dataset, image_id) WHERE {where}"
    with connect(db) as con:
        agg = con.execute(f"""
            SELECT p.model_id, {BASE_AGG},
                   sqrt(avg((p.age_pred - i.age) * (p.age_pred - i.age))) AS rmse,
                   stddev_samp((p.age_pred - i.age) * (p.age_pred - i.age)) AS sd_se,
                   count(*) FILTER (WHERE abs(p.age_pred - i.age) <= 5) AS k5,
                   count(*) FILTER (WHERE abs(p.age_pred - i.age) <= 10) AS k10,
                   avg(p.latency_ms) AS latency_ms
            {base} GROUP BY p.model_id""", prm).df()
        auc = con.execute(f"""
            WITH h AS (SELECT p.model_id, {AUC_BIN_SQL} AS prob, count(*) FILTER (WHERE i.gender = 1) AS pos,
                              count(*) FILTER (WHERE i.gender = 0) AS neg
                       {base} AND p.gender_prob IS NOT NULL AND i.gender IS NOT NULL GROUP BY ALL),
                 c AS (SELECT model_id, pos, neg, coalesce(sum(neg) OVER (
                           PARTITION BY model_id ORDER BY prob ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                           AS neg_below FROM h)
            SELECT model_id, sum(pos * (neg_below + 0.5 * neg)) AS s, sum(pos) AS P, sum(neg) AS N
            FROM c GROUP BY model_id""", prm).df()
        meta = con.execute("SELECT model_id, name, kind, source, backbone, formulation, img_size, params, flops, "
                           "infer_img_s FROM models").df()
    agg = _finish(agg)
    if agg.empty:
        return agg
    mse = agg["rmse"] ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        h = Z95 * agg["sd_se"] / np.sqrt(agg["n"])
    agg["rmse_lo"], agg["rmse_hi"] = np.sqrt(np.clip(mse - h, 0, None)), np.sqrt(mse + h)
    agg["cs5"] = agg["k5"] / agg["n"].where(agg["n"] > 0)
    agg["acc10"] = agg["k10"] / agg["n"].where(agg["n"] > 0)
    agg["cs5_lo"], agg["cs5_hi"] = wilson(agg["k5"], agg["n"])
    agg["acc10_lo"], agg["acc10_hi"] = wilson(agg["k10"], agg["n"])
    out = agg.merge(auc_hanley_mcneil(auc), on="model_id", how="left").merge(meta, on="model_id", how="left")
    return out.sort_values("mae", na_position="last").reset_index(drop=True)


@query
def slice_metrics(db: str, ver: str, models: tuple, dataset: str, split: str, slice_name: str,
                  perturbation: str = "none", mode: str | None = None) -> pd.DataFrame:
    """MAE / bias / gender accuracy with CIs per (model, slice value). `perturbation` applies to non-perturbation
    slices ('none' = clean images)."""
    expr, uses_pert, order = SLICES[slice_name]
    where, prm = _eval_where(dataset, split, clean=False, mode=mode)
    if not uses_pert:
        if perturbation == "none":
            where += " AND p.perturbation = 'none'"
        else:
            where += " AND p.perturbation = ?"
            prm.append(perturbation)
    mc, mp = _models_clause(models)
    df = sql(db, f"""
        SELECT p.model_id, {expr} AS slice, {BASE_AGG}
        FROM {_from(expr)}
        WHERE {where}{mc} GROUP BY ALL""", prm + mp)
    df = _finish(df)
    rank = {v: k for k, v in enumerate(order or [])}
    if slice_name == "perturbation":
        df["_o"] = [(0 if s == "none" else 1, s.rsplit(" s", 1)[0], int(s.rsplit(" s", 1)[1]) if " s" in s else 0)
                    for s in df["slice"]]
    else:
        df["_o"] = [(rank.get(s, len(rank)), str(s)) for s in df["slice"]]
    return df.sort_values(["_o", "model_id"]).drop(columns="_o").reset_index(drop=True)


@query
def perturbations(db: str, ver: str, mode: str | None = None) -> pd.DataFrame:
    mw, mp = _mode_where(mode)
    return sql(db, f"SELECT perturbation, max(severity) AS max_severity, count(*) AS rows FROM predictions p "
                   f"WHERE {mw} GROUP BY perturbation ORDER BY perturbation = 'none' DESC, perturbation", mp)


@query
def modes(db: str, ver: str) -> pd.DataFrame:
    """The inference modes of the DB's predictions (`zoo.modes`): rows, models, clean rows; most rows first."""
    return sql(db, "SELECT mode, count(*) AS rows, count(DISTINCT model_id) AS models, "
                   "count(*) FILTER (WHERE perturbation = 'none') AS clean_rows FROM predictions "
                   "GROUP BY mode ORDER BY rows DESC, mode")


@query
def mae_by_age(db: str, ver: str, models: tuple, dataset: str, split: str, width: int = 1,
               mode: str | None = None) -> pd.DataFrame:
    """MAE and signed bias per true age bin (`width` years, labelled by the bin's lower edge) and model."""
    where, prm = _eval_where(dataset, split, mode=mode)
    mc, mp = _models_clause(models)
    df = sql(db, f"""
        SELECT p.model_id, (floor(round(i.age) / {int(width)}) * {int(width)})::INT AS age, count(*) AS n,
               avg(abs(p.age_pred - i.age)) AS mae,
               avg(p.age_pred - i.age) AS bias, stddev_samp(p.age_pred - i.age) AS sd_err
        FROM predictions p JOIN images i USING (dataset, image_id)
        WHERE {where}{mc} AND i.age IS NOT NULL AND p.age_pred IS NOT NULL GROUP BY ALL ORDER BY age""", prm + mp)
    df["bias_lo"], df["bias_hi"] = mean_ci(df["bias"], df["sd_err"], df["n"])
    return df


@query
def error_hist(db: str, ver: str, models: tuple, dataset: str, split: str, slice_name: str | None = None,
               slice_value: str | None = None, width: float = 2.0, mode: str | None = None) -> pd.DataFrame:
    """Counts of signed error (pred - true) in `width`-year bins, clipped to ±40, per model (optionally one slice)."""
    where, prm = _eval_where(dataset, split, clean=slice_name != "perturbation", mode=mode)
    expr = ""
    if slice_name and slice_value is not None:
        expr = SLICES[slice_name][0]
        where += f" AND ({expr}) = ?"
        prm.append(slice_value)
    mc, mp = _models_clause(models)
    return sql(db, f"""
        SELECT p.model_id, greatest(-40, least(40, floor((p.age_pred - i.age) / {width}) * {width})) AS err,
               count(*) AS n
        FROM {_from(expr)}
        WHERE {where}{mc} AND i.age IS NOT NULL AND p.age_pred IS NOT NULL GROUP BY ALL ORDER BY err""",
               prm + mp)


@query
def scatter_sample(db: str, ver: str, model: str, dataset: str, split: str, n: int = 4000,
                   perturbation: str = "none", mode: str | None = None) -> pd.DataFrame:
    """Up to n (true, predicted) points of one model, a deterministic sample (by image id hash)."""
    where, prm = _eval_where(dataset, split, clean=False, mode=mode)
    return sql(db, f"""
        SELECT p.dataset, p.image_id, i.age, p.age_pred, p.age_pred - i.age AS err, {GENDER_SQL} AS gender,
               {RACE_SQL} AS race, p.sigma_aleatoric, p.sigma_epistemic, p.gender_prob
        FROM predictions p JOIN images i USING (dataset, image_id)
        WHERE {where} AND p.model_id = ? AND p.perturbation = ? AND p.severity = (
              SELECT min(severity) FROM predictions WHERE perturbation = ?)
              AND i.age IS NOT NULL AND p.age_pred IS NOT NULL
        ORDER BY hash(p.image_id) LIMIT {int(n)}""", prm + [model, perturbation, perturbation])


@query
def group_scores(db: str, ver: str, models: tuple, dataset: str, split: str, by: str,
                  mode: str | None = None) -> pd.DataFrame:
    """Per (model, group) for by in {gender, race, age group}: MAE, bias, gender acc, TPR / FPR for 'female'."""
    expr = {"gender": GENDER_SQL, "race": RACE_SQL, "age group": AGE_GROUP_SQL}[by]
    where, prm = _eval_where(dataset, split, mode=mode)
    mc, mp = _models_clause(models)
    df = sql(db, f"""
        SELECT p.model_id, {expr} AS grp, {BASE_AGG}
        FROM predictions p JOIN images i USING (dataset, image_id)
        WHERE {where}{mc} GROUP BY ALL ORDER BY grp""", prm + mp)
    df = _finish(df)
    if by == "age group":
        order = {g: k for k, g in enumerate(AGE_GROUP_NAMES)}
        df = df.sort_values(["model_id", "grp"], key=lambda s: s.map(order).fillna(99) if s.name == "grp" else s)
    return df.reset_index(drop=True)


@query
def uncertainty_summary(db: str, ver: str, models: tuple, dataset: str, split: str,
                        mode: str | None = None) -> pd.DataFrame:
    """Per (model, uncertainty source): rows with a sigma, mean sigma, RMSE, observed coverage of the Gaussian
    central interval at each nominal level (columns cov_50 ... cov_99)."""
    where, prm = _eval_where(dataset, split, mode=mode)
    mc, mp = _models_clause(models)
    sel = []
    for k, (label, expr) in enumerate(SIGMA_SOURCES.items()):
        sel.append(f"count({expr}) AS n_{k}, avg({expr}) AS s_{k}")
        for p, z in COVERAGE_Z.items():
            sel.append(f"avg((abs(err) <= {z} * ({expr}))::DOUBLE) FILTER (WHERE ({expr}) IS NOT NULL) "
                       f"AS c_{k}_{int(round(p * 100))}")
    df = sql(db, f"""
        WITH e AS (SELECT p.model_id, m.kind, p.age_pred - i.age AS err, p.sigma_aleatoric, p.sigma_epistemic,
                          p.sigma_tta
                   FROM predictions p JOIN images i USING (dataset, image_id) JOIN models m USING (model_id)
                   WHERE {where}{mc} AND i.age IS NOT NULL AND p.age_pred IS NOT NULL)
        SELECT model_id, sqrt(avg(err * err)) AS rmse, avg(abs(err)) AS mae, {', '.join(sel)}
        FROM e GROUP BY model_id""", prm + mp)
    rows = []
    for _, r in df.iterrows():
        for k, label in enumerate(SIGMA_SOURCES):
            if not r[f"n_{k}"]:
                continue
            row = {"model_id": r["model_id"], "source": label, "n": int(r[f"n_{k}"]), "mean_sigma": r[f"s_{k}"],
                   "rmse": r["rmse"], "mae": r["mae"]}
            for p in COVERAGE_Z:
                row[f"cov_{int(round(p * 100))}"] = r[f"c_{k}_{int(round(p * 100))}"]
            row["calib_error"] = float(np.mean([abs(row[f"cov_{int(round(p * 100))}"] - p) for p in COVERAGE_Z]))
            rows.append(row)
    return pd.DataFrame(rows)


@query
def risk_coverage_curves(db: str, ver: str, models: tuple, dataset: str, split: str, mode: str | None = None) -> pd.DataFrame:
    """Risk–coverage curves: keep the most confident fraction (smallest sigma) -> MAE of what is kept. One curve per
    (model, source) from a 1 %-resolution log-histogram of sigma, plus the 'oracle' (ranked by the true error).
    Columns: model_id, source, coverage, mae, sigma (the cut), rmse_bin (RMSE of that bin), sigma_bin."""
    where, prm = _eval_where(dataset, split, mode=mode)
    mc, mp = _models_clause(models)
    unions = [f"SELECT model_id, '{label}' AS source, {expr} AS s, err FROM e" for label, expr in
              SIGMA_SOURCES.items()] + ["SELECT model_id, 'oracle (true error)' AS source, abs(err) AS s, err FROM e"]
    df = sql(db, f"""
        WITH e AS (SELECT p.model_id, m.kind, p.age_pred - i.age AS err, p.sigma_aleatoric, p.sigma_epistemic,
                          p.sigma_tta
                   FROM predictions p JOIN images i USING (dataset, image_id) JOIN models m USING (model_id)
                   WHERE {where}{mc} AND i.age IS NOT NULL AND p.age_pred IS NOT NULL),
             u AS ({' UNION ALL '.join(unions)})
        SELECT model_id, source, floor(ln(s + 0.01) * 100)::INT AS b, count(*) AS n, sum(abs(err)) AS sae,
               sum(err * err) AS sse, avg(s) AS sigma
        FROM u WHERE s IS NOT NULL AND isfinite(s) GROUP BY ALL""", prm + mp)
    if df.empty:
        return pd.DataFrame(columns=["model_id", "source", "coverage", "mae", "sigma", "rmse_bin", "sigma_bin", "n",
                                     "sse"])
    df = df.sort_values(["model_id", "source", "b"])
    g = df.groupby(["model_id", "source"], sort=False)
    df["coverage"] = g["n"].cumsum() / g["n"].transform("sum")
    df["mae"] = g["sae"].cumsum() / g["n"].cumsum()
    df["rmse_bin"] = np.sqrt(df["sse"] / df["n"])
    df["sigma_bin"] = df["sigma"]
    return df[["model_id", "source", "coverage", "mae", "sigma", "rmse_bin", "sigma_bin", "n", "sse"]].reset_index(
        drop=True)



@query
def gender_calibration(db: str, ver: str, models: tuple, dataset: str, split: str, bins: int = 10,
                       mode: str | None = None) -> pd.DataFrame:
    """Reliability of P(female): per (model, bin) mean predicted probability, observed female fraction, n."""
    where, prm = _eval_where(dataset, split, mode=mode)
    mc, mp = _models_clause(models)
    return sql(db, f"""
        SELECT p.model_id, least(floor(p.gender_prob * {bins}), {bins - 1})::INT AS bin, count(*) AS n,
               avg(p.gender_prob) AS prob, avg(i.gender::DOUBLE) AS observed
        FROM predictions p JOIN images i USING (dataset, image_id)
        WHERE {where}{mc} AND p.gender_prob IS NOT NULL AND i.gender IS NOT NULL GROUP BY ALL ORDER BY bin""",
               prm + mp)


_ROBUSTNESS_AGG = """count(age) AS n, avg(abs(age_pred - age)) AS mae, stddev_samp(abs(age_pred - age)) AS sd_ae,
    avg(age_pred - age) AS bias, avg(((gender_prob >= 0.5) = (gender = 1))::DOUBLE)
        FILTER (WHERE gender_prob IS NOT NULL AND gender IS NOT NULL) AS gender_acc"""


@query
def robustness(db: str, ver: str, models: tuple, dataset: str, split: str, mode: str | None = None) -> pd.DataFrame:
    """MAE and gender accuracy per (model, perturbation, severity); severity 0 of each perturbation is the clean
    prediction on the same images (so the curve starts at a like-for-like baseline), all in one inference mode.
    Per perturbation, only the images every model perturbed with it counts (`n`): 250 images of one model against
    1,000 of another would compare different sets (issue 21 B7)."""
    where, prm = _eval_where(dataset, split, clean=False, mode=mode)
    mc, mp = _models_clause(models)
    # Images are joined on an integer (the images row) rather than (dataset, image_id) strings, and each half is
    # aggregated on its own instead of through a union of rows: 40 % faster on 5M rows
    # (benchmarks/dashboard_queries.py).
    df = sql(db, f"""
        WITH r AS (SELECT p.model_id, i.rowid AS img, p.perturbation, p.severity, p.age_pred, p.gender_prob,
                          i.age, i.gender
                   FROM predictions p JOIN images i USING (dataset, image_id) WHERE {where}{mc}),
             sev1 AS (SELECT model_id, img, perturbation FROM r WHERE perturbation <> 'none' AND severity = 1),
             pm AS (SELECT DISTINCT model_id, perturbation FROM sev1),
             k AS (SELECT perturbation, count(*) AS k FROM pm GROUP BY ALL),
             shared AS (SELECT img, perturbation FROM sev1 JOIN k USING (perturbation)
                        GROUP BY img, perturbation, k.k HAVING count(DISTINCT model_id) = k.k)
        SELECT model_id, perturbation, severity, {_ROBUSTNESS_AGG}
        FROM r SEMI JOIN shared USING (img, perturbation) WHERE perturbation <> 'none' GROUP BY ALL
        UNION ALL
        SELECT r.model_id, s.perturbation, 0, {_ROBUSTNESS_AGG}
        FROM r JOIN shared s USING (img) SEMI JOIN pm ON pm.model_id = r.model_id AND pm.perturbation = s.perturbation
        WHERE r.perturbation = 'none' GROUP BY ALL
        ORDER BY model_id, perturbation, severity""", prm + mp)
    df["mae_lo"], df["mae_hi"] = mean_ci(df["mae"], df["sd_ae"], df["n"])
    return df


BROWSER_FILTERS = ("age group", "gender", "race", "lighting quartile (per dataset)",
                   "sharpness quartile (per dataset)", "JPEG quality", "dataset", "lighting (brightness)",
                   "blur (Laplacian variance)")


@query
def browser_rows(db: str, ver: str, model: str, dataset: str, split: str, filters: tuple = (),
                 image_keys: tuple = (), perturbation: str = "none", severity: int = 0, order: str = "worst",
                 limit: int = 48, mode: str | None = None) -> pd.DataFrame:
    """Images of one model's predictions: filters = ((slice name, value), ...); image_keys = ((dataset, image_id),
    ...) restricts to a selection; order = worst | best | most uncertain | random."""
    where, prm = _eval_where(dataset, split, clean=False, mode=mode)
    where += " AND p.model_id = ? AND p.perturbation = ? AND p.severity = ?"
    prm += [model, perturbation, int(severity)]
    exprs = []
    for name, value in filters:
        exprs.append(SLICES[name][0])
        where += f" AND ({SLICES[name][0]}) = ?"
        prm.append(value)
    join = ""
    if image_keys:
        keys = pd.DataFrame(list(image_keys), columns=["dataset", "image_id"])
        join = "JOIN keys k ON k.dataset = p.dataset AND k.image_id = p.image_id"
    orders = {"worst": "abs(p.age_pred - i.age) DESC NULLS LAST", "best": "abs(p.age_pred - i.age) ASC NULLS LAST",
              "most uncertain": "coalesce(p.sigma_epistemic, p.sigma_aleatoric, p.sigma_tta) DESC NULLS LAST",
              "random": "hash(p.image_id)"}
    q = f"""
        SELECT p.dataset, p.image_id, i.path, i.split, i.age, p.age_pred, p.age_pred - i.age AS err,
               {GENDER_SQL} AS gender, p.gender_prob, {RACE_SQL} AS race, p.sigma_aleatoric, p.sigma_epistemic,
               p.sigma_tta, i.brightness, i.blur, i.jpeg_quality
        FROM {_from(*exprs)} {join}
        WHERE {where} ORDER BY {orders[order]}, p.image_id LIMIT {int(limit)}"""
    with connect(db) as con:
        if not image_keys:
            return con.execute(q, prm).df()
        con.register("keys", keys)
        try:
            return con.execute(q, prm).df()
        finally:
            con.unregister("keys")


@query
def images_by_key(db: str, ver: str, image_keys: tuple) -> pd.DataFrame:
    """The images rows (labels and measured attributes: every column of bench.store.TABLES['images']) of the given
    ((dataset, image_id), ...) keys, for the Browser's full-image view and its list of flagged labels."""
    keys = pd.DataFrame(list(image_keys), columns=["dataset", "image_id"]).astype(str)
    with connect(db) as con:
        con.register("keys", keys)
        try:
            return con.execute("SELECT i.* FROM images i JOIN keys k USING (dataset, image_id) "
                               "ORDER BY i.dataset, i.image_id").df()
        finally:
            con.unregister("keys")


@query
def image_predictions(db: str, ver: str, dataset: str, image_id: str, models: tuple, perturbation: str = "none",
                      severity: int = 0, mode: str | None = None) -> pd.DataFrame:
    """Each given model's prediction for one image in one inference mode, with its uncertainties: on the clean image
    and, when asked, at one perturbation and severity (the Browser's full-image view)."""
    mw, mp = _mode_where(mode)
    mc, mprm = _models_clause(models)
    return sql(db, f"""
        SELECT p.model_id, m.kind, p.perturbation, p.severity, p.age_pred, p.age_pred - i.age AS err,
               p.sigma_aleatoric, p.sigma_epistemic, p.sigma_tta, p.gender_prob
        FROM predictions p JOIN images i USING (dataset, image_id) LEFT JOIN models m USING (model_id)
        WHERE {mw} AND p.dataset = ? AND p.image_id = ? {mc}
          AND ((p.perturbation = 'none' AND p.severity = 0) OR (p.perturbation = ? AND p.severity = ?))
        ORDER BY p.perturbation <> 'none', p.model_id""",
               mp + [dataset, image_id] + mprm + [perturbation, int(severity)])


@query
def clean_scores(db: str, ver: str, split: str = "test", mode: str | None = None) -> pd.DataFrame:
    """Per (model, eval dataset): clean MAE with CI and gender accuracy, for the data studies and cross-dataset."""
    where, prm = _eval_where("*", split, mode=mode)
    df = sql(db, f"""
        SELECT p.model_id, p.dataset AS eval_dataset, {BASE_AGG}
        FROM predictions p JOIN images i USING (dataset, image_id)
        WHERE {where} GROUP BY ALL""", prm)
    return _finish(df)


@query
def generalization(db: str, ver: str, split: str = "test", mode: str | None = None) -> pd.DataFrame:
    """Per (model, eval dataset), clean predictions: MAE (where ages exist), gender accuracy, and for sets without
    ages but with a `Young` label the AUC of predicted age for it, all with 95 % CIs; plus how many images the face
    pipeline found a face in (the others were predicted on the fallback crop)."""
    where, prm = _eval_where("*", split, mode=mode)
    with connect(db) as con:
        have = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                          "WHERE table_name = 'images'").fetchall()}
        found = ("count(*) FILTER (WHERE i.face_found) AS faces_found, count(i.face_found) AS faces_checked"
                 if "face_found" in have else "NULL::BIGINT AS faces_found, 0 AS faces_checked")
        agg = con.execute(f"""
            SELECT p.model_id, p.dataset AS eval_dataset, {BASE_AGG}, count(*) AS images, {found}
            FROM predictions p JOIN images i USING (dataset, image_id) WHERE {where} GROUP BY ALL""", prm).df()
        young = con.execute(f"""
            WITH y AS (SELECT p.model_id, p.dataset, round(p.age_pred, 1) AS a,
                              count(*) FILTER (WHERE (i.extras->>'Young')::INTEGER = 1) AS pos,
                              count(*) FILTER (WHERE (i.extras->>'Young')::INTEGER = 0) AS neg
                       FROM predictions p JOIN images i USING (dataset, image_id)
                       WHERE {where} AND p.age_pred IS NOT NULL AND i.extras->>'Young' IS NOT NULL GROUP BY ALL),
                 c AS (SELECT model_id, dataset, pos, neg, coalesce(sum(neg) OVER (PARTITION BY model_id, dataset
                           ORDER BY a DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS neg_below FROM y)
            SELECT model_id, dataset AS eval_dataset, sum(pos * (neg_below + 0.5 * neg)) AS s, sum(pos) AS P,
                   sum(neg) AS N FROM c GROUP BY ALL""", prm).df()
    agg = _finish(agg)
    if agg.empty:
        return agg
    if len(young):  # younger predicted age ranks "Young" higher: neg_below counts older-predicted negatives
        auc = auc_hanley_mcneil(young).rename(columns={"gender_auc": "young_auc", "gender_auc_lo": "young_auc_lo",
                                                       "gender_auc_hi": "young_auc_hi"})
        auc["eval_dataset"] = young["eval_dataset"].to_numpy()
        agg = agg.merge(auc, on=["model_id", "eval_dataset"], how="left")
    else:
        agg["young_auc"] = agg["young_auc_lo"] = agg["young_auc_hi"] = np.nan
    checked = agg["faces_checked"].astype(float).where(agg["faces_checked"] > 0)  # rows from before the pipeline
    agg["face_found_rate"] = pd.to_numeric(agg["faces_found"], errors="coerce").astype(float) / checked
    agg.loc[agg["n"] == 0, ["mae", "mae_lo", "mae_hi"]] = np.nan
    return agg


@query
def bench_runs(db: str, ver: str) -> pd.DataFrame:
    return sql(db, "SELECT * FROM bench_runs ORDER BY started DESC")


@query
def slice_frame(db: str, ver: str, model: str, dataset: str, split: str, mode: str | None = None) -> pd.DataFrame:
    """One row per clean image one model predicted on (dataset, split) in one inference mode: its labels, image
    attributes and the prediction, for the slice search (dashboard.data.slices bins and searches these columns)."""
    where, prm = _eval_where(dataset, split, mode=mode)
    return sql(db, f"""
        SELECT p.dataset, p.image_id, i.age, i.gender, i.race, i.brightness, i.contrast, i.blur, i.jpeg_quality,
               i.face_size, i.background, i.face_score, i.face_found, p.age_pred, p.gender_prob
        FROM predictions p JOIN images i USING (dataset, image_id)
        WHERE {where} AND p.model_id = ? ORDER BY p.dataset, p.image_id""", prm + [model])


# ------------------------------------------------------------------------------------------------ embedding maps
def _has_embeddings(con) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'embeddings'")
                .fetchone()[0])


@query
def embedding_maps(db: str, ver: str) -> pd.DataFrame:
    """(model_id, dataset, method, n) of every embedding map in the DB (`bench run --embed`); empty for a DB written
    before the table existed."""
    with connect(db) as con:
        if not _has_embeddings(con):
            return pd.DataFrame(columns=["model_id", "dataset", "method", "n"])
        return con.execute("SELECT e.model_id, e.dataset, min(e.method) AS method, count(*) AS n "
                           "FROM embeddings e GROUP BY ALL ORDER BY e.model_id, e.dataset").df()


# images columns the map can be coloured by, besides the labels and the model's errors
EMBEDDING_IMAGE_COLUMNS = ("brightness", "contrast", "blur", "jpeg_quality", "resolution", "face_size", "background",
                           "face_score", "face_found", "is_synthetic")


@query
def embedding_map(db: str, ver: str, model: str, dataset: str, split: str = "*",
                  mode: str | None = None) -> pd.DataFrame:
    """One row per image of a model's embedding map of `dataset` (`split` '*' = all): its point (x, y), labels
    (age, age group, gender, race), measured attributes, the model's clean prediction in one inference mode (NULL
    where it has none in that mode) with its error, and every numeric or yes/no key of the image's `extras` (CelebA
    attributes) as a column of its own."""
    mw, mp = _mode_where(mode)
    cond, prm = "", [model, dataset]
    if split and split != "*":
        cond, prm = " AND i.split = ?", prm + [split]
    cols = ", ".join(f"i.{c}" for c in EMBEDDING_IMAGE_COLUMNS)
    with connect(db) as con:
        if not _has_embeddings(con):
            return pd.DataFrame(columns=["dataset", "image_id", "method", "x", "y"])
        df = con.execute(f"""
            SELECT e.dataset, e.image_id, e.method, e.x, e.y, i.split, i.path, i.age, {AGE_GROUP_SQL} AS age_group,
                   {GENDER_SQL} AS gender, {RACE_SQL} AS race, {cols}, i.extras,
                   p.age_pred, p.age_pred - i.age AS err, abs(p.age_pred - i.age) AS abs_err, p.gender_prob,
                   CASE WHEN p.gender_prob IS NULL OR i.gender IS NULL THEN NULL
                        ELSE (p.gender_prob >= 0.5) <> (i.gender = 1) END AS gender_wrong
            FROM embeddings e JOIN images i USING (dataset, image_id)
                 LEFT JOIN predictions p ON p.model_id = e.model_id AND p.dataset = e.dataset
                      AND p.image_id = e.image_id AND p.perturbation = 'none' AND p.severity = 0 AND {mw}
            WHERE e.model_id = ? AND e.dataset = ?{cond} ORDER BY e.image_id""", mp + prm).df()
    return _expand_extras(df)


def _expand_extras(df: pd.DataFrame) -> pd.DataFrame:
    """The `extras` JSON column replaced by one column per key whose values are numbers or yes/no (a key that
    clashes with a column keeps the column)."""
    import json

    parsed = [json.loads(x) if isinstance(x, str) and x else {} for x in df.pop("extras")] if "extras" in df else []
    keys = dict.fromkeys(k for d in parsed if isinstance(d, dict) for k in d)
    for k in keys:
        if k in df.columns:
            continue
        vals = [d.get(k) if isinstance(d, dict) else None for d in parsed]
        if all(v is None or (isinstance(v, (int, float, bool)) and not isinstance(v, str)) for v in vals):
            df[k] = pd.to_numeric(pd.Series(vals, index=df.index, dtype="object"), errors="coerce")
    return df
