"""APPA-REAL: real and apparent age, with an official train/valid/test split.

Layout of the root:
  gt_avg_{train,valid,test}.csv        file_name, num_ratings, apparent_age_avg, apparent_age_std, real_age
  allcategories_{train,valid,test}.csv file, gender, race, makeup, time, happiness
  {train,valid,test}/<file_name>       the full photo, and `<file_name>_face.jpg`, the aligned face crop

We use the face crop when it exists (else the photo itself) and the real age as the label; the apparent age and
the other annotations go to extras. A row missing from allcategories is kept with unknown gender/race and reported.
"""
from __future__ import annotations

from pathlib import Path

from zoo.data.adapters.generic import RowError, label_files, number_or_text, parse_age, parse_race, read_table
from zoo.data.readers import ReadResult, Record, ScanIssue, outside_root, register_reader

SPLITS = {"train": "train", "valid": "val", "test": "test"}  # file suffix -> our split name
GT_COLUMNS = ("file_name", "num_ratings", "apparent_age_avg", "apparent_age_std", "real_age")
CAT_COLUMNS = ("file", "gender", "race", "makeup", "time", "happiness")
APPA_GENDERS = {"male": 0, "female": 1}
APPA_RACES = {"caucasian": "white", "afroamerican": "black", "asian": "asian"}


def _number(value: str) -> float | None:
    v = number_or_text(value)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


@register_reader("appa")
def read_appa(root: Path) -> ReadResult:
    root = Path(root)
    gt_files, issues = label_files(root, {s: f"gt_avg_{s}.csv" for s in SPLITS}, "APPA-REAL")
    records: list[Record] = []
    for part, gt_file in gt_files.items():
        gt = read_table(gt_file, GT_COLUMNS)
        cat_file = root / f"allcategories_{part}.csv"
        if cat_file.is_file():
            cats = {r["file"]: r for r in read_table(cat_file, CAT_COLUMNS).to_dict("records")}
        else:
            cats = None
            issues.append(ScanIssue(cat_file.name, "file missing: gender/race of this split unknown",
                                    excluded=False))
        seen: set[str] = set()
        for i, row in enumerate(gt.to_dict("records")):
            name = row["file_name"]
            where = f"{part}/{name}" if name else f"{gt_file.name} row {i + 2}"
            try:
                if not name or "/" in name or "\\" in name or name in (".", ".."):
                    raise RowError(f"bad file_name {name!r} in {gt_file.name}")
                if name in seen:
                    raise RowError(f"listed twice in {gt_file.name}")
                face, full = root / part / f"{name}_face.jpg", root / part / name
                if face.is_file():
                    path = f"{part}/{face.name}"
                elif full.is_file():
                    path = f"{part}/{name}"
                else:
                    raise RowError(f"image file missing: {part}/{name} (nor {part}/{face.name})")
                reason = outside_root(root, root / path)
                if reason:
                    raise RowError(reason)
                age = parse_age(row["real_age"], "real_age")
                cat = (cats or {}).get(name)
                gender = race = None
                if cat is not None:
                    g = cat["gender"].lower()
                    if g and g not in APPA_GENDERS:
                        raise RowError(f"unknown gender {cat['gender']!r} in {cat_file.name} (expected male/female)")
                    gender = APPA_GENDERS.get(g)
                    race = parse_race(cat["race"], APPA_RACES)
            except RowError as e:
                issues.append(ScanIssue(where, str(e), excluded=True))
                continue
            seen.add(name)
            if cat is None and cats is not None:
                issues.append(ScanIssue(path, f"not in {cat_file.name}: gender/race unknown", excluded=False))
            extras = {"apparent_age": _number(row["apparent_age_avg"]),
                      "apparent_age_std": _number(row["apparent_age_std"]),
                      "num_ratings": number_or_text(row["num_ratings"])}
            if cat is not None:
                extras.update({k: number_or_text(cat[k]) for k in ("makeup", "time", "happiness")})
            records.append(Record(path=path, age=age, gender=gender, race=race, split=SPLITS[part], extras=extras))
    return ReadResult(records, issues)
