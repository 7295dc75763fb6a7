"""Conditioning labels: class = age bin x gender (9 bins x 2 = 18 classes), and how to draw the labels to sample.

Every generator (DDPM, GAN, text-to-image pipeline) is conditioned on the same class index, so synthetic sets from
different generators are comparable label for label.
"""
from __future__ import annotations

import numpy as np

# Finer than the manifest's reporting groups at the young end, where faces change fastest.
AGE_BINS: list[tuple[int, int]] = [(0, 2), (3, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69),
                                   (70, 120)]
# Uniform fallback for the open-ended last bin when no real ages are known: 70-89, not up to 120 (very rare ages).
OPEN_BIN_UNIFORM_MAX = 89
GENDER_NAMES = ("male", "female")  # 0 male, 1 female (the manifest's coding)
N_BINS = len(AGE_BINS)
N_CLASSES = N_BINS * len(GENDER_NAMES)
AGE_MODES = ("match", "uniform")


def bin_name(b: int) -> str:
    lo, hi = AGE_BINS[b]
    return f"{lo}+" if b == N_BINS - 1 else f"{lo}-{hi}"


BIN_NAMES = [bin_name(b) for b in range(N_BINS)]


def age_bin(age: np.ndarray | float) -> np.ndarray:
    """Bin index of each age (ages below 0 go to the first bin, above the last bound to the last)."""
    edges = np.array([lo for lo, _ in AGE_BINS[1:]], dtype=float)
    return np.searchsorted(edges, np.floor(np.asarray(age, dtype=float)), side="right")


def class_index(age: np.ndarray | float, gender: np.ndarray | int) -> np.ndarray:
    """class = bin * 2 + gender, so classes of one bin are adjacent."""
    return age_bin(age) * 2 + np.asarray(gender, dtype=int)


def class_bin(c: np.ndarray | int) -> np.ndarray:
    return np.asarray(c) // 2


def class_gender(c: np.ndarray | int) -> np.ndarray:
    return np.asarray(c) % 2


def class_name(c: int) -> str:
    return f"{BIN_NAMES[int(c) // 2]}/{GENDER_NAMES[int(c) % 2]}"


def _allocate(n: int, p: np.ndarray) -> np.ndarray:
    """Largest-remainder rounding: exact counts summing to n, so a set's class mix is deterministic."""
    raw = n * p / p.sum()
    counts = np.floor(raw).astype(int)
    rest = n - counts.sum()
    counts[np.argsort(-(raw - counts), kind="stable")[:rest]] += 1
    return counts


def class_distribution(mode: str, real_age: np.ndarray | None = None,
                       real_gender: np.ndarray | None = None) -> np.ndarray:
    """Probability of each of the 18 classes: `match` = the real training split's mix, `uniform` = equal."""
    if mode == "uniform":
        return np.full(N_CLASSES, 1.0 / N_CLASSES)
    if mode != "match":
        raise ValueError(f"ages must be one of {AGE_MODES}, got {mode!r}")
    if real_age is None or real_gender is None:
        raise ValueError("--ages match needs the real training split's labels (pass the dataset)")
    ok = np.isfinite(real_age) & np.isfinite(np.asarray(real_gender, dtype=float))
    if not ok.any():
        raise ValueError("--ages match: the real training split has no image with both age and gender")
    counts = np.bincount(class_index(real_age[ok], real_gender[ok].astype(int)), minlength=N_CLASSES)
    return counts / counts.sum()


def sample_age_in_bin(b: int, k: int, rng: np.random.Generator, pool: np.ndarray | None = None) -> np.ndarray:
    """k integer ages inside bin b: drawn from `pool` (the real ages of that class, so e.g. 70+ follows the real
    tail) when it is non-empty, else uniform over the bin's integer ages."""
    lo, hi = AGE_BINS[b]
    if pool is not None and len(pool):
        return rng.choice(np.floor(pool), size=k, replace=True).astype(float)
    hi = min(hi, OPEN_BIN_UNIFORM_MAX) if b == N_BINS - 1 else hi
    return rng.integers(lo, hi + 1, size=k).astype(float)


def sample_labels(n: int, mode: str, rng: np.random.Generator, real_age: np.ndarray | None = None,
                  real_gender: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n labels to generate: (ages float, genders int, classes int), grouped by class in class order.

    `match` reproduces the real training split's class mix; `uniform` gives every class n/18 images. Within a class
    the age follows the real within-class ages when known (uniform inside the bin otherwise)."""
    counts = _allocate(n, class_distribution(mode, real_age, real_gender))
    have_real = real_age is not None and real_gender is not None
    if have_real:
        ok = np.isfinite(real_age) & np.isfinite(np.asarray(real_gender, dtype=float))
        real_cls = np.full(len(real_age), -1)
        real_cls[ok] = class_index(real_age[ok], real_gender[ok].astype(int))
    ages, genders, classes = [], [], []
    for c, k in enumerate(counts):
        if k == 0:
            continue
        pool = real_age[real_cls == c] if have_real else None
        ages.append(sample_age_in_bin(c // 2, int(k), rng, pool))
        genders.append(np.full(k, c % 2))
        classes.append(np.full(k, c))
    if not ages:
        return np.zeros(0), np.zeros(0, int), np.zeros(0, int)
    return np.concatenate(ages), np.concatenate(genders).astype(int), np.concatenate(classes).astype(int)
