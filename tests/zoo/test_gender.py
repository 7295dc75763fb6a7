"""Gender losses: registry, equivalences between the variants, known values and per-sample weighting."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zoo.gender import GENDER_LOSSES, create_gender_loss, list_gender_losses, register_gender_loss

LOGIT = torch.tensor([2.0, -1.0, 0.3, -3.0, 0.0])
TARGET = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])


def test_registry():
    assert list_gender_losses() == ["bce", "focal", "weighted_bce"]
    with pytest.raises(ValueError, match="unknown gender loss 'ce'.*focal"):
        create_gender_loss("ce")
    with pytest.raises(ValueError, match="already registered"):
        register_gender_loss("bce")(type("Other", (torch.nn.Module,), {}))
    assert GENDER_LOSSES["bce"].name == "bce"


def test_bce_matches_torch():
    ref = F.binary_cross_entropy_with_logits(LOGIT, TARGET)
    assert create_gender_loss("bce")(LOGIT, TARGET).item() == pytest.approx(ref.item(), rel=1e-6)


def test_focal_without_alpha_and_gamma_is_bce():
    bce = create_gender_loss("bce")(LOGIT, TARGET)
    assert create_gender_loss("focal", alpha=None, gamma=0.0)(LOGIT, TARGET).item() == pytest.approx(bce.item())
    # the defaults (alpha 0.25, gamma 2) down-weight the loss, and easy examples most
    assert create_gender_loss("focal")(LOGIT, TARGET) < bce


def test_focal_known_value():
    p = 1 / (1 + math.exp(-1.0))  # one positive example with logit 1: p_t = p
    expected = -0.25 * (1 - p) ** 2 * math.log(p)
    got = create_gender_loss("focal")(torch.tensor([1.0]), torch.tensor([1.0])).item()
    assert got == pytest.approx(expected, rel=1e-5)
    # a negative gets 1 - alpha
    got = create_gender_loss("focal", gamma=0.0)(torch.tensor([1.0]), torch.tensor([0.0])).item()
    assert got == pytest.approx(-0.75 * math.log(1 - p), rel=1e-5)


def test_weighted_bce():
    bce = create_gender_loss("bce")(LOGIT, TARGET)
    assert create_gender_loss("weighted_bce", pos_weight=1.0)(LOGIT, TARGET).item() == pytest.approx(bce.item())
    ref = F.binary_cross_entropy_with_logits(LOGIT, TARGET, pos_weight=torch.tensor(3.0))
    assert create_gender_loss("weighted_bce", pos_weight=3.0)(LOGIT, TARGET).item() == pytest.approx(ref.item())


@pytest.mark.parametrize("name", ["bce", "focal", "weighted_bce"])
def test_perfect_confident_prediction_has_no_loss(name):
    loss = create_gender_loss(name)(torch.tensor([20.0, -20.0]), torch.tensor([1.0, 0.0]))
    assert loss.item() < 1e-8
    wrong = create_gender_loss(name)(torch.tensor([-5.0, 5.0]), torch.tensor([1.0, 0.0]))
    assert wrong.item() > 0.1


@pytest.mark.parametrize("name", ["bce", "focal", "weighted_bce"])
def test_sample_weights(name):
    fn = create_gender_loss(name, **({"pos_weight": 2.0} if name == "weighted_bce" else {}))
    base = fn(LOGIT[:4], TARGET[:4])
    assert fn(LOGIT, TARGET, torch.tensor([1.0, 1, 1, 1, 0])).item() == pytest.approx(base.item(), rel=1e-6)
    assert fn(LOGIT[:4], TARGET[:4], torch.full((4,), 2.5)).item() == pytest.approx(base.item(), rel=1e-6)
    w = torch.tensor([0.0, 0, 0, 1, 0])  # all weight on one sample: its own loss
    assert fn(LOGIT, TARGET, w).item() == pytest.approx(fn(LOGIT[3:4], TARGET[3:4]).item(), rel=1e-6)


def test_gradient_flows():
    logit = LOGIT.clone().requires_grad_(True)
    create_gender_loss("focal")(logit, TARGET).backward()
    assert torch.isfinite(logit.grad).all() and logit.grad.abs().sum() > 0
