"""CelebA-HQ (CelebAMask-HQ): 40 binary attributes per image, no ages, no subject ids.

Layout (`root` = the dataset folder): `CelebAMask-HQ-attribute-anno.txt` and `images/N.jpg`. The attribute file:
line 1 the row count, line 2 the 40 attribute names, then one row per image, `N.jpg` and 40 values of 1 / -1.

Real quirks, each handled and reported rather than guessed: the count line can disagree with the rows; numbers are
not contiguous; rows can be malformed (wrong field count, values other than 1 / -1) or repeated; images can lack a
row and rows can lack an image. Byte-identical images under two names (some with different labels) are found by the
shared manifest builder, which keeps each group in one split and reports the label conflicts.

`Male` gives gender (1 → male 0, -1 → female 1); every attribute, `Male` included, is kept in extras as 0 / 1; the
age is unknown (NaN), so age metrics skip CelebA-HQ and `Young` stands in for age (see `zoo.metrics`).
"""
from __future__ import annotations

from pathlib import Path

from zoo.data.readers import ReadResult, Record, ScanIssue, register_reader, walk_images

ATTRIBUTE_FILE = "CelebAMask-HQ-attribute-anno.txt"
IMAGE_DIR = "images"
N_ATTRIBUTES = 40


def parse_attribute_file(path: Path) -> tuple[list[str], dict[str, dict[str, int]], list[ScanIssue]]:
    """(attribute names, {file name: {attribute: 0/1}}, issues). A broken header is a ValueError naming the file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if len(lines) < 2:
        raise ValueError(f"{path}: expected a count line and a line of attribute names, got {len(lines)} line(s)")
    names = lines[1].split()
    if len(names) != N_ATTRIBUTES or len(set(names)) != len(names) or "Male" not in names:
        raise ValueError(f"{path}: line 2 should name {N_ATTRIBUTES} distinct attributes including Male, got "
                         f"{len(names)}: {' '.join(names[:5])}…")
    issues: list[ScanIssue] = []
    rows: dict[str, dict[str, int]] = {}
    for n, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        name, values = fields[0], fields[1:]
        where = f"{IMAGE_DIR}/{name}"
        if len(values) != N_ATTRIBUTES:
            issues.append(ScanIssue(where, f"{path.name} line {n}: {len(values)} values, expected {N_ATTRIBUTES}",
                                    excluded=True))
            continue
        if any(v not in ("1", "-1") for v in values):
            bad = next(v for v in values if v not in ("1", "-1"))
            issues.append(ScanIssue(where, f"{path.name} line {n}: value {bad!r} is not 1 or -1", excluded=True))
            continue
        if name in rows:
            issues.append(ScanIssue(where, f"{path.name} line {n}: second row for this image (first one kept)",
                                    excluded=False))
            continue
        rows[name] = {a: int(v == "1") for a, v in zip(names, values)}
    try:
        declared = int(lines[0].split()[0])
    except (ValueError, IndexError):
        declared = None
    if declared != len(rows):
        issues.append(ScanIssue(path.name, f"line 1 declares {lines[0].strip()!r} rows; {len(rows)} usable rows "
                                           "were read", excluded=False))
    return names, rows, issues


# CelebA-HQ's images all share one alignment: dlib's 5 landmarks sit here, as fractions of the image (the median
# detected position on the train split; an image's own landmarks lie 0.75 px from it, median over images at 64 px). Read
# with the `fixed` framing, every image is warped from it: no detection to miss a face or jitter the crop.
LANDMARKS = ((0.6714, 0.4780), (0.5747, 0.4868), (0.3286, 0.4780), (0.4253, 0.4868), (0.4956, 0.6714))


@register_reader("celebahq", framing="detect", landmarks=LANDMARKS)
def read_celebahq(root: Path) -> ReadResult:
    anno = root / ATTRIBUTE_FILE
    if not anno.is_file():
        raise FileNotFoundError(f"{anno} not found: the CelebA-HQ root holds {ATTRIBUTE_FILE} and {IMAGE_DIR}/")
    _, rows, issues = parse_attribute_file(anno)
    records: list[Record] = []
    seen: set[str] = set()
    for p, rel in walk_images(root / IMAGE_DIR, issues, root=root):
        rel = f"{IMAGE_DIR}/{rel}"
        attrs = rows.get(p.name)
        if attrs is None or p.parent != root / IMAGE_DIR:
            issues.append(ScanIssue(rel, f"no row in {ATTRIBUTE_FILE}", excluded=True))
            continue
        seen.add(p.name)
        records.append(Record(path=rel, gender=0 if attrs["Male"] else 1, extras=dict(attrs)))
    issues += [ScanIssue(f"{IMAGE_DIR}/{n}", f"listed in {ATTRIBUTE_FILE} but the image is missing", excluded=True)
               for n in sorted(set(rows) - seen)]
    return ReadResult(records, issues)
