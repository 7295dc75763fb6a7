"""Attribute heads in the predictions DB (the `attributes` table, bench/SCHEMA.md) and how the Attributes page judges
them: which attributes were benched, the per-image rows of one, each model's decision threshold, and every number
the page shows.

The numbers all come from `zoo.fairness` (metrics, bootstrap intervals, group gaps, likely-mislabelled images, the
seed's labels CSV); this module only picks the rows and thresholds and shapes the results into frames. SQL reads go
through `dashboard.data.db` like every other query (`@query`: cached on the DB version, the last good result served
while a bench run holds the file); the reports are `@query`s too, so a bootstrap runs once per DB version.

A DB written before the table existed has none: every query here then returns an empty frame (`db_status` still
calls such a DB readable; the next bench write adds the table).
"""
from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from dashboard.data.db import connect, query
from dashboard.data.queries import DEFAULT_MODE_SQL, _mode_where

N_BOOT = 1000  # bootstrap resamples behind every interval (zoo.fairness.attribute_report)
# Thresholds the accuracy / fairness trade-off is drawn at (each a zoo.fairness.binary_metrics per group).
SWEEP = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))
GROUPS = ("gender", "race")  # fairness columns, each used where the images know it


def _has_table(con) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'attributes'")
                .fetchone()[0])


@query
def attribute_modes(db: str, ver: str) -> list[str]:
    """The inference modes with labelled clean attribute rows, the most rows first."""
    with connect(db) as con:
        if not _has_table(con):
            return []
        return [m for (m,) in con.execute("SELECT mode FROM attributes WHERE perturbation = 'none' AND label IS NOT "
                                          "NULL GROUP BY mode ORDER BY count(*) DESC").fetchall()]


@query
def attribute_sets(db: str, ver: str, mode: str | None = None) -> pd.DataFrame:
    """(attribute, dataset, split, model_id) with clean attribute rows in one inference mode: rows, labelled rows
    (label not NULL) and positives."""
    mw, mp = _mode_where(mode, "a")
    with connect(db) as con:
        if not _has_table(con):
            return pd.DataFrame(columns=["attribute", "dataset", "split", "model_id", "rows", "labelled",
                                         "positives"])
        return con.execute(f"""
            SELECT a.attribute, a.dataset, i.split, a.model_id, count(*) AS rows, count(a.label) AS labelled,
                   count(*) FILTER (WHERE a.label = 1) AS positives
            FROM attributes a JOIN images i USING (dataset, image_id)
            WHERE a.perturbation = 'none' AND {mw} GROUP BY ALL ORDER BY ALL""", mp).df()


@query
def attribute_rows(db: str, ver: str, attribute: str, dataset: str, split: str, models: tuple | None = None,
                   mode: str | None = None) -> pd.DataFrame:
    """One row per (model, clean image) of `attribute` on (dataset, split; "*" = all splits): the probability, the
    image's label (NaN unknown), its path and its gender ("male" / "female" / None) and race (None unknown); in
    `mode`, or the DB's most common inference mode (`bench.attribute_studies.attribute_rows`)."""
    from bench.attribute_studies import ROW_COLUMNS, attribute_rows as rows

    with connect(db) as con:
        if not _has_table(con):
            return pd.DataFrame(columns=ROW_COLUMNS)
        mode = mode or next(iter(con.execute(DEFAULT_MODE_SQL).fetchall()), (None,))[0]
        return rows(con, attribute, dataset, mode, models, None if split == "*" else split)


def model_thresholds(ids: list[str], models: pd.DataFrame, attribute: str,
                     val: pd.DataFrame | None) -> dict[str, tuple[float, str]]:
    """model_id -> (decision threshold, where it comes from) for each of `ids`, chosen as the README's tables choose
    it (`bench.attribute_studies.decision_threshold`): on the model's rows in `val` (`attribute_rows` of the val
    split, in the mode shown; None: none read), else its training's (its `models` row's info), else the default."""
    from bench.attribute_studies import decision_threshold
    from zoo.runs import RunRecord

    rows = {r["model_id"]: r for r in models.to_dict("records")} if len(models) else {}
    val = val if val is not None else pd.DataFrame(columns=["model_id", "prob", "label"])
    # RunRecord.from_row: None for a model without a run record (a peer)
    return {m: decision_threshold(val[val["model_id"] == m], RunRecord.from_row(rows[m]) if m in rows else None,
                                  attribute) for m in ids}


