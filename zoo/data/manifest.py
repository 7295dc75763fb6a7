"""Build, save and load a dataset manifest: one row per usable image, one schema for every dataset.

The manifest stores paths relative to the dataset root (the root is kept beside it, never inside the committed files)
so that manifests and split files are portable between machines.
"""
from __future__ import annotations

import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from zoo.data.readers import ReadResult, ScanIssue, get_reader, list_readers, root_problem
from zoo.data.splits import assign_splits, extend_split_file, reconcile, split_file_path, write_split_file
from zoo.paths import cache_dir, cache_lock, shared_data_dir

COLUMNS = ["image_id", "path", "dataset", "age", "age_min", "age_max", "gender", "race", "subject_id", "split",
           "content_hash", "extras"]
MAX_PIXELS = 40_000_000  # decompression-bomb guard: a face crop this large is a mistake, not data
# A dataset's name becomes file names (manifest, split file, caches) and DB keys: no path separators, no dots
# (`name.seedN.tsv` is seed N's split file), no `:` (bench's `name:split`), no leading `-` (read as an option).
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
AGE_GROUPS = [(0, 12, "0-12"), (13, 19, "13-19"), (20, 39, "20-39"), (40, 59, "40-59"), (60, 200, "60+")]


def age_group(age: float) -> str:
    if age is None or age != age:  # NaN: datasets without ages (CelebA-HQ)
        return "unknown"
    for lo, hi, name in AGE_GROUPS:
        if age < hi + 1:
            return name
    return AGE_GROUPS[-1][2]


def extras_label(frame: pd.DataFrame, name: str) -> np.ndarray:
    """A binary label kept in extras (CelebA-HQ's attributes, e.g. `Young`) as float [N], NaN where unknown."""
    return np.array([json.loads(e).get(name, np.nan) if isinstance(e, str) else np.nan for e in frame["extras"]],
                    dtype=float)


