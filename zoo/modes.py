"""Inference modes: how a prediction was made (test-time augmentation and MC-Dropout passes), as one string.

A prediction's identity includes its mode: the bench stores it in `predictions.mode` (bench/SCHEMA.md), computes
what is missing for the mode it is asked for, and the dashboard compares models within one mode only. This module
is the one definition of the vocabulary (no torch: the dashboard and the bench's store import it):

    inference_mode(None, 0)        -> "plain"
    inference_mode("flip", 0)      -> "flip"
    inference_mode("flip+crop", 0) -> "flip+crop"
    inference_mode(None, 5)        -> "mc5"
    inference_mode("flip", 10)     -> "flip+mc10"

`UNKNOWN` marks rows whose making was never recorded (a migrated row whose bench run left no options).
The registry's run.json holds test metrics of the deterministic modes only (`metrics_key`).
"""
from __future__ import annotations

import re

TTA_MODES = ("flip", "flip+crop")  # as zoo.inference.TTA_MODES (which imports torch)
PLAIN = "plain"
UNKNOWN = "unknown"
REGISTRY_MODES = (PLAIN, "flip", "flip+crop")  # modes run.json has test metrics for
_RE = re.compile(r"^(?:(flip\+crop|flip)(?:\+mc([1-9][0-9]*))?|mc([1-9][0-9]*)|plain)$")


def inference_mode(tta: str | None = None, mc_dropout: int | None = 0) -> str:
    """The canonical mode string of a TTA mode (None / "off" / "none" = no TTA) and a number of MC-Dropout passes
    (0 or None = deterministic). ValueError for an unknown TTA mode or a negative number of passes."""
    tta = None if tta in (None, "", "off", "none", PLAIN) else str(tta)
    if tta is not None and tta not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {tta!r}; known: {', '.join(TTA_MODES)}")
    n = int(mc_dropout or 0)
    if n < 0:
        raise ValueError(f"MC-Dropout passes must be >= 0, got {n}")
    mc = f"mc{n}" if n else None
    return "+".join(p for p in (tta, mc) if p) or PLAIN


def parse_mode(mode: str) -> tuple[str | None, int]:
    """(tta, mc_dropout) of a canonical mode string; ValueError otherwise (`unknown` included)."""
    m = _RE.match(mode or "")
    if not m:
        raise ValueError(f"not an inference mode: {mode!r} (e.g. plain, flip, flip+crop, mc10, flip+mc10)")
    return m.group(1), int(m.group(2) or m.group(3) or 0)


def mode_of_options(options: dict | None) -> str:
    """The mode of a bench run from its `bench_runs.options` (keys `tta`, `mc_dropout`; a key missing means the
    bench's default then: no TTA, no MC passes). `UNKNOWN` when there are no options at all or they do not parse."""
    if not isinstance(options, dict):
        return UNKNOWN
    try:
        return inference_mode(options.get("tta"), options.get("mc_dropout") or 0)
    except (TypeError, ValueError):
        return UNKNOWN


def metrics_key(mode: str, split: str = "test") -> str | None:
    """The run.json `metrics` key holding a registered model's metrics on `split` in `mode` (`test`, `test_tta`,
    `test_tta_crop`), or None: the registry evaluates the deterministic modes only."""
    return {PLAIN: split, "flip": f"{split}_tta", "flip+crop": f"{split}_tta_crop"}.get(mode)


def describe(mode: str) -> str:
    """A short human label: `flip+mc10` -> `flip TTA + 10 MC-Dropout passes`."""
    try:
        tta, n = parse_mode(mode)
    except ValueError:
        return "how these rows were made was not recorded" if mode == UNKNOWN else str(mode)
    parts = [f"{tta} TTA" if tta else ("no TTA" if n else "no TTA, deterministic")]
    if n:
        parts.append(f"{n} MC-Dropout pass{'es' if n > 1 else ''}")
    return " + ".join(parts)
