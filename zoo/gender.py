"""Gender losses on a single logit (label 1 = female), registered by name so configs can pick one.

    loss_fn = create_gender_loss("focal", gamma=2.0)
    loss = loss_fn(logit, target, weight)   # logit [B], target [B] float in {0, 1}, weight: optional [B] -> scalar

With per-sample weights the loss is sum(w * l) / sum(w), else the plain mean, as for the age formulations.
"""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from zoo.plugins import Registry

GENDER_LOSSES = Registry("gender loss")  # name -> nn.Module class
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


def _reduce(per_sample: Tensor, weight: Tensor | None) -> Tensor:
    if weight is None:
        return per_sample.mean()
    w = weight.to(per_sample)
    return (w * per_sample).sum() / w.sum().clamp_min(1e-12)


@register_gender_loss("bce")
class BCE(nn.Module):
    """Binary cross-entropy on the logit."""

    def forward(self, logit: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return _reduce(F.binary_cross_entropy_with_logits(logit.float(), target.float(), reduction="none"), weight)


@register_gender_loss("focal")
class Focal(nn.Module):
    """Focal loss (Lin et al. 2017): BCE scaled by (1 - p_t)^gamma and alpha_t; alpha=None, gamma=0 is plain BCE."""

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0):
        super().__init__()
        self.alpha, self.gamma = alpha, float(gamma)

    def forward(self, logit: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        target = target.float()
        ce = F.binary_cross_entropy_with_logits(logit.float(), target, reduction="none")
        loss = (1 - (-ce).exp()) ** self.gamma * ce  # p_t = exp(-ce), computed stably from the logit
        if self.alpha is not None:
            loss = (self.alpha * target + (1 - self.alpha) * (1 - target)) * loss
        return _reduce(loss, weight)


@register_gender_loss("weighted_bce")
class WeightedBCE(nn.Module):
    """BCE with a class weight on label 1 (female), e.g. n_male / n_female against class imbalance."""

    def __init__(self, pos_weight: float = 1.0):
        super().__init__()
        self.pos_weight = float(pos_weight)

    def forward(self, logit: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        target = target.float()
        ce = F.binary_cross_entropy_with_logits(logit.float(), target, reduction="none")
        return _reduce(ce * (1 + (self.pos_weight - 1) * target), weight)
