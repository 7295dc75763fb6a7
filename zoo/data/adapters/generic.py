"""Generic readers for data that is not one of the named datasets.

`csv`: a folder with `labels.csv`: `path` and `age` required; optional `gender` (0/1, male/female, m/f), `race` (one of
`RACES`), `subject_id`, `split`, `age_min`/`age_max` (interval labels); any other column is kept in `extras`.
`folder`: images in sub-folders named by age (`root/35/xyz.jpg` is 35 years old), nothing else known.

Also the small label-parsing helpers the CSV-based adapters (APPA-REAL, FairFace) share, so every adapter treats a
missing column, a missing file or an unknown label value the same way: a clear error for a broken table, an excluded
`ScanIssue` with its reason for a broken row, never a silently guessed label.
"""
from __future__ import annotations

import math
import re
from pathlib import Path, PurePosixPath

import pandas as pd

from zoo.data.readers import RACES, ReadResult, Record, ScanIssue, outside_root, register_reader, walk_images

MAX_AGE = 120
GENDER_WORDS = {"0": 0, "1": 1, "male": 0, "female": 1, "m": 0, "f": 1, "man": 0, "woman": 1}
SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test"}
_INT = re.compile(r"-?(0|[1-9]\d*)")
_FLOAT = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?")
CSV_CORE = ("path", "age", "age_min", "age_max", "gender", "race", "subject_id", "split")


class RowError(ValueError):
    """A row that cannot be used; its message becomes the excluded ScanIssue's reason."""


# --- shared helpers -----------------------------------------------------------------------------------------------

