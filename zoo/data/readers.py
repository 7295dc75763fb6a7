"""The reader registry and the record every dataset adapter yields.

A reader only parses labels (file names, CSVs) into `Record`s and reports what it could not parse; checking that
files decode, hashing them and assigning splits is shared work done once in `zoo.data.manifest`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

GENDERS = {0: "male", 1: "female"}
# One race vocabulary across datasets; each adapter maps its own codes onto it.
RACES = ("white", "black", "asian", "indian", "latino_hispanic", "middle_eastern", "other")


@dataclass
class Record:
    """One labelled image. `path` is relative to the dataset root (POSIX), never absolute."""

    path: str
    age: float | None = None
    age_min: float | None = None  # interval labels (binned datasets); equal to age for exact labels
    age_max: float | None = None
    gender: int | None = None  # 0 male, 1 female, None unknown
    race: str | None = None  # one of RACES, None unknown (never guessed)
    subject_id: str | None = None
    split: str | None = None  # the dataset's official split, when it has one
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.age is not None:
            self.age_min = self.age if self.age_min is None else self.age_min
            self.age_max = self.age if self.age_max is None else self.age_max
        elif self.age_min is not None and self.age_max is not None:
            self.age = (self.age_min + self.age_max) / 2


@dataclass
class ScanIssue:
    """A file that is irregular (`excluded=False`: kept, parsed as far as it goes) or unusable (`excluded=True`)."""

    path: str
    reason: str
    excluded: bool


@dataclass
class ReadResult:
    records: list[Record]
    issues: list[ScanIssue]


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def walk_images(root: Path, issues: list[ScanIssue]) -> Iterator[tuple[Path, str]]:
    """Every file below `root` in sorted order as (path, POSIX path relative to root); files whose name is not an
    image's are reported in `issues` as excluded instead of yielded."""
    root = Path(root)
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if not p.name.lower().endswith(IMAGE_SUFFIXES):
            issues.append(ScanIssue(rel, "not an image file name (.jpg/.jpeg/.png)", excluded=True))
            continue
        yield p, rel


Reader = Callable[[Path], ReadResult]
READERS: dict[str, Reader] = {}
FRAMING: dict[str, str] = {}  # reader -> how its images are framed (zoo.faces.FRAMINGS)


def register_reader(name: str, framing: str = "aligned") -> Callable[[Reader], Reader]:
    """Register a reader. `framing` declares its images: `aligned` (face crops, used as they are), `detect` (find the
    face and align it, `zoo.faces`) or `boxes` (face boxes given in extras `face_box` = [x, y, w, h])."""
    from zoo.faces import FRAMINGS

    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")

    def wrap(fn: Reader) -> Reader:
        if name in READERS:
            raise ValueError(f"reader {name!r} is already registered")
        READERS[name] = fn
        FRAMING[name] = framing
        return fn

    return wrap


def get_reader(name: str) -> Reader:
    from zoo.data import adapters  # noqa: F401  (importing registers the built-in readers)

    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(READERS))}")
    return READERS[name]


def reader_framing(name: str) -> str:
    get_reader(name)
    return FRAMING[name]


def list_readers() -> list[str]:
    from zoo.data import adapters  # noqa: F401

    return sorted(READERS)
