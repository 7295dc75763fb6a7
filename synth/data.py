"""Data in and out of `synth`: the real TRAINING split a generator learns from, and scanning a synthetic folder.

Generators see only the real training split: val/test faces must never leak into synthetic training data, or a
"synthetic" model would have seen the test set. The train rows are cached as their own decoded array (a manifest of
train rows only), so val/test image files are not even decoded.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from zoo.data.cache import load_images
from zoo.data.manifest import Manifest, load_manifest, scan
from zoo.data.readers import READERS, ReadResult, Record, ScanIssue, register_reader

FALLBACK_READER = "synth_csv"
CSV_CORE = ("path", "age", "age_min", "age_max", "gender", "race", "subject_id", "split")


@dataclass
class TrainSplit:
    images: np.ndarray  # uint8 [N, S, S, 3], train rows only
    age: np.ndarray  # float [N]
    gender: np.ndarray  # float [N] (NaN unknown)
    manifest_hash: str  # of the full real manifest (identity of the data the generator came from)
    train_hash: str  # of the train-only sub-manifest


def train_manifest(dataset: str) -> tuple[Manifest, Manifest]:
    """(full manifest, manifest restricted to split == train rows with a known age and gender: the class label
    needs both)."""
    full = load_manifest(dataset)
    f = full.frame
    frame = f[(f["split"] == "train") & f["age"].notna() & f["gender"].notna()].reset_index(drop=True)
    if frame.empty:
        raise ValueError(f"dataset {dataset!r} has no labelled training split rows")
    sub = Manifest(full.dataset, full.root, frame, [], full.framing)
    assert (sub.frame["split"] == "train").all(), "generator data must be the real training split only"
    return full, sub


def load_train_split(dataset: str, size: int, progress: bool = True) -> TrainSplit:
    """Decoded training images at `size` px with their labels (train split only, see module doc)."""
    full, sub = train_manifest(dataset)
    images = load_images(sub, size, progress=progress)
    return TrainSplit(images, sub.frame["age"].to_numpy(float), sub.frame["gender"].astype("float").to_numpy(),
                      full.hash, sub.hash)


def train_labels(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """The real training split's (age, gender) from the manifest alone (no image decoding)."""
    _, sub = train_manifest(dataset)
    return sub.frame["age"].to_numpy(float), sub.frame["gender"].astype("float").to_numpy()


# --- synthetic folders: <root>/labels.csv (path, age, gender, split, extras...) ---------------------------------

def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def read_labels_csv(root: Path) -> ReadResult:
    """The generic `csv` reader's contract: `labels.csv` with path, age, gender (0 male / 1 female), split and any
    extra columns (kept as extras). Used only while `zoo.data.adapters.generic` does not provide `csv`."""
    table = pd.read_csv(Path(root) / "labels.csv", dtype={"path": str})
    records, issues = [], []
    for row in table.to_dict("records"):
        path = str(row["path"])
        if not (Path(root) / path).is_file():
            issues.append(ScanIssue(path, "listed in labels.csv but missing", excluded=True))
            continue
        g = _num(row.get("gender"))
        extras = {k: v for k, v in row.items() if k not in CSV_CORE and not (isinstance(v, float) and math.isnan(v))}
        records.append(Record(path=path, age=_num(row.get("age")), gender=None if g is None else int(g),
                              split=row.get("split") if isinstance(row.get("split"), str) else None,
                              race=row.get("race") if isinstance(row.get("race"), str) else None, extras=extras))
    return ReadResult(records, issues)


def _has_csv_reader() -> bool:
    from zoo.data import adapters  # noqa: F401  (registers the built-in readers, `csv` among them once it exists)

    try:
        from zoo.data.adapters import generic  # noqa: F401
    except ImportError:
        pass
    return "csv" in READERS


@contextmanager
def csv_reader() -> Iterator[str]:
    """The reader name to scan a labels.csv folder with: the project's generic `csv` reader when it exists, else
    this module's reader with the same contract, registered only for the duration of the scan (so the global
    registry the rest of the project sees is unchanged)."""
    if _has_csv_reader():
        yield "csv"
        return
    register_reader(FALLBACK_READER)(read_labels_csv)
    try:
        yield FALLBACK_READER
    finally:
        READERS.unregister(FALLBACK_READER)


def write_labels_csv(root: Path, frame: pd.DataFrame) -> Path:
    path = Path(root) / "labels.csv"
    tmp = path.with_suffix(".csv.tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def scan_synthetic(name: str, root: Path, progress: bool = True) -> Manifest:
    """Scan a synthetic folder as dataset `synth_<name>` (cached manifest, loadable by `load_manifest`)."""
    with csv_reader() as reader:
        # resplit: a regenerated set replaces the old one wholesale, and every row is official train (nothing can
        # leak), so its split file is rewritten rather than guarded like a real dataset's.
        m = scan(f"synth_{name}", Path(root), progress=progress, reader=reader, framing="aligned", resplit=True)
    bad = m.frame[m.frame["split"] != "train"]
    if len(bad):
        raise ValueError(f"synthetic set {name!r}: {len(bad)} rows are not split=train; synthetic images are for "
                         f"training only")
    return m


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_json(path: Path, obj: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)
    return path
