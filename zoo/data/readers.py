"""The reader registry and the record every dataset adapter yields.

A reader only parses labels (file names, CSVs) into `Record`s and reports what it could not parse; checking that
files decode, hashing them and assigning splits is shared work done once in `zoo.data.manifest`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from zoo.plugins import Registry

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


def outside_root(root: Path, path: Path) -> str | None:
    """Why `path` is not a file of the dataset at `root` once every symlink is followed, or None when it stays
    inside. The scan and the dashboard's Browser share this rule, so a file one of them refuses the other refuses
    too: a link out of the root would otherwise read (and bench) data that is not the dataset's."""
    base = Path(root).resolve()
    path = Path(path)
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python 3.11)
        return f"broken symlink (to {os.readlink(path)})" if path.is_symlink() else "missing or unreadable"
    if real == base or base in real.parents:
        return None
    inside = os.path.normpath(os.path.abspath(path)).startswith(os.path.join(os.path.abspath(root), ""))
    return f"outside the dataset root ({'symlink to' if inside else 'resolves to'} {real})"


# Folders that are never a dataset: scanning or browsing them reads a whole machine.
SYSTEM_DIRS = frozenset(("/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/media", "/mnt", "/opt",
                         "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var"))


def root_problem(folder: Path | str) -> str | None:
    """Why `folder` cannot be a dataset root (not a folder, the filesystem root, a system folder, the home folder),
    or None. Used by `zoo data scan` and by the Browser's image-folder setting."""
    p = Path(folder).expanduser()
    if not p.is_dir():
        return f"{folder} is not a directory"
    real = p.resolve()
    if real == Path(real.anchor):
        return f"{folder} is the filesystem root, not a dataset folder"
    try:
        home = Path.home().resolve()
    except (KeyError, RuntimeError):  # no home directory known
        home = None
    if real == home:
        return f"{folder} is the home folder, not a dataset folder"
    if real.as_posix() in SYSTEM_DIRS or any(real.is_relative_to(d) for d in ("/proc", "/sys", "/dev")):
        return f"{folder} is a system folder, not a dataset folder"
    return None


def walk_images(folder: Path, issues: list[ScanIssue], root: Path | None = None) -> Iterator[tuple[Path, str]]:
    """Every file below `folder` in sorted order as (path, POSIX path relative to folder). Reported in `issues` as
    excluded instead of yielded: files whose name is not an image's, and files or symlinked folders that resolve
    outside the dataset `root` (default `folder`). Symlinked folders are never walked (a link inside the root
    would list its files twice)."""
    folder = Path(folder)
    base = Path(root) if root is not None else folder
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):  # followlinks=False
        d = Path(dirpath)
        found += [d / n for n in dirnames if (d / n).is_symlink()] + [d / n for n in filenames]
    for p in sorted(found):
        rel = p.relative_to(folder).as_posix()
        reason = outside_root(base, p)
        if reason:
            issues.append(ScanIssue(rel, reason, excluded=True))
            continue
        if p.is_dir():
            issues.append(ScanIssue(rel, "symlinked folder inside the root: not followed (its files are scanned "
                                         "where they are)", excluded=True))
            continue
        if not p.is_file():  # sockets, fifos
            continue
        if not p.name.lower().endswith(IMAGE_SUFFIXES):
            issues.append(ScanIssue(rel, "not an image file name (.jpg/.jpeg/.png)", excluded=True))
            continue
        yield p, rel


Reader = Callable[[Path], ReadResult]


def _builtin_readers() -> None:
    from zoo.data import adapters  # noqa: F401  (importing registers the built-in readers)


# name -> Reader, with meta `framing`: how its images are framed (zoo.faces.FRAMINGS), and `landmarks`: where a
# dataset whose images share one alignment puts the 5 landmarks (what the `fixed` framing warps from), or None
READERS = Registry("dataset", populate=_builtin_readers)
get_reader = READERS.get
list_readers = READERS.names


def register_reader(name: str, framing: str = "aligned",
                    landmarks: Sequence[Sequence[float]] | None = None) -> Callable[[Reader], Reader]:
    """Register a reader. `framing` declares its images: `aligned` (face crops, used as they are), `fixed` (all
    aligned alike, at `landmarks`: [5, 2] fractions of width and height in dlib's 5-point order), `detect` (find the
    face and align it, `zoo.faces`) or `boxes` (face boxes given in extras `face_box` = [x, y, w, h]). A dataset
    that declares `landmarks` can be read `fixed` whatever its default framing."""
    from zoo.faces import FRAMINGS

    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
    if landmarks is not None:
        landmarks = tuple(tuple(float(v) for v in p) for p in landmarks)
        if len(landmarks) != 5 or any(len(p) != 2 or not 0 <= min(p) <= max(p) <= 1 for p in landmarks):
            raise ValueError(f"landmarks are 5 (x, y) fractions of the image's width and height, got {landmarks}")
    if framing == "fixed" and landmarks is None:
        raise ValueError(f"reader {name!r}: the fixed framing needs the dataset's landmarks")
    return READERS.register(name, framing=framing, landmarks=landmarks)


def reader_framing(name: str) -> str:
    return READERS.meta(name)["framing"]


def reader_landmarks(name: str) -> np.ndarray:
    """The landmarks [5, 2] a `fixed`-framed dataset's images share; a clear error for a dataset without them."""
    landmarks = READERS.meta(name).get("landmarks")
    if landmarks is None:
        raise ValueError(f"dataset reader {name!r} declares no fixed alignment (landmarks), so it cannot be read with "
                         "the fixed framing; use detect")
    return np.asarray(landmarks, np.float64)