def read_table(path: Path, required: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """A label CSV as strings (empty cells ''), or a ValueError naming the file and what is wrong with it."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty CSV (no header); expected columns {', '.join(required)}") from None
    except pd.errors.ParserError as e:
        raise ValueError(f"{path}: not a parseable CSV: {e}") from None
    except UnicodeDecodeError as e:  # a ValueError too, but pandas' message does not name the file
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{path.name} ({path}) is missing required column(s) {', '.join(missing)}; "
                         f"found {', '.join(table.columns) or 'none'}")
    return table.apply(lambda col: col.str.strip())


def label_files(root: Path, files: dict[str, str], dataset: str) -> tuple[dict[str, Path], list[ScanIssue]]:
    """The label files of a dataset shipped as one CSV per split that exist (split -> path, in `files`' order), and
    a kept ScanIssue for each missing one (its split is not scanned); none at all: a FileNotFoundError naming them."""
    found = {part: root / name for part, name in files.items() if (root / name).is_file()}
    if not found:
        raise FileNotFoundError(f"{root} holds no {dataset} label file ({', '.join(files.values())})")
    issues = [ScanIssue(name, f"label file missing: the {part} split is not scanned", excluded=False)
              for part, name in files.items() if part not in found]
    return found, issues


def parse_age(value: str, what: str = "age") -> float:
    try:
        age = float(value)
    except (TypeError, ValueError):
        raise RowError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(age) or not 0 <= age <= MAX_AGE:
        raise RowError(f"{what} {value!r} is not in 0..{MAX_AGE}")
    return age


def parse_gender(value: str) -> int | None:
    """0 male, 1 female, None when the cell is empty (unknown); anything else is an error, never a guess."""
    v = str(value).strip().lower()
    if v in ("", "nan", "none"):
        return None
    if v in ("0.0", "1.0"):  # a gender column with gaps round-trips through pandas as float
        v = v[0]
    if v not in GENDER_WORDS:
        raise RowError(f"unknown gender {value!r} (expected 0/1, male/female or m/f)")
    return GENDER_WORDS[v]


def parse_race(value: str, mapping: dict[str, str] | None = None) -> str | None:
    v = str(value).strip().lower()
    if v in ("", "nan", "none"):
        return None
    v = (mapping or {}).get(v, v)
    if v not in RACES:
        raise RowError(f"unknown race {value!r} (expected one of {', '.join(RACES)})")
    return v


def number_or_text(value: str):
    """An extras cell as int/float/bool when it plainly is one (not '007', which stays text), else the text;
    empty → None. JSON-safe: never NaN/inf."""
    if value is None or value == "":
        return None
    if _INT.fullmatch(value):
        return int(value)
    if _FLOAT.fullmatch(value):
        f = float(value)
        return f if math.isfinite(f) else None
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def relative_image_path(root: Path, value: str) -> str:
    """A path from a label file as a relative POSIX path inside root, or RowError."""
    v = str(value).strip().replace("\\", "/")
    if not v:
        raise RowError("empty path")
    p = PurePosixPath(v)
    if p.is_absolute() or (len(v) > 1 and v[1] == ":"):
        raise RowError(f"absolute path {value!r} (paths must be relative to the dataset root)")
    parts = [s for s in p.parts if s not in ("", ".")]
    if ".." in parts:
        raise RowError(f"path {value!r} leaves the dataset root")
    rel = "/".join(parts)
    path = root / rel
    if path.is_symlink() or path.exists():
        reason = outside_root(root, path)  # a link out of the root: never read, as the Browser never shows it
        if reason:
            raise RowError(reason)
    if not path.is_file():
        raise RowError(f"image file missing: {rel}")
    return rel


# --- readers ------------------------------------------------------------------------------------------------------

@register_reader("csv", framing="detect")
def read_csv_labels(root: Path) -> ReadResult:
    root = Path(root)
    labels = root / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"{labels} not found: the csv reader needs a labels.csv (path, age, ...) in the root")
    table = read_table(labels, ("path", "age"))
    extra_cols = [c for c in table.columns if c not in CSV_CORE]
    records: list[Record] = []
    issues: list[ScanIssue] = []
    seen: set[str] = set()
    for i, row in enumerate(table.to_dict("records")):
        where = row["path"] or f"labels.csv row {i + 2}"  # row 1 is the header
        try:
            path = relative_image_path(root, row["path"])
            if path in seen:
                raise RowError(f"listed twice in labels.csv (row {i + 2})")
            if row["age"] == "" and row.get("age_min", "") != "" and row.get("age_max", "") != "":
                age = None  # interval label only: Record takes the midpoint
            else:
                age = parse_age(row["age"])
            age_min = parse_age(row["age_min"], "age_min") if row.get("age_min", "") != "" else None
            age_max = parse_age(row["age_max"], "age_max") if row.get("age_max", "") != "" else None
            if age_min is not None and age_max is not None and age_min > age_max:
                raise RowError(f"age_min {age_min:g} > age_max {age_max:g}")
            gender = parse_gender(row.get("gender", ""))
            race = parse_race(row.get("race", ""))
            split = row.get("split", "")
            if split and split.lower() not in SPLIT_WORDS:
                raise RowError(f"unknown split {split!r} (expected train/val/test)")
        except RowError as e:
            issues.append(ScanIssue(where, str(e), excluded=True))
            continue
        seen.add(path)
        records.append(Record(path=path, age=age, age_min=age_min, age_max=age_max, gender=gender, race=race,
                              subject_id=row.get("subject_id") or None,
                              split=SPLIT_WORDS[split.lower()] if split else None,
                              extras={c: number_or_text(row[c]) for c in extra_cols if row[c] != ""}))
    return ReadResult(records, issues)


@register_reader("folder", framing="detect")
def read_age_folders(root: Path) -> ReadResult:
    """`root/<age>/<image>`: the age is the top-level folder's name (deeper sub-folders are allowed)."""
    root = Path(root)
    records: list[Record] = []
    issues: list[ScanIssue] = []
    for _, rel in walk_images(root, issues):
        parts = rel.split("/")
        if len(parts) < 2:
            issues.append(ScanIssue(rel, "not inside an age folder (expected root/<age>/<image>)", excluded=True))
        elif not _INT.fullmatch(parts[0]) or not 0 <= int(parts[0]) <= MAX_AGE:
            issues.append(ScanIssue(rel, f"folder name {parts[0]!r} is not an integer age in 0..{MAX_AGE}",
                                    excluded=True))
        else:
            records.append(Record(path=rel, age=float(int(parts[0]))))
    return ReadResult(records, issues)