@dataclass
class Manifest:
    dataset: str
    root: Path
    frame: pd.DataFrame
    issues: list[ScanIssue]
    framing: str = "aligned"  # zoo.faces.FRAMINGS: how the images become model inputs
    reader: str | None = None  # the reader that parsed it (None: the dataset's own name, as before named datasets)

    @property
    def hash(self) -> str:
        """Identity of the data a model saw: image ids, labels, splits and framing (not the machine-specific root).
        `aligned` framing adds nothing, so manifests from before framings existed keep their hash."""
        cols = ["image_id", "age", "age_min", "age_max", "gender", "race", "split"]
        blob = self.frame[cols].to_csv(index=False).encode()
        if self.framing != "aligned":
            blob += f"|framing={self.framing}".encode()
        return hashlib.sha1(blob).hexdigest()[:12]

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        self.frame.to_parquet(tmp, index=False)
        tmp.replace(path)  # atomic: a crash never leaves a half-written manifest
        side = {"dataset": self.dataset, "reader": self.reader or self.dataset, "root": str(self.root),
                "hash": self.hash, "framing": self.framing, "issues": [asdict(i) for i in self.issues]}
        path.with_suffix(".json").write_text(json.dumps(side, indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        side = json.loads(path.with_suffix(".json").read_text())
        frame = pd.read_parquet(path)
        return cls(side["dataset"], Path(side["root"]), frame, [ScanIssue(**i) for i in side["issues"]],
                   side.get("framing", "aligned"), side.get("reader"))

    def abspaths(self) -> list[Path]:
        return [self.root / p for p in self.frame["path"]]


def check_image(path: Path) -> tuple[str | None, str | None]:
    """Return (sha1 of the bytes, None) for a decodable image, or (None, reason) for an unusable one."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, f"unreadable: {e.strerror}"
    if not data:
        return None, "zero-byte file"
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # the Warning when raised as error
        px = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(px[1]) / 1e6:,.0f} MP" if px else "size unknown"
        return None, f"image too large ({size} > {MAX_PIXELS // 1_000_000} MP; decompression-bomb guard)"
    except Exception:
        return None, "not an image (unrecognised format)"
    if w * h > MAX_PIXELS:
        return None, f"image too large ({w}x{h} px > {MAX_PIXELS // 1_000_000} MP)"
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_2)
    if arr is None or arr.size == 0:
        return None, "corrupt image (does not decode)"
    return hashlib.sha1(data).hexdigest(), None


def _image_ids(content_hashes: pd.Series, paths: pd.Series) -> pd.Series:
    """image_id = first 16 hex of the content hash; byte-identical files (UTKFace has hundreds, sometimes with
    different labels) get `-1`, `-2`… in path order so every row stays addressable."""
    ids = content_hashes.str[:16].copy()
    order = pd.DataFrame({"h": ids, "p": paths}).sort_values(["h", "p"])
    rank = order.groupby("h").cumcount()
    dup = rank > 0
    ids.loc[order.index[dup]] = order.loc[dup, "h"] + "-" + rank[dup].astype(str)
    return ids


def conflicting_duplicates(frame: pd.DataFrame) -> list[ScanIssue]:
    """Byte-identical files whose labels differ (UTKFace and CelebA-HQ both have some): kept, in one split, and
    reported, since at most one of the labels can be right."""
    label_cols = ["age", "gender", "race", "extras"]
    issues = []
    for _, g in frame[frame["content_hash"].duplicated(keep=False)].groupby("content_hash"):
        labels = g[label_cols].astype(str).drop_duplicates()
        if len(labels) > 1:
            first = g.iloc[0]
            for _, r in g.iloc[1:].iterrows():
                diff = [c for c in label_cols if str(r[c]) != str(first[c])]
                if diff:
                    what = ", ".join(_label_diff(c, first[c], r[c]) for c in diff)
                    issues.append(ScanIssue(r["path"], f"byte-identical to {first['path']} with different labels "
                                                       f"({what}); both kept, in one split", excluded=False))
    return issues


def _label_diff(col: str, a, b) -> str:
    if col != "extras":
        return f"{col} {a} vs {b}"
    ea, eb = json.loads(a), json.loads(b)
    keys = sorted(k for k in set(ea) | set(eb) if ea.get(k) != eb.get(k))
    return "extras " + ", ".join(f"{k} {ea.get(k)} vs {eb.get(k)}" for k in keys)


def build_manifest(dataset: str, root: Path, seed: int = 0, split_file: Path | None = None,
                   workers: int = 4, progress: bool = True, reader: str | None = None,
                   framing: str | None = None) -> Manifest:
    """Read labels with the dataset's reader (`reader`, default the dataset's own name, e.g. `csv` for a
    synthetic set named `synth_ddpm`), verify every file decodes, hash it, and assign splits. `framing` overrides
    the reader's declared framing (e.g. `aligned` for a CSV folder of ready face crops)."""
    from zoo.data.readers import reader_framing, reader_landmarks
    from zoo.faces import FRAMINGS

    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a directory")
    problem = root_problem(root)
    if problem:
        raise ValueError(f"dataset root: {problem}")
    framing = framing or reader_framing(reader or dataset)
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, got {framing!r}")
    if framing == "fixed":
        reader_landmarks(reader or dataset)  # a clear error before scanning when the dataset declares none
    result: ReadResult = get_reader(reader or dataset)(root)
    issues = list(result.issues)
    paths = [root / r.path for r in result.records]
    with ThreadPoolExecutor(workers) as pool:  # I/O + libjpeg release the GIL
        checked = list(tqdm(pool.map(check_image, paths), total=len(paths), desc=f"scan {dataset}",
                            disable=not progress, unit="img"))
    rows = []
    for rec, (sha, reason) in zip(result.records, checked):
        if reason:
            issues.append(ScanIssue(rec.path, reason, excluded=True))
            continue
        row = asdict(rec)
        row["official_split"] = row.pop("split")
        row["content_hash"] = sha
        row["extras"] = json.dumps(row["extras"], sort_keys=True)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("image_id", "dataset", "split")]
                         + ["official_split"])
    frame["dataset"] = dataset
    frame["image_id"] = _image_ids(frame["content_hash"], frame["path"])
    frame["gender"] = frame["gender"].astype("Int8")
    for c in ("age", "age_min", "age_max"):
        frame[c] = frame[c].astype(float)
    frame["split"] = assign_splits(frame, seed=seed, split_file=split_file)
    frame = frame.drop(columns="official_split")[COLUMNS].sort_values("image_id", ignore_index=True)
    return Manifest(dataset, root, frame, issues + conflicting_duplicates(frame), framing, reader or dataset)


