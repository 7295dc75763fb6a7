"""Every read of the predictions database (bench/SCHEMA.md) and every metric the dashboard shows.

Rules that keep the app responsive while a bench run writes:
* connections are read-only and short-lived: one per query, or one per Streamlit script run inside `batch()`
  (opened at the first cache miss, closed when the run ends), so a bench merge gets the file within a second or two;
* a locked file is retried (`bench.store.connect_read` when the bench provides it) and, if still locked, the last
  good result of the same query is served (`stale()` then says so) instead of failing the page;
* results are cached with `st.cache_data`, keyed on the database's (mtime, size) "version", so a finished bench
  merge invalidates the cache by itself.

Every public query has the signature `fn(db: str, ver: str, ...)`, returns a small pandas DataFrame and is wrapped
by `@query` (cached). `fn.raw` is the uncached function (for `benchmarks/dashboard_queries.py`).

Aggregations run in SQL (DuckDB) so pages stay fast on millions of rows. Confidence intervals (95 %) are analytic:
normal approximation for MAE / bias (n is in the thousands per model and in the hundreds per group), a
delta-method interval for RMSE, Wilson intervals for proportions (CS@5, ±10y, gender accuracy, TPR/FPR) and
Hanley–McNeil for the gender AUC (Mann–Whitney over 0.01-wide logit bins of P(female): within ~1e-3 of the exact
value). `bench.metrics` (the numbers of `python -m bench report`) uses a percentile bootstrap over rows, which would
cost seconds per page on millions of rows; the point metrics are identical and the intervals agree to a fraction of
their width (tests/test_dashboard_queries.py checks both against bench.metrics).
"""
from __future__ import annotations

import functools
import json
import os
import re
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from bench import store
from zoo.modes import PLAIN, REGISTRY_MODES, metrics_key
from zoo.runs import RunRecord

try:
    import streamlit as st
except ImportError:  # pragma: no cover - the benchmark can run without streamlit installed
    st = None

Z95 = 1.959963984540054
AGE_GROUPS = ["0-12", "13-19", "20-39", "40-59", "60+"]
# Tables and columns a readable DB has: the bench's schema (bench.store.TABLES), never a copy of it.
TABLES = {t: set(store.columns(t)) for t in store.TABLES}
# Coverage levels for the Gaussian reliability diagram: nominal p -> z with P(|N(0,1)| <= z) = p.
COVERAGE_LEVELS = {0.5: 0.6744897501960817, 0.68: 0.994457883209753, 0.8: 1.2815515655446004,
                   0.9: 1.6448536269514722, 0.95: 1.959963984540054, 0.99: 2.5758293035489004}
# Uncertainty sources: label -> SQL expression (NULL where not available).
SIGMA_SOURCES = {
    "aleatoric": "sigma_aleatoric",
    "MC-Dropout": "CASE WHEN kind <> 'ensemble' THEN sigma_epistemic END",
    "ensemble spread": "CASE WHEN kind = 'ensemble' THEN sigma_epistemic END",
    "TTA": "sigma_tta",
    "total (aleatoric ⊕ epistemic)": "sqrt(sigma_aleatoric * sigma_aleatoric + sigma_epistemic * sigma_epistemic)",
}


class DBBusy(RuntimeError):
    """The database is locked by a writer (a bench run) and no earlier result of this query is cached."""


class DBUnavailable(RuntimeError):
    """The database is missing, empty or does not follow the schema; the message says what to do."""


# ------------------------------------------------------------------------------------------------ location, access
def db_path() -> Path:
    """The predictions DB: $ZOO_BENCH_DB, else <artifacts>/bench.duckdb."""
    env = os.environ.get("ZOO_BENCH_DB")
    if env:
        return Path(env)
    from zoo.paths import artifacts_dir

    return artifacts_dir() / "bench.duckdb"


