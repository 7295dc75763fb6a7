"""Imbalance handling as data strategies: per-sample loss weights or sampling probabilities from the labels.

Age in UTKFace is heavily skewed (many infants and 20–35-year-olds, few above 80), so these let a sweep ask whether
re-weighting or re-sampling helps the rare ages and at what cost to the common ones.

Group balancing (config `group_balance: {column, strategy, ...}`) works on any group column: gender, race, or a
binary attribute / target (zoo.attributes): undersample the larger groups, or weight every sample of a group by a
table (the soft-biometric seed's women 1.0 / men 0.1). Its weights apply to every head's loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from zoo.data.readers import RACES
from zoo.plugins import Registry


@dataclass
class Balance:
    """weights: per-sample age-loss weights (mean 1); gender_weights: per-sample gender-loss weights; probs: sampling
    probabilities (sum 1) or None for uniform; keep: indices (into the given arrays) to train on; sample_weights:
    per-sample weights of every head's loss (group balancing; None: all 1)."""

    weights: np.ndarray
    gender_weights: np.ndarray
    probs: np.ndarray | None
    keep: np.ndarray
    sample_weights: np.ndarray | None = None


AgeStrategy = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]  # age -> (loss weights, probs | None)
AGE_BALANCE = Registry("age balance")
register_age_balance = AGE_BALANCE.register
# (gender with NaN for unknown, seed) -> (indices to keep, gender-loss weights of the kept samples)
GenderStrategy = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
GENDER_BALANCE = Registry("gender balance")
register_gender_balance = GENDER_BALANCE.register
# (group codes float [N], NaN unknown; seed; the strategy's own config keys) -> (indices to keep, their weights).
# Registered with `params=(...)`: the config keys it takes besides `column` and `strategy`.
GroupStrategy = Callable[..., tuple[np.ndarray, np.ndarray]]
GROUP_BALANCE = Registry("group balance")
register_group_balance = GROUP_BALANCE.register
# The group names of a column, in code order (gender: 0 male, 1 female, as the manifests); any other column is a
# binary attribute or target, whose groups are "0" and "1".
GROUP_NAMES = {"gender": ("male", "female"), "race": RACES}
BINARY_GROUPS = ("0", "1")


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
    return _group_undersample(gender, seed)


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


@register_group_balance("undersample")
def _group_undersample(codes: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """As many of every group as there are in the smallest (drawn with `seed`, groups in code order); samples of
    unknown group all stay."""
    known = ~np.isnan(codes)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(known & (codes == v)) for v in np.unique(codes[known])]
    n = min((len(m) for m in members), default=0)
    keep = np.sort(np.concatenate([*(rng.choice(m, n, replace=False) for m in members), np.flatnonzero(~known)]))
    return keep, np.ones(len(keep))


@register_group_balance("weights", params=("weights",))
def _group_weights(codes: np.ndarray, seed: int, weights: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """Every sample weighted by its group's entry in the table (groups not in it, and unknown ones: 1)."""
    w = np.ones(len(codes))
    for code, value in weights.items():
        w[codes == code] = value
    return np.arange(len(codes)), w


def group_names(column: str) -> tuple[str, ...]:
    """The groups of a group column, in code order (a code is the group's index)."""
    return GROUP_NAMES.get(column, BINARY_GROUPS)


def group_spec_problem(spec: object) -> str | None:
    """What is wrong with a `group_balance` mapping ({column, strategy, and the strategy's params}), or None."""
    shape = "group_balance is null or {column: gender|race|<attribute>, strategy: " + "|".join(GROUP_BALANCE) + \
            ", weights: {group: weight}}"
    if not isinstance(spec, dict) or not isinstance(spec.get("column"), str) or not spec["column"]:
        return f"{shape} (got {spec!r:.80})"
    strategy = spec.get("strategy")
    if strategy not in GROUP_BALANCE:
        return f"group_balance strategy must be one of {', '.join(GROUP_BALANCE)} (got {strategy!r})"
    params = GROUP_BALANCE.meta(strategy).get("params", ())
    extra = sorted(map(str, set(spec) - {"column", "strategy", *params}))
    missing = [p for p in params if p not in spec]
    if extra or missing:
        return (f"group_balance with strategy {strategy} takes column, strategy{''.join(', ' + p for p in params)}"
                f" ({'unknown: ' + ', '.join(extra) if extra else 'missing: ' + ', '.join(missing)})")
    if "weights" in params:
        names = group_names(spec["column"])
        table = spec["weights"]
        if not isinstance(table, dict) or not table:
            return f"group_balance weights must be a mapping of {', '.join(names)} to numbers >= 0 (got {table!r:.60})"
        bad = {k: v for k, v in table.items() if str(k) not in names or isinstance(v, bool)
               or not isinstance(v, (int, float)) or not 0 <= v < float("inf")}
        if bad:
            return (f"group_balance weights of column {spec['column']} map its groups {', '.join(names)} to numbers "
                    f">= 0 (got {bad!r:.80})")
        if not any(v > 0 for v in table.values()):
            return "group_balance weights must give at least one group a weight > 0"
    return None


def group_balance(codes: np.ndarray, spec: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Apply a `group_balance` spec to one group column's codes (float [N], NaN unknown): (keep, their weights)."""
    problem = group_spec_problem(spec)
    if problem:
        raise ValueError(problem)
    params = {p: spec[p] for p in GROUP_BALANCE.meta(spec["strategy"]).get("params", ())}
    if "weights" in params:  # group names -> codes
        names = group_names(spec["column"])
        params["weights"] = {names.index(str(k)): float(v) for k, v in params["weights"].items()}
    return GROUP_BALANCE.get(spec["strategy"])(np.asarray(codes, float), seed, **params)


def balance(age: np.ndarray, gender: np.ndarray, age_strategy: str = "none", gender_strategy: str = "none",
            seed: int = 0, groups: np.ndarray | None = None, group_spec: dict | None = None) -> Balance:
    """Combine an age strategy (`AGE_BALANCE`), a gender strategy (`GENDER_BALANCE`) and a group strategy
    (`group_spec` on the group codes `groups`, see `group_balance`), applied in that order from last to first: the
    gender strategy, then the group strategy on what it kept (the seed undersamples genders, then weights them),
    then the age strategy on what is left."""
    age_fn, gender_fn = AGE_BALANCE.get(age_strategy), GENDER_BALANCE.get(gender_strategy)
    keep, gender_weights = gender_fn(gender, seed)
    sample_weights = np.ones(len(keep))
    if group_spec is not None:
        sub, sample_weights = group_balance(np.asarray(groups, float)[keep], group_spec, seed)
        keep, gender_weights = keep[sub], gender_weights[sub]
    weights, probs = age_fn(age[keep])
    return Balance(weights, gender_weights, probs, keep, sample_weights)
