"""Binary losses on a single logit, registered by name so configs can pick one: the gender head (label 1 = female,
`gender_loss`) and every attribute head (`head_losses`, zoo.attributes).

    loss_fn = create_gender_loss("focal", gamma=2.0, label_smoothing=0.1)
    loss = loss_fn(logit, target, weight)   # logit [B], target [B] float in {0, 1}, weight: optional [B] -> scalar

With per-sample weights the loss is sum(w * l) / sum(w), else the plain mean, as for the age formulations.
`label_smoothing` e pulls the targets to e/2 and 1 - e/2 (against noisy labels); what a loss weights by class (alpha,
pos_weight) and how hard an example is (focal) still follow the hard label.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from zoo.plugins import Registry

GENDER_LOSSES = Registry("gender loss")  # name -> nn.Module class
BINARY_LOSSES = GENDER_LOSSES  # the same table: every binary head picks its loss from it
list_gender_losses = GENDER_LOSSES.names


def register_gender_loss(name: str) -> Callable[[type], type]:
    """Class decorator: add a gender loss module to the registry under `name` (its `.name`)."""
    add = GENDER_LOSSES.register(name)

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        add(cls)
        cls.name = name
        return cls

    return deco


def create_gender_loss(name: str, **kwargs) -> nn.Module:
    return GENDER_LOSSES.get(name)(**kwargs)


create_binary_loss = create_gender_loss


def loss_problem(name: object, kwargs: object) -> str | None:
    """What is wrong with a binary loss and its keyword arguments (unknown name, an argument it does not take, a
    value out of range), in one sentence; None when it builds."""
    if name not in GENDER_LOSSES:
        return f"unknown binary loss {name!r}; known: {', '.join(GENDER_LOSSES.names())}"
    if not isinstance(kwargs, dict):
        return f"the arguments of {name} are a mapping, got {kwargs!r:.60}"
    takes = [p for p in inspect.signature(GENDER_LOSSES.get(name).__init__).parameters if p != "self"]
    extra = sorted(set(kwargs) - set(takes))
    if extra:
        return f"{name} does not take {', '.join(map(str, extra))} (it takes {', '.join(takes) or 'nothing'})"
    try:
        create_gender_loss(name, **kwargs)
    except (TypeError, ValueError) as e:
        return f"{name}: {e}"
    return None


def _reduce(per_sample: Tensor, weight: Tensor | None) -> Tensor:
    if weight is None:
        return per_sample.mean()
    w = weight.to(per_sample)
    return (w * per_sample).sum() / w.sum().clamp_min(1e-12)


def _number(value, name: str, ok: Callable[[float], bool], text: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(float(value)):
        raise ValueError(f"{name} must be {text} (got {value!r})")
    return float(value)


class _Smoothed(nn.Module):
    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = _number(label_smoothing, "label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)")

    def _ce(self, logit: Tensor, target: Tensor) -> Tensor:
        soft = target * (1 - self.label_smoothing) + 0.5 * self.label_smoothing if self.label_smoothing else target
        return F.binary_cross_entropy_with_logits(logit.float(), soft, reduction="none")


@register_gender_loss("bce")
class BCE(_Smoothed):
    """Binary cross-entropy on the logit."""

    def forward(self, logit: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return _reduce(self._ce(logit, target.float()), weight)


@register_gender_loss("focal")
class Focal(_Smoothed):
    """Focal loss (Lin et al. 2017): BCE scaled by (1 - p_t)^gamma and alpha_t; alpha=None, gamma=0 is plain BCE."""

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0, label_smoothing: float = 0.0):
        super().__init__(label_smoothing)
        self.alpha = None if alpha is None else _number(alpha, "alpha", lambda v: 0 <= v <= 1, "null or in [0, 1]")
        self.gamma = _number(gamma, "gamma", lambda v: v >= 0, ">= 0")

    def forward(self, logit: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        target = target.float()
        hard = F.binary_cross_entropy_with_logits(logit.float(), target, reduction="none")
        ce = self._ce(logit, target) if self.label_smoothing else hard
        loss = (1 - (-hard).exp()) ** self.gamma * ce  # p_t = exp(-ce), computed stably from the logit
        if self.alpha is not None:
            loss = (self.alpha * target + (1 - self.alpha) * (1 - target)) * loss
        return _reduce(loss, weight)


@register_gender_loss("weighted_bce")
class WeightedBCE(_Smoothed):
    """BCE with a class weight on label 1 (female, or the attribute present), e.g. n_negative / n_positive against
    class imbalance."""

    def __init__(self, pos_weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__(label_smoothing)
        self.pos_weight = _number(pos_weight, "pos_weight", lambda v: v > 0, "> 0")

    def forward(self, logit: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        target = target.float()
        return _reduce(self._ce(logit, target) * (1 + (self.pos_weight - 1) * target), weight)
