"""Backbone registry: feature extractors mapping an image batch [B, 3, H, W] (normalised) to features [B, F].

Everything trains from scratch unless the user points `pretrained` at a local checkpoint, or a backbone ships its own
weights inside an installed package (see `zoo.pretrained`). Nothing here ever downloads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from zoo.plugins import Registry

BACKBONES = Registry("backbone")  # name -> factory(**kwargs) -> nn.Module with .num_features
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


register_backbone = BACKBONES.register
list_backbones = BACKBONES.names


class SmallCNN(nn.Module):
    """The seeds' plain Keras-style CNNs: (conv 3x3 [- BN] - ReLU - 2x2 max-pool) per filter count, the last map
    average-pooled to a `grid` x `grid` grid and flattened, then dense - ReLU - dropout."""

    def __init__(self, filters: tuple[int, ...], hidden: int, dropout: float, grid: int = 1, batchnorm: bool = True):
        super().__init__()
        layers, c_in = [], 3
        for c_out in filters:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batchnorm),
                       *([nn.BatchNorm2d(c_out)] if batchnorm else []), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(grid), nn.Flatten())
        self.dense = nn.Sequential(nn.Linear(c_in * grid * grid, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.num_features = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.features(x))


@register_backbone("seed_cnn")
def seed_cnn(width: int = 32, hidden: int = 256, dropout: float = 0.3) -> nn.Module:
    """The age seed's baseline: 4 conv-BN stages of 32/64/128/256 filters, global pooling, dense 256."""
    return SmallCNN(tuple(width * 2**i for i in range(4)), hidden, dropout)


@register_backbone("softbio_cnn")
def softbio_cnn(filters: tuple[int, ...] = (32, 64, 128), hidden: int = 512, dropout: float = 0.5, grid: int = 10,
                batchnorm: bool = False) -> nn.Module:
    """The soft-biometric seed's CNN for 80x80 faces: 3 x (conv 3x3 - ReLU - 2x2 max-pool) with 32/64/128 filters,
    flatten, dense 512, dropout 0.5. At 80 px the last map is 10x10 and flattens as the seed's does; other sizes
    are pooled to that grid first, so the dense layer (and a checkpoint) fits any input size."""
    return SmallCNN(tuple(filters), hidden, dropout, grid, batchnorm)


def _timm_backbone(timm_name: str) -> Callable[..., nn.Module]:
    def make(**kwargs) -> nn.Module:
        # Imported here: timm imports torchvision (~2 s), which a network whose backbone runs in ONNX Runtime
        # (runtime onnx-cached) never needs.
        import timm

        # pretrained=False always: timm would download; local weights are loaded by `load_local_weights`.
        return timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs)

    make.__name__ = timm_name
    return make


for _name in ("resnet18", "resnet50", "efficientnet_b0", "efficientnet_b2", "mobilenetv2_100",
              "mobilenetv3_small_100", "mobilenetv3_large_100", "vgg16_bn", "efficientnet_lite0",
              "efficientnet_lite1", "efficientnet_lite2"):
    register_backbone(_name)(_timm_backbone(_name))


def load_local_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load a local checkpoint (safetensors, or a torch state dict read with weights_only=True) into the backbone.
    A zoo checkpoint (`best.safetensors` of a registered run) contributes its `backbone.*` tensors, so a run can
    start from another run (e.g. progressive resizing). Classifier weights that do not fit are skipped; any other
    shape mismatch, or a checkpoint with nothing for this backbone, is an error. Returns skipped keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    if any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    own = model.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{path}: shape mismatch for {bad[:5]}{'…' if len(bad) > 5 else ''}")
    if not any(k in own for k in state):
        raise ValueError(f"{path}: no tensor in it belongs to this backbone (wrong architecture?)")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return sorted(set(state) - set(own))


def create_backbone(name: str, pretrained: str | None = None, **kwargs) -> tuple[nn.Module, int, tuple, tuple]:
    """Build a backbone; returns (module, feature dim, input mean, input std)."""
    model = BACKBONES.get(name)(**kwargs)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if pretrained == "imagenet":
        from zoo.pretrained import load_packaged_imagenet

        mean, std = load_packaged_imagenet(model, name)
    elif pretrained:
        load_local_weights(model, pretrained)
    with torch.no_grad():  # feature width differs from num_features for some timm heads (mobilenetv3, vgg)
        was = model.training
        model.eval()
        dim = model(torch.zeros(1, 3, 64, 64)).shape[1]
        model.train(was)
    return model, dim, mean, std
