"""Deterministic train/val/test splits, committed as small text files so everyone evaluates on the same images.

Assignment is a pure function of (seed, image ids, labels, subjects): stratified by age bin x gender, and
group-exclusive, where a group is a subject (FG-NET, …) or a set of byte-identical files (UTKFace has hundreds),
so the same face never sits on both sides of a split. A dataset's official split is kept as is.

A committed split file is authoritative (`reconcile`, `extend_split_file`): the images it lists keep their split,
new images get one (their group's, when a byte-identical copy or their subject is listed; else computed) and are
appended, and images the scan no longer finds are reported but stay listed, so the file never shrinks or changes
silently. A scan that finds under MIN_FOUND of the listed images is a subset or another dataset and is refused;
only an explicit `--resplit` rewrites the file.
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
# A rescan must find at least this share of the images its split file lists: a few lost or corrupt files are
# reported and kept listed; fewer found means a subset or another dataset scanned under the same name.
MIN_FOUND = 0.9


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


def reconcile(frame: pd.DataFrame, path: Path, dataset: str, reader: str) -> dict[str, str]:
    """Check a scan's rows (`image_id`, `split`) against the committed split file at `path`: {image_id: split} of
    the listed images the scan did not find. ValueError when it finds under MIN_FOUND of them (a subset or another
    dataset under this name) or when a listed image would change split (an official split column that moved)."""
    committed = read_split_file(path)
    if not committed:
        return {}
    got = dict(zip(frame["image_id"], frame["split"]))
    found = [i for i in committed if i in got]
    if len(found) < MIN_FOUND * len(committed):
        raise ValueError(
            f"this scan finds {len(found):,} of the {len(committed):,} images listed in {path}, so it is a subset "
            f"or another dataset, not {dataset!r} (a rescan must find {MIN_FOUND:.0%}); nothing was written. Scan it "
            f"under its own name (--dataset {dataset}_part --reader {reader}), or rewrite the committed split on "
            f"purpose with --resplit")
    changed = [(i, committed[i], got[i]) for i in found if committed[i] != got[i]]
    if changed:
        i, a, b = changed[0]
        raise ValueError(f"{len(changed):,} images would change split (e.g. {i}: {a} in {path.name}, {b} now); the "
                         f"committed split file is authoritative; nothing was written. Rewrite it on purpose with "
                         f"--resplit")
    return {i: s for i, s in committed.items() if i not in got}


def extend_split_file(frame: pd.DataFrame, path: Path) -> bool:
    """Append the scan's images that the split file does not list yet, keeping every listed row and the header;
    no write (byte-identical file) when there are none. True when the file changed."""
    committed = read_split_file(path)
    new = frame.loc[~frame["image_id"].isin(list(committed)), ["image_id", "split"]]
    if new.empty:
        return False
    header = path.read_text().split("\n", 1)[0].removeprefix("# ")
    old = pd.DataFrame({"image_id": list(committed), "split": list(committed.values())})
    write_split_file(pd.concat([old, new], ignore_index=True), path, header)
    return True


def _groups(frame: pd.DataFrame) -> pd.Series:
    """A row's split group: its subject, else its content (byte-identical files)."""
    subject = frame["subject_id"] if "subject_id" in frame else pd.Series(None, index=frame.index)
    return subject.where(subject.notna(), "h:" + frame["content_hash"].astype(str)).astype(str)


def _key(seed: int, group: str) -> str:
    return hashlib.sha1(f"{seed}:{group}".encode()).hexdigest()


def compute_splits(frame: pd.DataFrame, seed: int = 0, fractions: tuple[float, ...] = FRACTIONS) -> pd.Series:
    """Split assignment for rows without an official split (see module doc)."""
    out = pd.Series(index=frame.index, dtype=object)
    if frame.empty:
        return out
    group = _groups(frame)
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
        # A new image byte-identical to a listed one, or of a listed subject, joins that split: a face added
        # later must not land on the other side of the split from its copy.
        todo = split.isna()
        if todo.any():
            group = _groups(frame)
            by_group = split[~todo].groupby(group[~todo]).first()
            by_hash = {i.split("-")[0]: s for i, s in known.items()}
            inherit = group[todo].map(by_group)
            split.loc[todo] = inherit.where(inherit.notna(), frame.loc[todo, "content_hash"].str[:16].map(by_hash))
    todo = split.isna()
    if todo.any():
        split.loc[todo] = compute_splits(frame.loc[todo], seed=seed)
    if split.isna().any():  # never hand out rows without a split (they would silently drop out of every split)
        raise AssertionError(f"{int(split.isna().sum())} rows got no split")
    return split.astype(str)
