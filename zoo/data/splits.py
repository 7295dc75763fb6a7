"""Deterministic train/val/test splits, committed as small text files so everyone evaluates on the same images.

Assignment is a pure function of (seed, image ids, labels, subjects): stratified by age bin x gender, and
group-exclusive, where a group is a subject (FG-NET, …) or a set of byte-identical files (UTKFace has hundreds),
so the same face never sits on both sides of a split. A dataset's official split is kept as is.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.paths import splits_dir

SPLITS = ("train", "val", "test")
FRACTIONS = (0.6, 0.2, 0.2)
_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_AGE_EDGES = [0, 3, 7, 13, 20, 30, 40, 50, 60, 70, 1000]


def split_file_path(dataset: str, seed: int = 0) -> Path:
    return splits_dir() / (f"{dataset}.tsv" if seed == 0 else f"{dataset}.seed{seed}.tsv")


def read_split_file(path: Path) -> dict[str, str]:
    table = pd.read_csv(path, sep="\t", comment="#", dtype=str)
    return dict(zip(table["image_id"], table["split"]))


def write_split_file(frame: pd.DataFrame, path: Path, header: str) -> Path:
    """Sorted, fixed format: re-running a scan on the same data gives a byte-identical file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = frame[["image_id", "split"]].sort_values("image_id")
    lines = [f"# {header}", "image_id\tsplit"] + [f"{i}\t{s}" for i, s in body.itertuples(index=False)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def _key(seed: int, group: str) -> str:
    return hashlib.sha1(f"{seed}:{group}".encode()).hexdigest()


def compute_splits(frame: pd.DataFrame, seed: int = 0, fractions: tuple[float, ...] = FRACTIONS) -> pd.Series:
    """Split assignment for rows without an official split (see module doc)."""
    out = pd.Series(index=frame.index, dtype=object)
    if frame.empty:
        return out
    subject = frame["subject_id"] if "subject_id" in frame else pd.Series(None, index=frame.index)
    group = subject.where(subject.notna(), "h:" + frame["content_hash"].astype(str)).astype(str)
    age_bin = np.digitize(frame["age"].fillna(-1).to_numpy(), _AGE_EDGES)
    # Unknown gender is its own stratum "?". (Not `.astype(str)`: pandas >= 3 keeps <NA> missing there, the stratum
    # became NaN, groupby dropped it and every row with unknown gender got no split at all.)
    gender = frame["gender"] if "gender" in frame else pd.Series(None, index=frame.index, dtype=object)
    gender = gender.map(lambda g: "?" if pd.isna(g) else str(int(g)))
    stratum = pd.Series(age_bin, index=frame.index).astype(str) + "/" + gender
    groups = pd.DataFrame({"group": group, "stratum": stratum})
    # A group's stratum is the one most of its images fall in (ties broken by name, for determinism).
    per_group = (groups.groupby(["group", "stratum"]).size().rename("n").reset_index()
                 .sort_values(["group", "n", "stratum"], ascending=[True, False, True]))
    sizes = per_group.groupby("group")["n"].sum()
    first = per_group.drop_duplicates("group").set_index("group")["stratum"]
    table = pd.DataFrame({"stratum": first, "n": sizes})
    table["key"] = [_key(seed, g) for g in table.index]
    bounds = np.cumsum(fractions)[:-1]
    assigned: dict[str, str] = {}
    for _, part in table.sort_values(["stratum", "key"]).groupby("stratum", sort=True):
        before = (part["n"].cumsum() - part["n"]) / part["n"].sum()
        for g, f in zip(part.index, before):
            assigned[g] = SPLITS[int(np.searchsorted(bounds, f, side="right"))]
    return group.map(assigned)


def assign_splits(frame: pd.DataFrame, seed: int = 0, split_file: Path | None = None) -> pd.Series:
    """Official split where given; else the committed split file; else computed (and reported as such)."""
    official = frame.get("official_split", pd.Series(None, index=frame.index))
    split = official.map(lambda s: _ALIASES.get(str(s).lower()) if pd.notna(s) else None)
    if split_file is not None and split_file.exists():
        known = read_split_file(split_file)
        split = split.where(split.notna(), frame["image_id"].map(known))
    todo = split.isna()
    if todo.any():
        split.loc[todo] = compute_splits(frame.loc[todo], seed=seed)
    if split.isna().any():  # never hand out rows without a split (they would silently drop out of every split)
        raise AssertionError(f"{int(split.isna().sum())} rows got no split")
    return split.astype(str)