def db_version(path: str | Path) -> str:
    """A token that changes whenever the DB (or its write-ahead log) changes; "" when the file is missing."""
    path = Path(path)
    parts = []
    for p in (path, path.with_name(path.name + ".wal")):
        try:
            s = p.stat()
            parts.append(f"{s.st_mtime_ns}:{s.st_size}")
        except OSError:
            parts.append("-")
    return "" if parts[0] == "-" else "|".join(parts)


def _is_lock_error(e: Exception) -> bool:
    msg = str(e).lower()
    return "lock" in msg or "conflicting" in msg or "being used by another process" in msg


_BUSY_UNTIL: dict[str, float] = {}  # db path -> monotonic time before which we do not even try (a writer holds it)


def _lock_timeout() -> float:
    try:
        return float(os.environ.get("DASHBOARD_DB_LOCK_TIMEOUT", "2.0"))
    except ValueError:
        return 2.0


def _open_read(path: str):
    """Read-only connection through bench.store.connect_read, which retries while a writer holds the lock.

    A bench merge holds the file well under a second, so DASHBOARD_DB_LOCK_TIMEOUT (default 2 s) of retries is
    plenty; after that the query raises DBBusy (the caller serves the last good result) and, for the next few
    seconds, other queries fail fast instead of each waiting again."""
    import duckdb

    from bench.store import connect_read

    timeout = _lock_timeout()
    if time.monotonic() < _BUSY_UNTIL.get(path, 0.0):
        raise DBBusy(f"{path} is locked by a writer (a bench run?)")
    try:
        return connect_read(path, timeout=timeout)
    except duckdb.Error as e:
        if _is_lock_error(e):
            _BUSY_UNTIL[path] = time.monotonic() + max(1.0, 1.5 * timeout)
            raise DBBusy(f"{path} is locked by a writer (a bench run?): {e}") from None
        raise


def pending_rows(db: str) -> int:
    """Prediction rows a bench run has published as Parquet parts but not merged into the DB yet (0 when the parts
    folder cannot be read: the count is informational)."""
    from bench.store import pending_rows as _pending

    try:
        return int(_pending(db, "predictions"))
    except Exception:
        return 0


_LOCAL = threading.local()


@contextmanager
def batch():
    """Within one script run (app.py wraps each page in it): queries share one read-only connection per DB, opened
    at the first cache miss and closed when the run ends — so a page with five uncached queries pays one connect,
    and the file is still free again within the run's second or two."""
    prev = getattr(_LOCAL, "cons", None)
    _LOCAL.cons = {}
    try:
        yield
    finally:
        for con in _LOCAL.cons.values():
            try:
                con.close()
            except Exception:
                pass
        _LOCAL.cons = prev


def release() -> None:
    """Close this run's shared connections now (before slow non-DB work, e.g. running models on a photo)."""
    cons = getattr(_LOCAL, "cons", None)
    if cons:
        for con in cons.values():
            try:
                con.close()
            except Exception:
                pass
        cons.clear()


def _configure(con) -> None:
    try:
        con.execute("SET threads = 2")
    except Exception:
        pass


@contextmanager
def connect(db: str):
    """A short-lived read-only connection (shared for the current script run inside `batch()`)."""
    db = str(db)
    if not Path(db).is_file():
        raise DBUnavailable(f"no predictions database at {db}")
    shared = getattr(_LOCAL, "cons", None)
    if shared is not None:
        con = shared.get(db)
        if con is None:
            con = shared[db] = _open_read(db)
            _configure(con)
        yield con
        return
    con = _open_read(db)
    try:
        _configure(con)
        yield con
    finally:
        con.close()


def sql(db: str, q: str, params: list | dict | None = None) -> pd.DataFrame:
    with connect(db) as con:
        return con.execute(q, params or []).df()


# ------------------------------------------------------------------------------------------------------- caching
_LAST: "OrderedDict[tuple, object]" = OrderedDict()
_LAST_LOCK = threading.Lock()
_STALE = threading.local()