# Where the team's shared copy of each dataset lives, relative to `../shared/data`.
DEFAULT_ROOTS = {"utkface": "utkface/UTKFace", "celebahq": "celebahq", "appa": "appa-real", "fgnet": "fgnet/images",
                 "fairface": "fairface"}


def check_dataset_name(name: str) -> str:
    """`name` if it is a valid dataset name (see DATASET_NAME), else a ValueError saying what is allowed."""
    if not isinstance(name, str) or not DATASET_NAME.fullmatch(name):
        raise ValueError(f"dataset name {name!r} is not allowed: use up to 100 letters, digits, _ and - "
                         f"(it becomes file names and database keys)")
    return name


def manifest_path(dataset: str) -> Path:
    return cache_dir() / "manifests" / f"{check_dataset_name(dataset)}.parquet"


def _recorded(dataset: str) -> dict:
    """The side-car of the dataset's cached manifest ({} when none): which reader and framing it was scanned with."""
    try:
        return json.loads(manifest_path(dataset).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}


def scan(dataset: str, root: Path, seed: int = 0, progress: bool = True, reader: str | None = None,
         framing: str | None = None, resplit: bool = False) -> Manifest:
    """Build the manifest of dataset `dataset` (a name: several datasets may share a reader) with `reader` (default:
    the reader it was last scanned with, else the name itself), save it to the cache and write its split file.

    An existing split file is authoritative (zoo.data.splits, module doc): listed images keep their split, new ones
    are appended, missing ones are reported as excluded issues and stay listed; a scan that finds under MIN_FOUND of
    the listed images, or would move one, is refused before anything is written. `resplit` recomputes every split
    and rewrites the file (which invalidates models trained on the old split)."""
    check_dataset_name(dataset)
    reader = reader or _recorded(dataset).get("reader") or dataset
    if reader not in list_readers():
        what = f"{dataset!r} is not a reader" if reader == dataset else f"unknown reader {reader!r}"
        raise ValueError(f"{what}: name the reader that parses it with --reader ({', '.join(list_readers())})")
    split_file = split_file_path(dataset, seed)
    m = build_manifest(dataset, root, seed=seed, split_file=None if resplit else split_file, progress=progress,
                       reader=reader, framing=framing)
    committed = split_file.exists() and not resplit
    if committed:
        missing = reconcile(m.frame, split_file, dataset, reader)
        m.issues += [ScanIssue(i, f"listed in {split_file.name} ({s}) but not found by this scan; stays listed there",
                               excluded=True) for i, s in sorted(missing.items())]
    m.save(manifest_path(dataset))
    if committed:
        extend_split_file(m.frame, split_file)
    else:
        write_split_file(m.frame, split_file, header=f"dataset={dataset} seed={seed} fractions=0.6/0.2/0.2 "
                                                      f"(train/val/test); rows sorted by image_id")
    return m


def load_manifest(dataset: str, root: Path | None = None) -> Manifest:
    """The cached manifest of a dataset, scanning it first (from `root` or the shared data folder) if needed, with
    the reader and framing it was last scanned with. A scan runs under a lock: a job that waited for another's
    scan of the shared folder loads its manifest instead."""
    path = manifest_path(dataset)
    if path.exists() and root is None:
        return Manifest.load(path)
    given = root is not None
    if not given:
        if dataset not in DEFAULT_ROOTS:
            raise FileNotFoundError(f"no manifest for {dataset!r}; run `python -m zoo data scan --dataset "
                                    f"{dataset} --root PATH` first")
        root = shared_data_dir() / DEFAULT_ROOTS[dataset]
    if not Path(root).is_dir():
        raise FileNotFoundError(f"dataset {dataset!r} not found at {root}; pass --root or run `python -m zoo "
                                f"data scan --dataset {dataset} --root PATH`")
    with cache_lock(f"manifest-{dataset}"):
        if path.exists() and not given:
            return Manifest.load(path)
        side = _recorded(dataset)
        return scan(dataset, Path(root), progress=False, reader=side.get("reader"), framing=side.get("framing"))
