"""Imbalance handling as data strategies: per-sample loss weights or sampling probabilities from the labels.

Age in UTKFace is heavily skewed (many infants and 20–35-year-olds, few above 80), so these let a sweep ask whether
re-weighting or re-sampling helps the rare ages and at what cost to the common ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class Balance:
    """weights: per-sample age-loss weights (mean 1); gender_weights: per-sample gender-loss weights; probs: sampling
    probabilities (sum 1) or None for uniform; keep: indices (into the given arrays) to train on."""

    weights: np.ndarray
    gender_weights: np.ndarray
    probs: np.ndarray | None
    keep: np.ndarray


AgeStrategy = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
AGE_BALANCE: dict[str, AgeStrategy] = {}


def register_age_balance(name: str) -> Callable[[AgeStrategy], AgeStrategy]:
    def wrap(fn: AgeStrategy) -> AgeStrategy:
        AGE_BALANCE[name] = fn
        return fn

    return wrap


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


def balance(age: np.ndarray, gender: np.ndarray, age_strategy: str = "none", gender_strategy: str = "none",
            seed: int = 0) -> Balance:
    """Combine an age strategy with a gender strategy (`none | undersample | reweight`)."""
    if age_strategy not in AGE_BALANCE:
        raise ValueError(f"unknown age_balance {age_strategy!r}; known: {sorted(AGE_BALANCE)}")
    keep = np.arange(len(age))
    known = ~np.isnan(gender)
    if gender_strategy == "undersample":
        rng = np.random.default_rng(seed)
        male, female = np.flatnonzero(known & (gender == 0)), np.flatnonzero(known & (gender == 1))
        n = min(len(male), len(female))
        keep = np.sort(np.concatenate([rng.choice(male, n, replace=False), rng.choice(female, n, replace=False),
                                       np.flatnonzero(~known)]))
    elif gender_strategy not in ("none", "reweight"):
        raise ValueError(f"unknown gender_balance {gender_strategy!r}; known: none, undersample, reweight")
    weights, probs = AGE_BALANCE[age_strategy](age[keep])
    gender_weights = np.ones(len(keep))
    if gender_strategy == "reweight":  # each gender contributes half of the gender loss
        g = gender[keep]
        for v in (0, 1):
            m = g == v
            if m.any():
                gender_weights[m] = known[keep].sum() / (2 * m.sum())
    return Balance(weights, gender_weights, probs, keep)
