"""Inference API used by the bench and the dashboard: `zoo.load(model_id).predict(images, mc_dropout=N, tta=...)`.

Every predictor returns the same dict of [B] float arrays (NaN where a quantity does not apply):
  age              mean predicted age in years
  sigma_aleatoric  the formulation's own predictive std (NLL / distribution heads), RMS over passes and views
  sigma_epistemic  MC-Dropout spread (std over stochastic passes), or the spread across ensemble members
  sigma_tta        spread of the age over test-time-augmentation views
  gender_prob      probability of "female"
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

OUTPUTS = ("age", "sigma_aleatoric", "sigma_epistemic", "sigma_tta", "gender_prob")
TTA_MODES = ("flip", "flip+crop")


def to_batch(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [B, H, W, 3] / [H, W, 3] arrays or float [B, 3, H, W] tensors in [0, 1] -> float [B, 3, size, size]."""
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [B, H, W, 3], got shape {images.shape}")
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    else:
        x = images.float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous(memory_format=torch.channels_last)


def tta_views(x: torch.Tensor, mode: str | None) -> list[torch.Tensor]:
    if mode is None:
        return [x]
    if mode not in TTA_MODES:
        raise ValueError(f"unknown tta {mode!r}; choose from {TTA_MODES}")
    views = [x, x.flip(-1)]
    if mode == "flip+crop":
        s = x.shape[-1]
        m = max(1, round(s * 0.05))  # a 90 % centre crop, resized back
        crop = F.interpolate(x[..., m:s - m, m:s - m], size=(s, s), mode="bilinear", align_corners=False)
        views += [crop, crop.flip(-1)]
    return views


def set_mc_dropout(model: nn.Module, active: bool) -> None:
    """Dropout layers sample (MC-Dropout) while BatchNorm stays in eval mode."""
    model.eval()
    if active:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.train()


class Predictor:
    """A single trained network (`zoo.model.AgeGenderModel`) with its decoding."""

    def __init__(self, model: nn.Module, img_size: int, model_id: str = "", info: dict | None = None):
        self.model = model.eval()
        self.img_size = img_size
        self.id = model_id
        self.info = info or {}
        # Dropout inside the backbone (seed_cnn's dense layer) means each MC pass must rerun the whole network;
        # otherwise only the heads see dropout and one backbone pass per view serves every MC pass.
        self._full_mc = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.backbone.modules())

    def _decode(self, out: dict[str, torch.Tensor], b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nan = torch.full((b,), float("nan"))
        age, sig = self.model.age.decode(out["age"]) if "age" in out else (nan, nan)
        gender = torch.sigmoid(out["gender"].float()) if "gender" in out else nan
        return age.float(), sig.float(), gender

    @torch.inference_mode()  # no autograd bookkeeping at all (inference only)
    def _passes(self, x: torch.Tensor, mc_dropout: int, tta: str | None) -> dict[str, torch.Tensor]:
        """Stacked outputs [passes, views, B]."""
        m, n, sample = self.model, max(1, mc_dropout), mc_dropout > 0
        full = sample and self._full_mc
        if full:  # otherwise the model stays as __init__ left it (eval): no per-batch walk over its modules
            set_mc_dropout(m, True)
        ages, sigmas, genders = [], [], []  # per view: [passes, B]
        for v in tta_views(x, tta):
            f = None if full else m.features(v)
            outs = [m.heads(m.features(v) if full else f, sample_dropout=sample) for _ in range(n)]
            a, s, g = zip(*(self._decode(o, v.shape[0]) for o in outs))
            ages.append(torch.stack(a)), sigmas.append(torch.stack(s)), genders.append(torch.stack(g))
        if full:
            set_mc_dropout(m, False)
        return {"age": torch.stack(ages, 1), "sigma": torch.stack(sigmas, 1), "gender": torch.stack(genders, 1)}

    def predict(self, images: np.ndarray | torch.Tensor, mc_dropout: int = 0, tta: str | None = None,
                batch_size: int = 256) -> dict[str, np.ndarray]:
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = images[None]
        parts = []
        for i in range(0, len(images), batch_size):
            x = to_batch(images[i:i + batch_size], self.img_size)
            r = self._passes(x, mc_dropout, tta)
            age = r["age"]
            parts.append({
                "age": age.mean(dim=(0, 1)),
                "sigma_aleatoric": r["sigma"].pow(2).mean(dim=(0, 1)).sqrt(),
                "sigma_epistemic": age.mean(1).std(0, unbiased=False) if mc_dropout > 0 else torch.full_like(age[0, 0], float("nan")),
                "sigma_tta": age.mean(0).std(0, unbiased=False) if tta else torch.full_like(age[0, 0], float("nan")),
                "gender_prob": r["gender"].mean(dim=(0, 1)),
            })
        return {k: torch.cat([p[k] for p in parts]).numpy() for k in OUTPUTS}


class EnsemblePredictor:
    """Members' mean; epistemic sigma is the spread across members (combined with each member's MC spread)."""

    def __init__(self, members: Sequence[Predictor], model_id: str = "", info: dict | None = None):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.img_size = max(m.img_size for m in members)
        self.id = model_id
        self.info = info or {}

    def predict(self, images: np.ndarray | torch.Tensor, mc_dropout: int = 0, tta: str | None = None,
                batch_size: int = 256) -> dict[str, np.ndarray]:
        outs = [m.predict(images, mc_dropout=mc_dropout, tta=tta, batch_size=batch_size) for m in self.members]
        stack = {k: np.stack([o[k] for o in outs]) for k in OUTPUTS}
        within = np.nan_to_num(stack["sigma_epistemic"]) ** 2
        return {
            "age": stack["age"].mean(0),
            "sigma_aleatoric": np.sqrt(np.mean(stack["sigma_aleatoric"] ** 2, axis=0)),
            "sigma_epistemic": np.sqrt(stack["age"].var(0) + within.mean(0)),
            "sigma_tta": stack["sigma_tta"].mean(0),
            "gender_prob": stack["gender_prob"].mean(0),
        }