def stale() -> list[str]:
    """Queries of the current run that were served from the last good result because the DB was locked."""
    return list(getattr(_STALE, "names", []))


def reset_stale() -> None:
    _STALE.names = []


def query(fn):
    """Cache a query on (db, ver, args); fall back to the last good result while a writer holds the DB."""
    cached = st.cache_data(show_spinner=False, max_entries=512)(fn) if st is not None else fn

    @functools.wraps(fn)
    def call(db, ver, *args, **kw):
        key = (fn.__name__, str(db), args, tuple(sorted(kw.items())))
        try:
            out = cached(str(db), ver, *args, **kw)
        except DBBusy:
            with _LAST_LOCK:
                if key in _LAST:
                    names = getattr(_STALE, "names", [])
                    names.append(fn.__name__)
                    _STALE.names = names
                    return _LAST[key]
            raise
        with _LAST_LOCK:
            _LAST[key] = out
            _LAST.move_to_end(key)
            while len(_LAST) > 256:
                _LAST.popitem(last=False)
        return out

    call.raw = fn
    call.clear = getattr(cached, "clear", lambda: None)
    return call


# --------------------------------------------------------------------------------------------------- statistics
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
# a quarter of grouping by every distinct probability.
AUC_BIN_SQL = ("round(ln(greatest(p.gender_prob, 1e-9) / greatest(1 - p.gender_prob, 1e-9)) * 100)::INTEGER")


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
    "age group": (AGE_GROUP_SQL, False, AGE_GROUPS + ["unknown"]),
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
            missing = [t for t in TABLES if t not in tables]
            if missing:
                return {"state": "invalid" if tables else "empty",
                        "message": f"`{db}` has no table(s) {', '.join(missing)}: it is not (yet) a predictions "
                                   "database (see bench/SCHEMA.md)."}
            bad = []
            for t, cols in TABLES.items():
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
    info = [json.loads(x) if isinstance(x, str) and x else (x if isinstance(x, dict) else {}) for x in df["info"]]
    df["parent"] = [i.get("parent") for i in info]
    df["adapted_to"] = [(i.get("data") or {}).get("adapted_to") for i in info]
    df["members"] = [",".join(i.get("members", [])) for i in info]
    df["label"] = [n if n and n != m else m for n, m in zip(df["name"], df["model_id"])]
    return df


@query
def eval_sets(db: str, ver: str) -> pd.DataFrame:
    """(dataset, split) pairs with clean predictions: images, rows."""
    return sql(db, """
        WITH c AS (SELECT dataset, image_id, count(*) AS rows FROM predictions WHERE perturbation = 'none'
                   GROUP BY ALL)
        SELECT c.dataset, i.split, count(*) AS images, sum(c.rows) AS rows
        FROM c JOIN images i USING (dataset, image_id) GROUP BY ALL ORDER BY images DESC""")