def _groups(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """The fairness columns the labelled rows know (gender; race where any image has one)."""
    lab = rows["label"].notna()
    return {g: rows[g].to_numpy(dtype=object) for g in GROUPS if rows.loc[lab, g].notna().any()}


def _one(rows: pd.DataFrame, model: str) -> pd.DataFrame:
    return rows[rows["model_id"] == model].reset_index(drop=True)


LEADERBOARD_METRICS = ("accuracy", "balanced_accuracy", "f1", "roc_auc")


@query
def leaderboard(db: str, ver: str, attribute: str, dataset: str, split: str, thresholds: tuple,
                mode: str | None = None, n_boot: int = N_BOOT) -> pd.DataFrame:
    """Per model (`thresholds`: ((model_id, threshold), ...)): accuracy, balanced accuracy, F1 and ROC AUC at its
    threshold with 95 % bootstrap CIs (`<metric>_lo`, `<metric>_hi`), labelled images and positives; best balanced
    accuracy first."""
    rows = attribute_rows(db, ver, attribute, dataset, split, tuple(m for m, _ in thresholds), mode=mode)
    from zoo.fairness import attribute_report

    out = []
    for mid, t in thresholds:
        r = _one(rows, mid)
        if not r["label"].notna().any():
            continue
        rep = attribute_report(r["label"].to_numpy(float), r["prob"].to_numpy(float), float(t), None, n_boot)["overall"]
        row = {"model_id": mid, "threshold": float(t), "n": int(rep["n"]["value"]),
               "positives": int(rep["positives"]["value"])}
        for m in LEADERBOARD_METRICS:
            row.update({m: rep[m]["value"], f"{m}_lo": rep[m]["lo"], f"{m}_hi": rep[m]["hi"]})
        out.append(row)
    cols = ["model_id", "threshold", "n", "positives"] + [f"{m}{s}" for m in LEADERBOARD_METRICS
                                                         for s in ("", "_lo", "_hi")]
    return pd.DataFrame(out, columns=cols).sort_values("balanced_accuracy", ascending=False,
                                                       na_position="last").reset_index(drop=True)


FAIRNESS_METRICS = ("accuracy", "tpr", "fpr")


@query
def fairness(db: str, ver: str, attribute: str, dataset: str, split: str, model: str, threshold: float,
             mode: str | None = None, n_boot: int = N_BOOT) -> dict[str, pd.DataFrame]:
    """One model at `threshold`, per gender (and race where known): {"groups": column, group, n, positives and
    accuracy / TPR / FPR with 95 % CIs; "gaps": column, metric (accuracy, tpr, fpr, equalized_odds), value, lo, hi}
    from `zoo.fairness.attribute_report` (a gap: largest minus smallest group value)."""
    from zoo.fairness import attribute_report

    r = _one(attribute_rows(db, ver, attribute, dataset, split, (model,), mode=mode), model)
    groups = _groups(r)
    g_cols = ["column", "group", "n", "positives"] + [f"{m}{s}" for m in FAIRNESS_METRICS for s in ("", "_lo", "_hi")]
    if not groups:
        return {"groups": pd.DataFrame(columns=g_cols), "gaps": pd.DataFrame(columns=["column", "metric", "value",
                                                                                       "lo", "hi"])}
    rep = attribute_report(r["label"].to_numpy(float), r["prob"].to_numpy(float), float(threshold), groups, n_boot)
    grows, gaps = [], []
    for col, by in rep["by_group"].items():
        for grp, ms in by.items():
            row = {"column": col, "group": str(grp), "n": int(ms["n"]["value"]),
                   "positives": int(ms["positives"]["value"])}
            for m in FAIRNESS_METRICS:
                row.update({m: ms[m]["value"], f"{m}_lo": ms[m]["lo"], f"{m}_hi": ms[m]["hi"]})
            grows.append(row)
        for m, v in rep["gaps"][col].items():
            gaps.append({"column": col, "metric": m, **v})
    return {"groups": pd.DataFrame(grows, columns=g_cols),
            "gaps": pd.DataFrame(gaps, columns=["column", "metric", "value", "lo", "hi"])}


@query
def tradeoff(db: str, ver: str, attribute: str, dataset: str, split: str, model: str, by: str = "gender",
             mode: str | None = None, thresholds: tuple = SWEEP) -> pd.DataFrame:
    """Accuracy and the `by`-group gaps (largest minus smallest group's accuracy, TPR and FPR) of one model at each
    of `thresholds`: how far moving the threshold trades accuracy for fairness. Every value is
    `zoo.fairness.binary_metrics` of all images or of one group."""
    from zoo.fairness import binary_metrics

    r = _one(attribute_rows(db, ver, attribute, dataset, split, (model,), mode=mode), model)
    r = r[r["label"].notna() & r["prob"].notna()]
    y, p = r["label"].to_numpy(float), r["prob"].to_numpy(float)
    g = r[by].to_numpy(dtype=object) if by in r else np.full(len(r), None)
    parts = {k: (y[g == k], p[g == k]) for k in sorted({k for k in g if k is not None and k == k})}
    out = []
    for t in thresholds:
        row = {"threshold": float(t), "accuracy": binary_metrics(y, p, t)["accuracy"] if len(y) else np.nan}
        per = [binary_metrics(gy, gp, t) for gy, gp in parts.values()]
        for m in FAIRNESS_METRICS:
            v = [x[m] for x in per if not np.isnan(x[m])]
            row[f"{m}_gap"] = max(v) - min(v) if len(v) >= 2 else np.nan
        out.append(row)
    return pd.DataFrame(out, columns=["threshold", "accuracy", "accuracy_gap", "tpr_gap", "fpr_gap"])


def decision_summary(rows: pd.DataFrame, threshold: float) -> dict:
    """`zoo.fairness.binary_metrics` of labelled rows at `threshold` (accuracy, TPR, FPR, tp / fp / tn / fn, ...)."""
    from zoo.fairness import binary_metrics

    return binary_metrics(rows["label"].to_numpy(float), rows["prob"].to_numpy(float), float(threshold))


def confident_errors(rows: pd.DataFrame, threshold: float, top: int = 24) -> pd.DataFrame:
    """The labelled images decided wrong at `threshold`, the most confident first (farthest from the threshold
    on the wrong side), with `error`: "false positive" / "false negative"."""
    r = rows[rows["label"].notna()]
    said = r["prob"] >= threshold
    wrong = r[said != (r["label"] == 1)].copy()
    wrong["error"] = np.where(wrong["label"] == 1, "false negative", "false positive")
    wrong["margin"] = (wrong["prob"] - threshold).abs()
    return wrong.sort_values(["margin", "image_id"], ascending=[False, True]).head(top).reset_index(drop=True)


def mislabelled(rows: pd.DataFrame, top: int = 24) -> pd.DataFrame:
    """Test images whose label is likely wrong, most suspicious first: `zoo.fairness.likely_mislabelled` (cleanlab's
    confident learning) on the model's probabilities, which are out of sample on test. Empty when a class is
    missing."""
    from zoo.fairness import likely_mislabelled

    r = rows[rows["label"].notna() & rows["prob"].notna()].reset_index(drop=True)
    if r["label"].nunique() < 2:
        return r.iloc[:0]
    return r.iloc[likely_mislabelled(r["label"].to_numpy(float), r["prob"].to_numpy(float), top=top)] \
        .reset_index(drop=True)


def export_filenames(paths: pd.Series) -> list[str]:
    """The `filename` column of the labels CSV: each image's file name (the seed's format), or its path inside the
    dataset when two images share a name."""
    names = [PurePosixPath(str(p)).name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def labels_csv(rows: pd.DataFrame, threshold: float) -> str:
    """The seed's `filename,label` CSV (1 present, -1 absent) of one model's rows, deciding at `threshold`:
    `zoo.fairness.labels_csv`. Every image is exported, labelled or not (it is the model's answer)."""
    from zoo.fairness import labels_csv as to_csv

    r = rows[rows["prob"].notna()].sort_values("path")
    return to_csv(export_filenames(r["path"]), (r["prob"].to_numpy(float) >= threshold).astype(int))


STUDY_CAPTIONS = {  # what each study table of bench.attribute_studies shows, and how to read it
    "backbone": "blond_or_glasses on CelebA-HQ test: the seed's small CNN against ImageNet EfficientNet-Lite0 "
                "frozen (linear probe) and fine-tuned, at equal budget (backbone/ rows), and the shipped model "
                "(headline/: the fine-tuned recipe at 128 px, trained longer). Each decides at its own val threshold.",
    "fairness": "The seed's imbalance strategies on its CNN, one at a time (none = unweighted), and group thresholds "
                "post-processed on the unweighted model's val predictions. A strategy works when the accuracy gap "
                "between men and women shrinks (its CI away from the unweighted one); cost is the accuracy it gives "
                "up overall.",
    "sharing": "One multi-task network (UTKFace age, gender, race + CelebA-HQ attributes and gender) against "
               "single-task twins at the same budget, task by task: sharing helps where multi-task is better.",
}


@query
def studies(db: str, ver: str) -> dict[str, dict]:
    """bench.attribute_studies' tables: {study: {"rows": records for display, "missing": study runs not shown}}."""
    from bench.attribute_studies import DISPLAY_HIDDEN, study_tables

    return {k: {"rows": f.drop(columns=[c for c in DISPLAY_HIDDEN if c in f.columns]).to_dict("records"),
                "missing": list(f.attrs.get("missing") or [])} for k, f in study_tables(db).items()}
