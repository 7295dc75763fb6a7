"""Batch-wise augmentation on tensors: flip, crop/zoom, small rotation and colour jitter in one affine resample.

Working on whole batches (one `grid_sample` call) instead of per-image PIL transforms keeps augmentation a small
fraction of a training step on CPU. The batch's device is where it runs: training augments on the GPU when it trains
on one (the random parameters are drawn there too; on CPU the draws are the same as ever).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zoo.plugins import Registry


@dataclass(frozen=True)
class AugmentPreset:
    flip: float = 0.0  # probability of a horizontal flip
    zoom: tuple[float, float] = (1.0, 1.0)  # crop side as a fraction of the image (1 = no crop)
    shift: float = 0.0  # max translation as a fraction of the image
    rotate: float = 0.0  # max rotation in degrees
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    grayscale: float = 0.0  # probability


AUGMENTS = Registry("augment preset")  # name -> AugmentPreset


def register_augment(name: str, preset: AugmentPreset) -> AugmentPreset:
    return AUGMENTS.register(name, preset)


register_augment("none", AugmentPreset())
register_augment("light", AugmentPreset(flip=0.5, zoom=(0.9, 1.0), shift=0.05, brightness=0.1, contrast=0.1))
register_augment("strong", AugmentPreset(flip=0.5, zoom=(0.8, 1.0), shift=0.1, rotate=10.0, brightness=0.3,
                                         contrast=0.3, saturation=0.3, grayscale=0.1))


def augment_batch(x: torch.Tensor, preset: AugmentPreset | str, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """x: float [B, 3, H, W] in [0, 1] -> augmented batch of the same shape."""
    p = AUGMENTS.get(preset) if isinstance(preset, str) else preset
    if p == AUGMENTS["none"]:
        return x
    b, dev = x.shape[0], x.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=generator, device=dev) * (hi - lo) + lo

    scale = u(*p.zoom)
    angle = u(-p.rotate, p.rotate) * math.pi / 180
    flip = torch.where(torch.rand(b, generator=generator, device=dev) < p.flip, -1.0, 1.0)
    tx, ty = u(-p.shift, p.shift) * 2, u(-p.shift, p.shift) * 2
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    if p.zoom != (1.0, 1.0) or p.shift or p.rotate:
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    elif p.flip:
        x = torch.where((flip < 0).view(-1, 1, 1, 1), x.flip(-1), x)
    shape = (b, 1, 1, 1)
    if p.brightness:
        x = x * u(1 - p.brightness, 1 + p.brightness).view(shape)
    if p.contrast:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * u(1 - p.contrast, 1 + p.contrast).view(shape) + mean
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    if p.saturation:
        x = (x - gray) * u(1 - p.saturation, 1 + p.saturation).view(shape) + gray
    if p.grayscale:
        x = torch.where((torch.rand(b, generator=generator, device=dev) < p.grayscale).view(shape), gray.expand_as(x),
                        x)
    return x.clamp_(0, 1)