@query
def leaderboard(db: str, ver: str, dataset: str, split: str, mode: str | None = None) -> pd.DataFrame:
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
def group_metrics(db: str, ver: str, models: tuple, dataset: str, split: str, by: str,
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
        order = {g: k for k, g in enumerate(AGE_GROUPS)}
        df = df.sort_values(["model_id", "grp"], key=lambda s: s.map(order).fillna(99) if s.name == "grp" else s)
    return df.reset_index(drop=True)


def fairness_gaps(groups: pd.DataFrame, min_n: int = 30) -> pd.DataFrame:
    """Per model, across groups with at least min_n images (unknown excluded): MAE gap (max - min), the groups at
    either end, gender-accuracy gap, and the equalized-odds difference max(range TPR, range FPR) of the
    gender classifier."""
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
        for p, z in COVERAGE_LEVELS.items():
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
            for p in COVERAGE_LEVELS:
                row[f"cov_{int(round(p * 100))}"] = r[f"c_{k}_{int(round(p * 100))}"]
            row["calib_error"] = float(np.mean([abs(row[f"cov_{int(round(p * 100))}"] - p) for p in COVERAGE_LEVELS]))
            rows.append(row)
    return pd.DataFrame(rows)


def coverage_long(summary: pd.DataFrame) -> pd.DataFrame:
    """uncertainty_summary -> long (model_id, source, nominal, observed) for reliability plots."""
    if summary.empty:
        return pd.DataFrame(columns=["model_id", "source", "nominal", "observed"])
    parts = []
    for p in COVERAGE_LEVELS:
        d = summary[["model_id", "source"]].copy()
        d["nominal"], d["observed"] = p, summary[f"cov_{int(round(p * 100))}"]
        parts.append(d)
    return pd.concat(parts, ignore_index=True).sort_values(["model_id", "source", "nominal"])


@query
def risk_coverage(db: str, ver: str, models: tuple, dataset: str, split: str, mode: str | None = None) -> pd.DataFrame:
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


def aurc(curves: pd.DataFrame) -> pd.DataFrame:
    """Area under each risk–coverage curve (lower is better) per (model, source)."""
    rows = []
    for (mid, src), d in curves.groupby(["model_id", "source"], sort=False):
        cov = np.concatenate([[0.0], d["coverage"].to_numpy()])
        risk = np.concatenate([[d["mae"].iloc[0]], d["mae"].to_numpy()])
        rows.append({"model_id": mid, "source": src, "aurc": float(np.trapezoid(risk, cov))})
    return pd.DataFrame(rows, columns=["model_id", "source", "aurc"])


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


@query
def robustness(db: str, ver: str, models: tuple, dataset: str, split: str, mode: str | None = None) -> pd.DataFrame:
    """MAE and gender accuracy per (model, perturbation, severity); severity 0 of each perturbation is the clean
    prediction on the same images (so the curve starts at a like-for-like baseline), all in one inference mode."""
    where, prm = _eval_where(dataset, split, clean=False, mode=mode)
    mc, mp = _models_clause(models)
    df = sql(db, f"""
        WITH r AS (SELECT p.model_id, p.dataset, p.image_id, p.perturbation, p.severity, p.age_pred, p.gender_prob,
                          i.age, i.gender
                   FROM predictions p JOIN images i USING (dataset, image_id) WHERE {where}{mc}),
             pimg AS (SELECT DISTINCT model_id, dataset, image_id, perturbation FROM r
                      WHERE perturbation <> 'none' AND severity = 1),
             rows AS (SELECT model_id, perturbation, severity, age_pred, gender_prob, age, gender
                      FROM r WHERE perturbation <> 'none'
                      UNION ALL
                      SELECT r.model_id, pimg.perturbation, 0, age_pred, gender_prob, age, gender
                      FROM r JOIN pimg USING (model_id, dataset, image_id) WHERE r.perturbation = 'none')
        SELECT model_id, perturbation, severity, count(age) AS n, avg(abs(age_pred - age)) AS mae,
               stddev_samp(abs(age_pred - age)) AS sd_ae, avg(age_pred - age) AS bias,
               avg(((gender_prob >= 0.5) = (gender = 1))::DOUBLE) FILTER (WHERE gender_prob IS NOT NULL
                   AND gender IS NOT NULL) AS gender_acc
        FROM rows GROUP BY ALL ORDER BY model_id, perturbation, severity""", prm + mp)
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


# ------------------------------------------------------------------------------------------- registry (no DB)
def runs_root() -> Path:
    from zoo.paths import runs_dir

    return runs_dir()


def registry_version() -> str:
    """Changes when a run is added, removed or rewritten."""
    root = runs_root()
    if not root.is_dir():
        return f"{root}|-"
    return f"{root}|" + "|".join(f"{p.parent.name}:{p.stat().st_mtime_ns}" for p in sorted(root.glob("*/run.json")))


def _registry_runs_impl(ver: str) -> list[RunRecord]:
    return read_runs(runs_root())


def read_runs(root: Path) -> list[RunRecord]:
    """Every <root>/<id>/run.json (zoo.runs.RunRecord.load_all: light, no torch, for pages that only read)."""
    return RunRecord.load_all(root)


registry_runs = st.cache_data(show_spinner=False)(_registry_runs_impl) if st is not None else _registry_runs_impl


def relations(ver: str) -> pd.DataFrame:
    return model_relations(registry_runs(ver))


def registry_table(ver: str, mode: str = PLAIN) -> pd.DataFrame:
    """Registered runs as leaderboard-like rows (test metrics from run.json in inference mode `mode`: plain, flip or
    flip+crop, `zoo.modes.metrics_key`; NaN in modes run.json has no metrics for; no CIs: no per-image
    predictions)."""
    key = metrics_key(mode, "test")
    runs = registry_runs(ver)
    by_id = {r.id: r for r in runs}
    rows = []
    for r in runs:
        t = (r.metrics.get(key) or {}) if key else {}
        row = r.to_row(by_id)  # the bench's own run -> `models` row (light: no torch)
        del row["info"]
        rows.append({**row, "mae": t.get("mae"), "rmse": t.get("rmse"), "cs5": t.get("cs5"),
                     "acc10": t.get("acc10"), "gender_acc": t.get("gender_acc"), "f1": t.get("gender_f1"),
                     "gender_auc": t.get("gender_auc"), "n": t.get("n"),
                     "parent": r.parent, "adapted_to": r.adapted_to,
                     "members": ",".join(r.members), "budget": _budget(r.config)})
    return pd.DataFrame(rows)


def leaderboard_board(lb: pd.DataFrame, registry: pd.DataFrame) -> pd.DataFrame:
    """The Leaderboard page's rows for one inference mode: the bench DB's rows (`leaderboard(..., mode)`, origin
    `bench DB`), then every registered run the DB has no rows of in that mode, with its run.json metrics of the same
    mode (`registry_table(ver, mode)`; origin `registry run.json (not benchmarked)`), or, in a mode run.json has no
    metrics for (MC-Dropout passes), listed without numbers (origin NO_NUMBERS): a board never mixes modes."""
    rows = []
    if len(lb):
        d = lb.copy()
        d["origin"] = "bench DB"
        rows.append(d)
    if len(registry):
        reg = registry[~registry["model_id"].isin(lb["model_id"] if len(lb) else [])].copy()
        if len(reg):
            cols = [c for c in ("mae", "gender_acc") if c in reg]
            has = reg[cols].notna().any(axis=1) if cols else pd.Series(False, index=reg.index)
            reg["origin"] = np.where(has, "registry run.json (not benchmarked)", NO_NUMBERS)
            rows.append(reg)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


NO_NUMBERS = "registry (no numbers in this mode)"


def _budget(cfg: dict) -> str | None:
    """The training budget a run had (steps or epochs, batch, lr): runs compared in a study must share it."""
    if not cfg:
        return None
    length = f"{cfg['max_steps']} steps" if cfg.get("max_steps") else f"{cfg.get('epochs')} epochs"
    return f"{length} x {cfg.get('batch_size')} @ lr {cfg.get('lr')}"


def history(model_id: str) -> pd.DataFrame | None:
    """The run's history.csv (one row per epoch), or None."""
    if "/" in model_id or "\\" in model_id or model_id.startswith("."):
        return None
    p = runs_root() / model_id / "history.csv"
    if not p.is_file():
        return None
    try:
        return pd.read_csv(p)
    except Exception:
        return None


def dataset_root(dataset: str) -> Path | None:
    """Where the dataset's images live: the scanned manifest's root (cache/manifests/<dataset>.json), else the
    team's shared copy (zoo.data.manifest.DEFAULT_ROOTS); None when neither exists."""
    from zoo.paths import cache_dir, shared_data_dir

    side = cache_dir() / "manifests" / f"{dataset}.json"
    try:
        root = Path(json.loads(side.read_text())["root"])
        if root.is_dir():
            return root
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        from zoo.data.manifest import DEFAULT_ROOTS
    except Exception:
        DEFAULT_ROOTS = {}
    if dataset in DEFAULT_ROOTS:
        root = shared_data_dir() / DEFAULT_ROOTS[dataset]
        if root.is_dir():
            return root
    return None


def safe_image_path(root: str | Path, rel: str) -> Path | None:
    """root/rel if it is a file that stays inside root (no absolute paths, '..' or symlinks out); else None."""
    from zoo.data.readers import outside_root  # the scan's rule, so the scan and the Browser agree on every file

    if not rel or os.path.isabs(rel) or "\x00" in rel or not Path(root).is_dir():
        return None
    if outside_root(root, Path(root) / rel) is not None:
        return None
    p = (Path(root) / rel).resolve()
    return p if p.is_file() else None


# ---------------------------------------------------------------------------------------------- data studies
# factor -> (title, values the default zoo trains, numeric axis?)
STUDY_FACTORS = {
    "augment": ("Augmentation (none / light / strong)", ["none", "light", "strong"], False),
    "train_fraction": ("Learning curve (fraction of the training split)", [0.1, 0.25, 0.5, 1.0], True),
    "age_balance": ("Age imbalance strategy", ["none", "inv_freq", "sqrt_inv", "lds", "balanced_sampler"], False),
    "gender_balance": ("Gender imbalance strategy", ["none", "undersample", "reweight"], False),
    "data_source": ("Real vs synthetic vs mixed training data", ["real", "synthetic", "mixed"], False),
    "init": ("Pretrained vs from scratch", ["scratch", "imagenet"], False),
}
STUDY_CONTROLS = ["train_dataset", "backbone", "formulation", "img_size", "tasks", "dropout", "augment",
                  "train_fraction", "age_balance", "gender_balance", "data_source", "init", "budget"]


def _data_source(training_data) -> str | None:
    if not isinstance(training_data, str) or not training_data:
        return None
    ds, _, src = training_data.partition("+")
    src = src or ("synth" if ds.startswith("synth") else "real")
    if src.startswith("mixed"):
        return "mixed"
    if src.startswith("synth"):
        return "synthetic"
    return "real" if src == "real" else src


def _init(pretrained) -> str:
    if pretrained is None or (isinstance(pretrained, float) and np.isnan(pretrained)) or pretrained in ("", "none"):
        return "scratch"
    return "imagenet" if pretrained == "imagenet" else "checkpoint"


def study_frame(db_models: pd.DataFrame, scores: pd.DataFrame | None, registry: pd.DataFrame) -> pd.DataFrame:
    """One row per zoo model (DB or registry-only): its factors and clean MAE / gender accuracy on the test split of
    the dataset it was trained on (DB, with CI) or its run.json test metrics (registry-only, no CI)."""
    cols = ["model_id", "label", "kind", "backbone", "formulation", "img_size", "tasks", "dropout", "augment",
            "train_fraction", "age_balance", "gender_balance", "training_data", "pretrained", "parent", "adapted_to"]
    parts = []
    if len(db_models):
        d = db_models[db_models["source"].fillna("zoo") != "peer"].reindex(columns=cols).copy()
        d["origin"] = "bench DB"
        parts.append(d)
    if len(registry):
        r = registry.rename(columns={"name": "label"})
        r = r[~r["model_id"].isin(parts[0]["model_id"] if parts else [])]
        if len(r):
            r = r.reindex(columns=cols + ["mae", "gender_acc"]).copy()
            r["origin"] = "registry run.json"
            parts.append(r)
    if not parts:
        return pd.DataFrame(columns=cols + ["origin", "mae", "mae_lo", "mae_hi", "gender_acc", "n"])
    f = pd.concat(parts, ignore_index=True)
    f["train_dataset"] = [t.partition("+")[0] if isinstance(t, str) else None for t in f["training_data"]]
    f["data_source"] = [_data_source(t) for t in f["training_data"]]
    f["init"] = [_init(p) for p in f["pretrained"]]
    # Budget only comes from run.json: DB-only models have none and then compare among themselves.
    f["budget"] = f["model_id"].map(dict(zip(registry["model_id"], registry["budget"]))) \
        if "budget" in registry else None
    if scores is not None and len(scores):
        s = scores.rename(columns={"eval_dataset": "train_dataset"})[
            ["model_id", "train_dataset", "mae", "mae_lo", "mae_hi", "gender_acc", "n"]]
        f = f.merge(s, on=["model_id", "train_dataset"], how="left", suffixes=("_reg", ""))
        if "mae_reg" in f:
            f["mae"] = f["mae"].fillna(pd.to_numeric(f.pop("mae_reg"), errors="coerce"))
            f["gender_acc"] = f["gender_acc"].fillna(pd.to_numeric(f.pop("gender_acc_reg"), errors="coerce"))
    for col in ("mae", "mae_lo", "mae_hi", "gender_acc", "n"):
        if col not in f:
            f[col] = np.nan
    return f


def study(frame: pd.DataFrame, factor: str) -> dict:
    """Controlled comparisons for one factor: runs of kind 'single' that agree on every other control column form a
    group; groups where the factor takes >= 2 values are the study. Returns {rows (with 'group'), tried, missing,
    all_values}."""
    expected = STUDY_FACTORS[factor][1]
    f = frame[(frame["kind"].fillna("single") == "single")].copy()
    present = sorted({v for v in f[factor].dropna().unique()}, key=lambda v: (str(type(v)), v))
    controls = [c_ for c_ in STUDY_CONTROLS if c_ != factor and c_ in f]
    if f.empty:
        return {"rows": f.assign(group=[]), "tried": [], "missing": list(expected), "all_values": []}
    key = f[controls].apply(lambda col: col.map(str)).agg(" | ".join, axis=1)  # map(str): NaN -> "nan"
    f["group"] = key
    n_vals = f.groupby("group")[factor].nunique()
    keep = n_vals[n_vals >= 2].index
    rows = f[f["group"].isin(keep)].copy()
    # readable group names: what the group holds fixed that differs between groups
    if len(keep):
        fixed = rows.groupby("group")[controls].first()
        varying = [c_ for c_ in controls if fixed[c_].astype(str).nunique() > 1] or ["backbone", "formulation"]
        names = {g: ", ".join(f"{c_}={fixed.loc[g, c_]}" for c_ in varying) for g in fixed.index}
        rows["group"] = rows["group"].map(names)
    tried = sorted({v for v in rows[factor].dropna().unique()}, key=lambda v: (str(type(v)), v))
    missing = [v for v in expected if not any(_same(v, t) for t in present)]
    return {"rows": rows, "tried": tried, "missing": missing, "all_values": present}


def _same(a, b) -> bool:
    try:
        return abs(float(a) - float(b)) < 1e-9
    except (TypeError, ValueError):
        return str(a) == str(b)


def synthetic_sets(root: Path | None = None) -> list[dict]:
    """The fidelity reports `python -m synth fidelity` wrote (artifacts/synth/<set>/fidelity.json), newest first,
    each with `grid_path` (its sample grid, when present) and `per_bin`: one row per age bin with the judging model's
    MAE on the synthetic images (intended vs predicted age) and on real test faces of that bin."""
    from zoo.paths import artifacts_dir

    root = root or artifacts_dir() / "synth"
    out = []
    for f in sorted(root.glob("*/fidelity.json"), key=lambda x: x.stat().st_mtime, reverse=True):
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            continue  # a half-written or foreign file: skipped, the others still show
        syn, real = rec.get("synthetic") or {}, rec.get("real_test") or {}
        rows = [{"age_bin": b, "synthetic_mae": v.get("mae"), "synthetic_bias": v.get("bias"), "n": v.get("n"),
                 "gender_agreement": v.get("gender_agreement"),
                 "real_test_mae": (real.get("per_bin") or {}).get(b, {}).get("mae")}
                for b, v in (syn.get("per_bin") or {}).items()]
        grid = f.parent / (rec.get("grid") or {}).get("file", "grid.png")
        out.append({**rec, "per_bin": pd.DataFrame(rows), "grid_path": grid if grid.is_file() else None})
    return out


def model_relations(runs: list[dict]) -> pd.DataFrame:
    """For each registered run, its AdaBN variants and its twin trained on the primary dataset alone (same config
    but for the extra datasets of its mix and the step budget), so the Generalization page can put them side by
    side. Columns: model_id, relation (adabn / single-dataset twin), related."""
    drop = ("name", "datasets", "epochs", "max_steps", "patience")

    def key(r: dict) -> str:
        return json.dumps({k: v for k, v in (r.get("config") or {}).items() if k not in drop}, sort_keys=True)

    def primary(r: dict) -> list:
        mix = (r.get("config") or {}).get("datasets") or []
        ds = (r.get("config") or {}).get("dataset")
        return [e for e in mix if isinstance(e, dict) and e.get("name") == ds]

    rows = []
    singles = [r for r in runs if r.get("kind") == "single"]
    for r in runs:
        if r.get("kind") == "adapted" and r.get("parent"):
            rows.append({"model_id": r["parent"], "relation": "AdaBN", "related": r["id"]})
        mix = (r.get("config") or {}).get("datasets") or []
        if r.get("kind") == "single" and len(mix) > len(primary(r)):
            for t in singles:
                tmix = (t.get("config") or {}).get("datasets") or []
                if t["id"] != r["id"] and key(t) == key(r) and len(tmix) == len(primary(t)) \
                        and primary(t) == primary(r):
                    rows.append({"model_id": r["id"], "relation": "single-dataset twin", "related": t["id"]})
    return pd.DataFrame(rows, columns=["model_id", "relation", "related"])


def cross_dataset(frame: pd.DataFrame, scores: pd.DataFrame) -> dict:
    """Matrices trained-on x evaluated-on of the best clean MAE: plain single networks and AdaBN-adapted ones, plus
    the parent-vs-adapted pairs on each adaptation target."""
    empty = pd.DataFrame()
    if scores is None or not len(scores) or not len(frame):
        return {"plain": empty, "adabn": empty, "pairs": empty}
    s = scores.merge(frame[["model_id", "kind", "train_dataset", "parent", "adapted_to", "label"]], on="model_id")
    plain = s[s["kind"] == "single"].pivot_table(index="train_dataset", columns="eval_dataset", values="mae",
                                                  aggfunc="min")
    ad = s[s["kind"] == "adapted"]
    adabn = ad.pivot_table(index="train_dataset", columns="eval_dataset", values="mae", aggfunc="min") if len(ad) \
        else empty
    pairs = []
    for _, r in ad.drop_duplicates("model_id").iterrows():
        tgt = r["adapted_to"]
        after = s[(s["model_id"] == r["model_id"]) & (s["eval_dataset"] == tgt)]
        before = s[(s["model_id"] == r["parent"]) & (s["eval_dataset"] == tgt)]
        pairs.append({"adapted model": r["label"], "parent": r["parent"], "target": tgt,
                      "MAE before": before["mae"].iloc[0] if len(before) else np.nan,
                      "MAE after AdaBN": after["mae"].iloc[0] if len(after) else np.nan})
    pairs = pd.DataFrame(pairs)
    if len(pairs):
        pairs["change"] = pairs["MAE after AdaBN"] - pairs["MAE before"]
    return {"plain": plain, "adabn": adabn, "pairs": pairs}
