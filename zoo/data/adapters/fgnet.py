"""FG-NET: 1,002 photos of 82 subjects, labels in the file name `SSSAaa[x].JPG`.

`001A02.JPG` is subject 001 at age 2; an optional trailing letter (`078A11a.JPG`, `…b`) marks a further photo at the
same age. No gender or race labels (None, never guessed). The subject id makes splits subject-exclusive, which
matters here: every subject has a dozen photos across their life.
"""
from __future__ import annotations

import re
from pathlib import Path

from zoo.data.readers import ReadResult, Record, ScanIssue, register_reader, walk_images

_NAME = re.compile(r"^(?P<subject>\d{3})[aA](?P<age>\d{2})(?P<photo>[abAB])?\.(jpe?g|png)$", re.IGNORECASE)


def parse_fgnet_name(name: str) -> Record | None:
    m = _NAME.match(name)
    if m is None:
        return None
    extras = {"photo": m["photo"].lower()} if m["photo"] else {}
    return Record(path=name, age=float(int(m["age"])), subject_id=f"fgnet:{m['subject']}", extras=extras)


@register_reader("fgnet", framing="detect")
def read_fgnet(root: Path) -> ReadResult:
    records: list[Record] = []
    issues: list[ScanIssue] = []
    for p, rel in walk_images(root, issues):
        rec = parse_fgnet_name(p.name)
        if rec is None:
            issues.append(ScanIssue(rel, "name does not match FG-NET's SSSAaa[a|b].JPG (subject, 'A', age)",
                                    excluded=True))
            continue
        rec.path = rel
        records.append(rec)
    return ReadResult(records, issues)
