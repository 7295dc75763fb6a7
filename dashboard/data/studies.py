"""Data studies: controlled comparisons of the zoo's training factors, cross-dataset matrices and the fidelity
reports of synthetic sets (pure functions over query frames and files; no SQL)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


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
