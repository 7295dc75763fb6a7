"""FairFace: race-balanced faces with binned ages.

Layout of the root: `fairface_label_train.csv`, `fairface_label_val.csv` (file, age, gender, race, service_test),
and the images they name (`train/1.jpg`, `val/1.jpg`). Ages are bins (`0-2` … `60-69`, `more than 70`): we keep
them as intervals (age_min/age_max, age = midpoint; `more than 70` is taken as 70..100). East and Southeast Asian
both map to `asian`; the original race string stays in extras['race_detail'].
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from zoo.data.adapters.generic import (RowError, label_files, number_or_text, parse_race, read_table,
                                       relative_image_path)
from zoo.data.readers import ReadResult, Record, ScanIssue, register_reader

COLUMNS = ("file", "age", "gender", "race")  # service_test is optional (extras)
PARTS = ("train", "val")
FAIRFACE_GENDERS = {"male": 0, "female": 1}
FAIRFACE_RACES = {"white": "white", "black": "black", "east asian": "asian", "southeast asian": "asian",
                  "indian": "indian", "middle eastern": "middle_eastern", "latino_hispanic": "latino_hispanic",
                  "latino hispanic": "latino_hispanic"}
OPEN_TOP = 100.0  # upper end assumed for the open bin `more than 70`
VAL_FRACTION = 0.2
_SPLIT_SALT = "fairface-train-val:v1"
_BIN = re.compile(r"^(\d{1,3})\s*-\s*(\d{1,3})$")
_OPEN = re.compile(r"^(?:more than|over)\s*(\d{1,3})\+?$|^(\d{1,3})\s*\+$")


def parse_age_bin(value: str) -> tuple[float, float]:
    v = str(value).strip().lower()
    m = _BIN.match(v)
    if m:
        lo, hi = float(m[1]), float(m[2])
        if lo > hi:
            raise RowError(f"age bin {value!r} is reversed")
        return lo, hi
    m = _OPEN.match(v)
    if m:
        return float(m[1] or m[2]), OPEN_TOP
    raise RowError(f"unknown age bin {value!r} (expected e.g. '20-29' or 'more than 70')")


def train_or_val(file: str) -> str:
    """Our split for a row of FairFace's official *train* CSV.

    FairFace ships only train and val. Its val set is the published benchmark, so it becomes our `test` untouched.
    We still need a validation set for model selection, carved from the official train set. Left to the shared
    splitter (split=None), those rows would be cut 60/20/20, moving a fifth of the official training data into a
    second, non-standard test set. So we decide here: 80 % train / 20 % val by a salted hash of the file name,
    which is deterministic, independent of row order and of the scan seed, and stable when rows are added.
    (FairFace has no subject ids, so nothing finer than per-file assignment is possible.)"""
    h = int(hashlib.sha1(f"{_SPLIT_SALT}:{file}".encode()).hexdigest()[:8], 16) / 2**32
    return "val" if h < VAL_FRACTION else "train"


@register_reader("fairface")
def read_fairface(root: Path) -> ReadResult:
    root = Path(root)
    found, issues = label_files(root, {p: f"fairface_label_{p}.csv" for p in PARTS}, "FairFace")
    records: list[Record] = []
    seen: set[str] = set()
    for part, label_file in found.items():
        table = read_table(label_file, COLUMNS)
        for i, row in enumerate(table.to_dict("records")):
            where = row["file"] or f"{label_file.name} row {i + 2}"
            try:
                path = relative_image_path(root, row["file"])
                if path in seen:
                    raise RowError(f"listed twice (again in {label_file.name})")
                age_min, age_max = parse_age_bin(row["age"])
                g = row["gender"].lower()
                if g not in FAIRFACE_GENDERS:
                    raise RowError(f"unknown gender {row['gender']!r} (expected Male/Female)")
                race = parse_race(row["race"], FAIRFACE_RACES)
            except RowError as e:
                issues.append(ScanIssue(where, str(e), excluded=True))
                continue
            seen.add(path)
            extras = {"age_bin": row["age"], "race_detail": row["race"] or None, "official_split": part}
            if "service_test" in row and row["service_test"] != "":
                extras["service_test"] = number_or_text(row["service_test"])
            records.append(Record(path=path, age_min=age_min, age_max=age_max, gender=FAIRFACE_GENDERS[g],
                                  race=race, split="test" if part == "val" else train_or_val(path), extras=extras))
    return ReadResult(records, issues)
