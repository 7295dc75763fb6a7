"""How a model is trained, by name: optimizers, learning-rate schedules and backbone freezing (config fields
`optimizer`, `schedule` and `freeze`). Adding one is one registered function here.

    OPTIMIZERS.get("adamw")(param_groups, weight_decay)             -> torch.optim.Optimizer
    SCHEDULES.get("cosine")(step, total, warmup, plateau_scale)     -> factor on each group's base lr
    frozen_param_names(backbone, "stages:2")                        -> names of the backbone parameters to freeze

A freeze is `kind` or `kind:arg`; a kind that takes an argument is registered with `arg=<regex>` (and `syntax=`,
how to write it), e.g. `stages:K`.
"""
from __future__ import annotations

import math
import re
from typing import Callable

import torch
from torch import nn

from zoo.plugins import Registry

OPTIMIZERS = Registry("optimizer")  # name -> (param groups, weight_decay) -> Optimizer
SCHEDULES = Registry("schedule")  # name -> (step, total steps, warmup steps, plateau scale) -> lr factor
FREEZES = Registry("freeze")  # kind -> (backbone, arg or None) -> frozen parameter names


@OPTIMIZERS.register("adamw")
def _adamw(groups: list[dict], weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, weight_decay=weight_decay)


@OPTIMIZERS.register("sgd")
def _sgd(groups: list[dict], weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=weight_decay)


def _warmup(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / max(1, warmup))


@SCHEDULES.register("cosine")
def cosine(step: int, total: int, warmup: int, plateau_scale: float = 1.0) -> float:
    """Linear warmup, then a cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@SCHEDULES.register("plateau")
def plateau(step: int, total: int, warmup: int, plateau_scale: float = 1.0) -> float:
    """Linear warmup, then the training loop's plateau scale (halved after 2 epochs without a better val score)."""
    return _warmup(step, warmup) * plateau_scale


@FREEZES.register("none")
def _freeze_none(backbone: nn.Module, arg: str | None) -> set[str]:
    return set()


@FREEZES.register("linear_probe")
def _linear_probe(backbone: nn.Module, arg: str | None) -> set[str]:
    """The whole backbone: only the heads train."""
    return {n for n, _ in backbone.named_parameters()}


@FREEZES.register("stages", arg=r"\d+", syntax="stages:K")
def _stages(backbone: nn.Module, arg: str | None) -> set[str]:
    """The stem and the first K stages (timm's feature_info)."""
    k = int(arg)
    names = [n for n, _ in backbone.named_parameters()]
    info = getattr(backbone, "feature_info", None)
    if info is None:
        raise ValueError(f"freeze=stages:K needs a timm backbone with feature_info, not {type(backbone)}")
    modules = [i["module"] for i in info]
    if k + 1 >= len(modules):
        return set(names)
    first = next(i for i, n in enumerate(names) if n.startswith(modules[k + 1] + "."))
    return set(names[:first])


def freeze_syntax() -> str:
    """`none | linear_probe | stages:K`: how to write each registered freeze."""
    return " | ".join(FREEZES.meta(k).get("syntax", k) for k in FREEZES)


def parse_freeze(spec: str) -> tuple[Callable[[nn.Module, str | None], set[str]], str | None]:
    """`kind` or `kind:arg` -> (the registered function, arg or None); ValueError naming the syntax otherwise."""
    kind, sep, arg = spec.partition(":") if isinstance(spec, str) else (spec, "", "")
    if kind not in FREEZES:
        raise ValueError(f"must be {freeze_syntax()} (got {spec!r})")
    pattern = FREEZES.meta(kind).get("arg")
    if (pattern is None) != (not sep) or (pattern is not None and not re.fullmatch(pattern, arg)):
        raise ValueError(f"must be {freeze_syntax()} (got {spec!r})")
    return FREEZES.get(kind), (arg if sep else None)


def frozen_param_names(backbone: nn.Module, freeze: str) -> set[str]:
    fn, arg = parse_freeze(freeze)
    return fn(backbone, arg)
