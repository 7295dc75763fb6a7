"""`python -m bench report`: the leaderboard of the predictions DB, as a text table with 95 % bootstrap CIs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench import store
from bench.metrics import leaderboard, point_metrics
from zoo.modes import metrics_key


def load_predictions(db: Path | str, dataset: str | None = None, perturbation: str | None = "none",
                     split: str | None = None, source: str | None = None, mode: str | None = None) -> pd.DataFrame:
    """predictions ⋈ images (labels and attributes) ⋈ models (name, kind), filtered; one short read. `mode`: one
    inference mode only (`zoo.modes`); None reads every mode, each row carrying its own in `mode`: never pool
    rows of several modes in one metric (`report` and `peer_records` group by it)."""
    where, params = ["1 = 1"], []
    if mode:
        where.append("p.mode = ?"), params.append(mode)
    if dataset:
        where.append("p.dataset = ?"), params.append(dataset)
    if perturbation:
        where.append("p.perturbation = ?"), params.append(perturbation)
    if split:
        where.append("i.split = ?"), params.append(split)
    if source:
        where.append("m.source = ?"), params.append(source)
    con = store.connect_read(db)
    try:
        # One row per key even in a DB written before repeated ids were merged (`--models X,X` duplicated rows,
        # which would count twice in n and narrow the CIs): the first row written wins, as in a merge.
        return con.execute(f"""
            SELECT p.*, i.split, i.age, i.age_min, i.age_max, i.gender, i.race, i.brightness, i.contrast, i.blur,
                   i.jpeg_quality, i.resolution, i.face_size, i.background, i.is_synthetic,
                   m.name AS model_name, m.kind, m.source
            FROM predictions p
            JOIN images i USING (dataset, image_id)
            LEFT JOIN models m USING (model_id)
            WHERE {' AND '.join(where)}
            QUALIFY row_number() OVER (PARTITION BY p.model_id, p.dataset, p.image_id, p.perturbation, p.severity,
                                                    p.mode ORDER BY p.bench_run) = 1
            -- a fixed row order: bootstrap CIs drawn from these rows are then the same after a DB is compacted
            ORDER BY p.model_id, p.dataset, p.image_id, p.perturbation, p.severity, p.mode""", params).df()
    finally:
        con.close()


def check_selection(db: Path | str, dataset: str | None = None, split: str | None = None) -> None:
    """ValueError (one line, listing what there is) for a dataset or split the DB has no images of."""
    con = store.connect_read(db)
    try:
        have = dict(con.execute("SELECT dataset, list(DISTINCT split ORDER BY split) FROM images "
                                "GROUP BY dataset ORDER BY dataset").fetchall())
    finally:
        con.close()
    if dataset is not None and dataset not in have:
        raise ValueError(f"no dataset {dataset!r} in {db}; it has: {', '.join(have) or 'none'}")
    splits = sorted({s for d, ss in have.items() if dataset in (None, d) for s in ss if s is not None})
    if split is not None and split not in splits:
        raise ValueError(f"no split {split!r} in {db}" + (f" for {dataset}" if dataset else "")
                         + f"; it has: {', '.join(splits) or 'none'}")


def _ci(v: float, lo: float, hi: float, fmt: str) -> str:
    if v is None or np.isnan(v):
        return "–"
    if lo is None or np.isnan(lo):
        return format(v, fmt)
    return f"{format(v, fmt)} [{format(lo, fmt)}, {format(hi, fmt)}]"


def leaderboard_table(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Display table: one row per model, metrics as `value [lo, hi]`, sorted by MAE."""
    t = leaderboard(df, n_boot=n_boot, seed=seed)
    if t.empty:
        return t
    cols = [("MAE", "mae", ".2f"), ("RMSE", "rmse", ".2f"), ("CS@5", "cs5", ".3f"), ("±10y", "acc10", ".3f"),
            ("gender acc", "gender_acc", ".3f"), ("gender F1", "gender_f1", ".3f"), ("gender AUC", "gender_auc", ".3f")]
    out = pd.DataFrame({"model": t["model_id"], "n": t["n"]})
    for title, k, fmt in cols:
        if k in t:
            nan = pd.Series(np.nan, index=t.index)
            out[title] = [_ci(v, lo, hi, fmt) for v, lo, hi in zip(t[k], t.get(f"{k}_lo", nan), t.get(f"{k}_hi", nan))]
    return out


def report(db: Path | str, dataset: str | None = None, split: str | None = None, n_boot: int = 1000,
           mode: str | None = None) -> str:
    """The leaderboard text, one table per (dataset, inference mode): modes are never mixed in one table; ValueError
    for a dataset or split the DB does not have."""
    check_selection(db, dataset, split)
    df = load_predictions(db, dataset=dataset, split=split, mode=mode)
    if df.empty:
        return f"no clean-image predictions in {db}" + (f" for {dataset}" if dataset else "") \
            + (f" in mode {mode}" if mode else "")
    blocks = []
    for (ds, md), g in df.groupby(["dataset", "mode"], sort=True):
        splits = ",".join(sorted(g["split"].dropna().unique()))
        blocks.append(f"{ds} ({splits}; {g['image_id'].nunique()} images; clean; mode {md}; 95 % bootstrap CIs, "
                      f"{n_boot} resamples)\n" + leaderboard_table(g, n_boot=n_boot).to_string(index=False))
    return "\n\n".join(blocks)


def peer_records(db: Path | str, dataset: str = "utkface", split: str = "test") -> list[dict]:
    """External peers' clean-image metrics in the registry's record shape, for tables that put them beside ours:
    each inference mode the registry has metrics for (plain, flip, flip+crop) under its run.json key (`test`,
    `test_tta`, `test_tta_crop`: `zoo.modes.metrics_key`). Rows of other modes (MC-Dropout passes) have no place
    there and are left out; a peer with none of those modes is left out."""
    df = load_predictions(db, dataset=dataset, split=split, source="peer")
    out = []
    for mid, g in df.groupby("model_id", sort=True):
        metrics = {metrics_key(md, split): point_metrics(gm) for md, gm in g.groupby("mode", sort=True)
                   if metrics_key(md, split)}
        if metrics:
            out.append({"id": mid, "name": str(g["model_name"].iloc[0] or mid), "config": {"backbone": "external"},
                        "metrics": metrics})
    return out
