"""UTKFace: labels live in the file name, `age_gender_race_datetime.jpg[.chip.jpg]`.

Real names break the pattern (missing race field, a space or a missing dot in the date, 16/18-digit dates), so we
parse what the name really says field by field and report every irregularity instead of guessing.
"""
from __future__ import annotations

import re
from pathlib import Path

from zoo.data.readers import ReadResult, Record, ScanIssue, register_reader, walk_images

UTK_RACES = {0: "white", 1: "black", 2: "asian", 3: "indian", 4: "other"}
_REGULAR = re.compile(r"^\d{1,3}_[01]_[0-4]_\d{17}\.jpg(\.chip\.jpg)?$")
_DATE = re.compile(r"^\d{17}$")


def parse_utkface_name(name: str) -> tuple[Record | None, list[str]]:
    """Parse one file name. Returns (record or None when unusable, reasons it is irregular/unusable)."""
    stem = name
    for suffix in (".chip.jpg", ".jpg"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    fields = stem.split("_")
    reasons: list[str] = []
    if len(fields) < 2:
        return None, ["fewer than two '_' fields: no age/gender"]
    age_s, gender_s = fields[0].strip(), fields[1].strip()
    if not age_s.isdigit() or not 0 <= int(age_s) <= 120:
        return None, [f"age field {fields[0]!r} is not an integer in 0..120"]
    if gender_s not in ("0", "1"):
        return None, [f"gender field {fields[1]!r} is not 0 or 1"]
    race = None
    rest = fields[2:]
    if len(rest) == 1:
        # Three real files carry age_gender_date: the third field is the date, race is unknown.
        reasons.append("race field missing (race unknown)")
        date = rest[0]
    elif len(rest) >= 2:
        race_s, date = rest[0].strip(), "_".join(rest[1:])
        if race_s.isdigit() and int(race_s) in UTK_RACES:
            race = UTK_RACES[int(race_s)]
        else:
            reasons.append(f"race field {rest[0]!r} not in 0..4 (race unknown)")
    else:
        date = ""
        reasons.append("race and date fields missing (race unknown)")
    if date and not _DATE.match(date):
        reasons.append(f"irregular date field {date!r}")
    if not _REGULAR.match(name) and not reasons:
        reasons.append("irregular punctuation in file name")
    return Record(path=name, age=float(int(age_s)), gender=int(gender_s), race=race), reasons


@register_reader("utkface")
def read_utkface(root: Path) -> ReadResult:
    records: list[Record] = []
    issues: list[ScanIssue] = []
    for p, rel in walk_images(root, issues):
        rec, reasons = parse_utkface_name(p.name)
        if rec is None:
            issues.append(ScanIssue(rel, "; ".join(reasons), excluded=True))
            continue
        rec.path = rel
        records.append(rec)
        issues.extend(ScanIssue(rel, r, excluded=False) for r in reasons)
    return ReadResult(records, issues)
