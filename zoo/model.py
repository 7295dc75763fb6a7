"""The network: backbone → dropout → task heads (age formulation, gender logit, race logits, one logit per attribute
task: `attr`, [B, K] in the order of `model.attributes`).

Input normalisation lives inside the model so every caller feeds plain [0, 1] RGB and a checkpoint carries what it
needs to be used correctly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.attributes import task_attributes
from zoo.backbones import create_backbone
from zoo.config import TrainConfig
from zoo.data.readers import RACES
from zoo.formulations import create_formulation


class AgeGenderModel(nn.Module):
    def __init__(self, cfg: TrainConfig, load_pretrained: bool = True, backbone: tuple[nn.Module, int] | None = None):
        """`backbone`: (module, feature dim) to use instead of building cfg's (zoo.export.exported_network: the
        heads of a network whose backbone runs in ONNX Runtime); mean and std then come from the checkpoint."""
        super().__init__()
        self.tasks = list(cfg.tasks)
        if backbone is None:
            self.backbone, dim, mean, std = create_backbone(
                cfg.backbone, pretrained=cfg.pretrained if load_pretrained else None, **cfg.backbone_kwargs)
        else:
            (self.backbone, dim), mean, std = backbone, (0.0,) * 3, (1.0,) * 3
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.dropout = nn.Dropout(cfg.dropout)
        self.age = create_formulation(cfg.formulation, dim, age_max=cfg.age_max, **cfg.formulation_kwargs) \
            if "age" in self.tasks else None
        self.gender = nn.Linear(dim, 1) if "gender" in self.tasks else None
        self.race = nn.Linear(dim, len(RACES)) if "race" in self.tasks else None
        self.attributes = task_attributes(self.tasks)
        self.attr = nn.Linear(dim, len(self.attributes)) if self.attributes else None
        if load_pretrained and cfg.pretrained and cfg.pretrained != "imagenet":
            self.warm_start_heads(cfg.pretrained)

    def warm_start_heads(self, path: str) -> list[str]:
        """Continue from a zoo checkpoint's heads too (progressive resizing: the same network, a larger input), so
        the new run does not spend its first epoch re-learning them. Heads whose shapes differ (another formulation
        or age range) keep their fresh init; attribute heads always do (a checkpoint does not say which attribute
        each of its logits is). Returns the head tensors loaded."""
        if not str(path).endswith(".safetensors"):
            return []
        from safetensors.torch import load_file

        own = self.state_dict()
        heads = {k: v for k, v in load_file(str(path)).items()
                 if k.split(".")[0] in ("age", "gender", "race") and k in own and own[k].shape == v.shape}
        self.load_state_dict(heads, strict=False)
        return sorted(heads)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)

    def heads(self, f: torch.Tensor, sample_dropout: bool = False) -> dict[str, torch.Tensor]:
        """Backbone features -> raw head outputs by task. `sample_dropout` samples the dropout mask even in eval
        mode, so MC-Dropout can reuse one backbone pass for many head passes."""
        f = F.dropout(f, self.dropout.p, training=True) if sample_dropout else self.dropout(f)
        out = {}
        if self.age is not None:
            out["age"] = self.age(f)
        if self.gender is not None:
            out["gender"] = self.gender(f).squeeze(1)
        if self.race is not None:
            out["race"] = self.race(f)
        if self.attr is not None:
            out["attr"] = self.attr(f)
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: float [B, 3, H, W] in [0, 1] -> raw head outputs by task."""
        return self.heads(self.features(x))


def count_flops(model: nn.Module, img_size: int) -> int:
    """Forward FLOPs for one image (multiply-add counted as 2), via torch's own counter."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, img_size, img_size))
    model.train(was)
    return int(counter.get_total_flops())
