"""Exponential moving average of a network's weights: sampled from instead of the raw weights (smoother, better
samples for both diffusion models and GANs at no training cost)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(model: nn.Module) -> nn.Module:
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """Warm-up decay min(decay, (1+step)/(10+step)): early EMA follows the fast-changing weights closely."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - d)
    for e, b in zip(ema.buffers(), model.buffers()):  # BatchNorm statistics, spectral-norm vectors: copied
        e.copy_(b)
