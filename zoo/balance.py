"""Imbalance handling as data strategies: per-sample loss weights or sampling probabilities from the labels.

Age in UTKFace is heavily skewed (many infants and 20–35-year-olds, few above 80), so these let a sweep ask whether
re-weighting or re-sampling helps the rare ages and at what cost to the common ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from zoo.plugins import Registry


@dataclass
class Balance:
    """weights: per-sample age-loss weights (mean 1); gender_weights: per-sample gender-loss weights; probs: sampling
    probabilities (sum 1) or None for uniform; keep: indices (into the given arrays) to train on."""

    weights: np.ndarray
    gender_weights: np.ndarray
    probs: np.ndarray | None
    keep: np.ndarray


AgeStrategy = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]  # age -> (loss weights, probs | None)
AGE_BALANCE = Registry("age balance")
register_age_balance = AGE_BALANCE.register
# (gender with NaN for unknown, seed) -> (indices to keep, gender-loss weights of the kept samples)
GenderStrategy = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
GENDER_BALANCE = Registry("gender balance")
register_gender_balance = GENDER_BALANCE.register


def _age_density(age: np.ndarray, smooth_sigma: float = 0.0) -> np.ndarray:
    """Empirical density per integer age, optionally Gaussian-smoothed (LDS, Yang et al. 2021)."""
    a = np.clip(np.round(age), 0, 120).astype(int)
    hist = np.bincount(a, minlength=121).astype(float)
    if smooth_sigma > 0:
        k = np.arange(-int(3 * smooth_sigma), int(3 * smooth_sigma) + 1)
        kernel = np.exp(-0.5 * (k / smooth_sigma) ** 2)
        hist = np.convolve(hist, kernel / kernel.sum(), mode="same")
    return hist[a]


def _normalise(w: np.ndarray) -> np.ndarray:
    return w / w.mean()


@register_age_balance("none")
def _none(age: np.ndarray) -> tuple[np.ndarray, None]:
    return np.ones(len(age)), None


@register_age_balance("inv_freq")
def _inv_freq(age: np.ndarray) -> tuple[np.ndarray, None]:
    # Clipped so a single 110-year-old does not dominate a batch.
    return _normalise(np.minimum(1.0 / _age_density(age), 1.0 / 5)), None


@register_age_balance("sqrt_inv")
def _sqrt_inv(age: np.ndarray) -> tuple[np.ndarray, None]:
    return _normalise(1.0 / np.sqrt(_age_density(age))), None


@register_age_balance("lds")
def _lds(age: np.ndarray) -> tuple[np.ndarray, None]:
    return _normalise(1.0 / np.sqrt(_age_density(age, smooth_sigma=2.0))), None


@register_age_balance("balanced_sampler")
def _balanced_sampler(age: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Sample 5-year bins uniformly instead of re-weighting the loss.
    bins = np.clip(age // 5, 0, 20).astype(int)
    counts = np.bincount(bins, minlength=21)
    p = 1.0 / counts[bins]
    return np.ones(len(age)), p / p.sum()


@register_gender_balance("none")
def _gender_none(gender: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(len(gender)), np.ones(len(gender))


@register_gender_balance("undersample")
def _undersample(gender: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # As many of the majority gender as there are of the minority (drawn with `seed`); unknown genders all stay.
    known = ~np.isnan(gender)
    rng = np.random.default_rng(seed)
    male, female = np.flatnonzero(known & (gender == 0)), np.flatnonzero(known & (gender == 1))
    n = min(len(male), len(female))
    keep = np.sort(np.concatenate([rng.choice(male, n, replace=False), rng.choice(female, n, replace=False),
                                   np.flatnonzero(~known)]))
    return keep, np.ones(len(keep))


@register_gender_balance("reweight")
def _reweight(gender: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # Each gender contributes half of the gender loss.
    weights = np.ones(len(gender))
    n_known = (~np.isnan(gender)).sum()
    for v in (0, 1):
        m = gender == v
        if m.any():
            weights[m] = n_known / (2 * m.sum())
    return np.arange(len(gender)), weights


def balance(age: np.ndarray, gender: np.ndarray, age_strategy: str = "none", gender_strategy: str = "none",
            seed: int = 0) -> Balance:
    """Combine an age strategy (`AGE_BALANCE`) with a gender strategy (`GENDER_BALANCE`)."""
    age_fn, gender_fn = AGE_BALANCE.get(age_strategy), GENDER_BALANCE.get(gender_strategy)
    keep, gender_weights = gender_fn(gender, seed)
    weights, probs = age_fn(age[keep])
    return Balance(weights, gender_weights, probs, keep)
