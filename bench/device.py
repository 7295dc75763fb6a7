"""Putting predictors on the bench's device: CUDA when available (fp16 autocast, channels_last), else CPU.

`zoo.inference.Predictor.predict` builds its batch on the CPU and returns numpy, so on a GPU the bench drives the
predictor's own forward passes (`Predictor._passes`, the same decoding and MC-Dropout / TTA logic) on a CUDA batch
and applies the same reductions as `Predictor.predict`. Ensembles are rebuilt over device-placed members so the
ensemble's own combination rule is kept. Peers (ONNX, CPU) pass through unchanged.
"""
from __future__ import annotations

import numpy as np
import torch

from zoo.inference import EnsemblePredictor, Predictor


def pick_device(name: str | None = None) -> torch.device:
    if name and name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


class DevicePredictor:
    """A single network on `device`: same outputs as `Predictor.predict`, computed on the device."""

    def __init__(self, inner: Predictor, device: torch.device, manual: bool | None = None):
        self.inner, self.device = inner, device
        self.img_size, self.id, self.info = inner.img_size, inner.id, inner.info
        inner.model.to(device).to(memory_format=torch.channels_last)  # NHWC kernels on both CPU and GPU
        self.amp = device.type == "cuda"
        # CPU uses the predictor's own path; `manual=True` forces the device path on CPU (tests check it there).
        self.manual = device.type != "cpu" if manual is None else manual

    @torch.inference_mode()
    def predict(self, images: np.ndarray, mc_dropout: int = 0, tta: str | None = None,
                batch_size: int = 256) -> dict[str, np.ndarray]:
        if not self.manual:
            return self.inner.predict(images, mc_dropout=mc_dropout, tta=tta, batch_size=batch_size)
        from zoo.inference import to_batch

        if images.ndim == 3:
            images = images[None]
        parts = []
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(self.device, non_blocking=True)
            x = to_batch(x.permute(0, 3, 1, 2).float().div_(255), self.img_size)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                r = self.inner._passes(x, mc_dropout, tta)
            age, sig, g = (r[k].float().cpu() for k in ("age", "sigma", "gender"))
            nan = torch.full_like(age[0, 0], float("nan"))
            parts.append({"age": age.mean(dim=(0, 1)), "sigma_aleatoric": sig.pow(2).mean(dim=(0, 1)).sqrt(),
                          "sigma_epistemic": age.mean(1).std(0, unbiased=False) if mc_dropout > 0 else nan,
                          "sigma_tta": age.mean(0).std(0, unbiased=False) if tta else nan,
                          "gender_prob": g.mean(dim=(0, 1))})
        return {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0]}


def on_device(predictor, device: torch.device):
    """The predictor wrapped to run on `device` (peers and unknown predictor types are returned as they are)."""
    if isinstance(predictor, EnsemblePredictor):
        return EnsemblePredictor([on_device(m, device) for m in predictor.members], predictor.id, predictor.info)
    if isinstance(predictor, Predictor):
        return DevicePredictor(predictor, device)
    return predictor
