"""Putting predictors on a device (the bench's): CUDA when available (fp16 autocast, channels_last), else CPU.

`zoo.inference.NetworkPredictor.predict` builds its batch on the CPU and returns numpy, so on a GPU this drives
the predictor's own forward passes (`NetworkPredictor._passes`, the same decoding and MC-Dropout / TTA logic) on a
CUDA batch and applies the same reductions (`zoo.inference.predict_by_mode`). Ensembles are rebuilt over
device-placed members so the ensemble's own combination rule is kept. Peers (ONNX, CPU) pass through unchanged.
"""
from __future__ import annotations

import numpy as np
import torch

from zoo.inference import EnsemblePredictor, NetworkPredictor, embed_batches, predict_by_mode, to_batch
from zoo.predictor import Predictor


def pick_device(name: str | None = None) -> torch.device:
    if name and name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


class DevicePredictor:
    """A single network on `device`: same outputs as `NetworkPredictor.predict`, computed on the device."""

    def __init__(self, inner: NetworkPredictor, device: torch.device, manual: bool | None = None):
        self.inner, self.device = inner, device
        self.img_size, self.id, self.info = inner.img_size, inner.id, inner.info
        self.attributes, self.targets = inner.attributes, inner.targets
        inner.model.to(device).to(memory_format=torch.channels_last)  # NHWC kernels on both CPU and GPU
        self.amp = device.type == "cuda"
        # CPU uses the predictor's own path; `manual=True` forces the device path on CPU (tests check it there).
        self.manual = device.type != "cpu" if manual is None else manual

    def predict(self, images: np.ndarray, mc_dropout: int = 0, tta: str | None = None,
                batch_size: int = 256) -> dict[str, np.ndarray]:
        return self.predict_modes(images, (tta,), mc_dropout, batch_size)[tta]

    def predict_modes(self, images: np.ndarray, modes, mc_dropout: int = 0,
                      batch_size: int = 256) -> dict[str | None, dict[str, np.ndarray]]:
        if not self.manual:
            return self.inner.predict_modes(images, modes, mc_dropout, batch_size)
        return predict_by_mode(self._passes, images, modes, mc_dropout, batch_size)

    @torch.inference_mode()
    def _passes(self, chunk: np.ndarray, mc_dropout: int, tta: str | None) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device, non_blocking=True)
        x = to_batch(x.permute(0, 3, 1, 2).float().div_(255), self.img_size)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            r = self.inner._passes(x, mc_dropout, tta)
        return {k: v.float().cpu() for k, v in r.items()}

    def embed(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """`NetworkPredictor.embed` computed on the device (features of the plain view, float32 [B, D])."""
        if not self.manual:
            return self.inner.embed(images, batch_size)
        return embed_batches(self._features, images, batch_size)

    @torch.inference_mode()
    def _features(self, chunk: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device, non_blocking=True)
        x = to_batch(x.permute(0, 3, 1, 2).float().div_(255), self.img_size)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            return self.inner.model.features(x).float()


def on_device(predictor: Predictor, device: torch.device) -> Predictor:
    """The predictor wrapped to run on `device` (peers and unknown predictor types are returned as they are)."""
    if isinstance(predictor, EnsemblePredictor):
        return EnsemblePredictor([on_device(m, device) for m in predictor.members], predictor.id, predictor.info)
    if isinstance(predictor, NetworkPredictor):
        return DevicePredictor(predictor, device)
    return predictor
