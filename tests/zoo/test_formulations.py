"""Age formulations: registry, decoders on hand-made outputs, known loss values, weighting, and a tiny fit."""
from __future__ import annotations

import math

import pytest
import torch

from zoo.formulations import (FORMULATIONS, Formulation, create_formulation, list_formulations,
                              register_formulation)

EXPECTED = {"l1", "l2", "smooth_l1", "gaussian_nll", "laplace_nll", "gaussian_nll_homo", "laplace_nll_homo", "dex",
            "dex_ls", "residual_dex", "dldl", "coral", "corn", "mean_variance"}
BIG = 30.0  # a logit that saturates the sigmoid / softmax


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The test machine's cores are shared; one thread is faster and steadier for these tiny ops."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make(name: str, **kw) -> Formulation:
    torch.manual_seed(0)
    return create_formulation(name, 4, **kw)


# ---- registry -------------------------------------------------------------------------------------------------
def test_registry_lists_every_formulation_sorted():
    names = list_formulations()
    assert set(names) == EXPECTED
    assert names == sorted(names)
    for n in names:
        assert FORMULATIONS[n].name == n


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown formulation 'nope'.*dldl"):
        create_formulation("nope", 8)


def test_duplicate_registration_errors():
    with pytest.raises(ValueError, match="already registered"):
        register_formulation("dex")(type("Other", (Formulation,), {}))
    assert FORMULATIONS["dex"].__name__ == "DEX"


def test_unknown_kwarg_is_an_error():
    with pytest.raises(TypeError, match="smoothing"):
        create_formulation("dex", 8, smoothing=0.2)  # only dex_ls takes it


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_forward_shape(name):
    f = make(name, age_max=60)
    k = {"l1": 1, "l2": 1, "smooth_l1": 1, "gaussian_nll_homo": 1, "laplace_nll_homo": 1, "gaussian_nll": 2,
         "laplace_nll": 2, "dex": 61, "dex_ls": 61, "dldl": 61, "mean_variance": 61, "coral": 60, "corn": 60,
         "residual_dex": 12}[name]
    assert f(torch.randn(5, 4)).shape == (5, k)


# ---- decoders on hand-made outputs --------------------------------------------------------------------------------
def test_point_regressors_decode_from_normalised_space():
    for name in ("l1", "l2", "smooth_l1"):
        f = make(name, age_max=80)
        age, sigma = f.decode(torch.tensor([[0.0], [-1.0], [0.5]]))
        assert torch.allclose(age, torch.tensor([40.0, 0.0, 60.0]))
        assert torch.isnan(sigma).all() and not f.has_sigma


def test_dex_decodes_expectation_and_std():
    f = make("dex")
    one = torch.full((1, 101), -BIG)
    one[0, 30] = BIG
    two = torch.full((1, 101), -BIG)
    two[0, [20, 40]] = BIG
    age, sigma = f.decode(torch.cat([one, two]))
    assert torch.allclose(age, torch.tensor([30.0, 30.0]), atol=1e-3)
    assert torch.allclose(sigma, torch.tensor([0.0, 10.0]), atol=1e-3)


@pytest.mark.parametrize("name", ["dex_ls", "dldl", "mean_variance"])
def test_softmax_heads_decode_like_dex(name):
    out = torch.full((1, 101), -BIG)
    out[0, [20, 40]] = BIG
    age, sigma = make(name).decode(out)
    assert age.item() == pytest.approx(30, abs=1e-3) and sigma.item() == pytest.approx(10, abs=1e-3)


def test_residual_dex_decodes_certain_bin_plus_residual():
    f = make("residual_dex")  # 10 bins of 10 years, centres 5, 15, ..., 95
    assert f.n_bins == 10
    out = torch.zeros(2, 20)
    out[:, :10] = -BIG
    out[0, 3], out[0, 10 + 3] = BIG, 0.2  # bin [30, 40) + 0.2 bin widths -> 37
    out[1, [1, 5]] = BIG  # half bin 1 (15 - 1 = 14), half bin 5 (55 + 1 = 56): mean 35, std 21
    out[1, 10 + 1], out[1, 10 + 5] = -0.1, 0.1
    age, sigma = f.decode(out)
    assert torch.allclose(age, torch.tensor([37.0, 35.0]), atol=1e-3)
    assert torch.allclose(sigma, torch.tensor([0.0, 21.0]), atol=1e-3)


def test_coral_counts_ranks_and_sigma_from_implied_distribution():
    f = make("coral")
    k = torch.arange(100)
    sure = torch.where(k < 25, BIG, -BIG)[None]
    # P(>k) = 1 below 20, 0.5 on [20, 40), 0 after: P(age=20) = P(age=40) = 1/2 -> count 20, std 10
    half = torch.where(k < 20, BIG, torch.where(k < 40, 0.0, -BIG))[None]
    age, sigma = f.decode(torch.cat([sure, half]))
    assert age.tolist() == [25.0, 20.0]
    assert sigma[0].item() == pytest.approx(0, abs=1e-4) and sigma[1].item() == pytest.approx(10, abs=1e-4)


def test_coral_non_monotone_probabilities_still_give_a_distribution():
    f = make("coral", age_max=4)
    age, sigma = f.decode(torch.tensor([[BIG, -BIG, BIG, -BIG]]))  # P(>1) < P(>2): clamped, renormalised
    assert age.item() == 2 and torch.isfinite(sigma).all()


def test_corn_decodes_via_cumulative_product():
    f = make("corn")
    k = torch.arange(100)
    sure = torch.where(k < 25, BIG, -BIG)[None]
    # conditionals stay certain after task 30 but one task at 0 logit halves everything beyond it
    half = torch.where(k == 20, 0.0, torch.where(k < 40, BIG, -BIG))[None]
    late = torch.where(k < 10, BIG, -BIG)[None].clone()
    late[0, 50:] = BIG  # after a certain "no" at task 10, later tasks cannot raise P(> k)
    age, sigma = f.decode(torch.cat([sure, half, late]))
    assert age.tolist() == [25.0, 20.0, 10.0]
    assert sigma[1].item() == pytest.approx(10, abs=1e-4)
    assert sigma[[0, 2]].abs().max() < 1e-4


def test_nll_heads_decode_mean_and_sigma():
    c = 50.0
    out = torch.tensor([[0.0, math.log(10.0)], [0.2, math.log(3.0)]])
    age, sigma = make("gaussian_nll").decode(out)
    assert torch.allclose(age, torch.tensor([c, c * 1.2]))
    assert torch.allclose(sigma, torch.tensor([10.0, 3.0]))
    age, sigma = make("laplace_nll").decode(out)
    assert torch.allclose(sigma, math.sqrt(2) * torch.tensor([10.0, 3.0]))  # Laplace std = sqrt(2) * b
    # the log-scale is clamped: absurd outputs give a finite, bounded sigma
    _, sigma = make("gaussian_nll").decode(torch.tensor([[0.0, -50.0], [0.0, 50.0]]))
    assert 0 < sigma[0] < 1 and sigma[1] <= 200 + 1e-3


@pytest.mark.parametrize("name,factor", [("gaussian_nll_homo", 1.0), ("laplace_nll_homo", math.sqrt(2))])
def test_homoscedastic_sigma_is_the_global_parameter(name, factor):
    f = make(name)
    assert f(torch.randn(3, 4)).shape == (3, 1)
    with torch.no_grad():
        f.log_scale.fill_(math.log(7.0))
    age, sigma = f.decode(f(torch.randn(6, 4)))
    assert torch.allclose(sigma, torch.full((6,), 7.0 * factor))
    assert len(set(age.tolist())) > 1


# ---- known loss values --------------------------------------------------------------------------------------------
def test_point_losses_zero_at_perfect_prediction_and_known_values():
    age = torch.tensor([10.0, 50.0, 90.0])
    for name in ("l1", "l2", "smooth_l1"):
        f = make(name)
        assert f.loss(f.to_z(age)[:, None], age).item() == pytest.approx(0, abs=1e-7)
    # 10 years off is 0.2 in normalised units
    assert make("l1").loss(torch.tensor([[0.2]]), torch.tensor([50.0])).item() == pytest.approx(0.2)
    assert make("l2").loss(torch.tensor([[0.2]]), torch.tensor([50.0])).item() == pytest.approx(0.04)


def test_ages_are_clamped_to_range():
    f = make("l1")
    out = torch.tensor([[1.0]])  # = age_max
    assert f.loss(out, torch.tensor([150.0])).item() == pytest.approx(0, abs=1e-7)


def test_nll_loss_values():
    c, err, s = 50.0, 5.0, 10.0
    out = torch.tensor([[err / c, math.log(s)]])
    got = make("gaussian_nll").loss(out, torch.tensor([c])).item()
    assert got == pytest.approx(math.log(s / c) + 0.5 * (err / s) ** 2, rel=1e-5)
    got = make("laplace_nll").loss(out, torch.tensor([c])).item()
    assert got == pytest.approx(math.log(s / c) + err / s, rel=1e-5)


def test_dex_loss_is_cross_entropy_on_rounded_age_and_smoothing_changes_it():
    out = torch.randn(4, 101)
    age = torch.tensor([10.4, 20.6, 0.0, 100.0])
    ce = torch.nn.functional.cross_entropy(out, torch.tensor([10, 21, 0, 100]))
    assert make("dex").loss(out, age).item() == pytest.approx(ce.item(), rel=1e-5)
    assert make("dex_ls", smoothing=0.0).loss(out, age).item() == pytest.approx(ce.item(), rel=1e-5)
    assert make("dex_ls").loss(out, age).item() != pytest.approx(ce.item(), rel=1e-3)


def test_dldl_loss_zero_at_target_distribution():
    f = make("dldl")
    age = torch.tensor([30.0, 50.5])
    out = f.target(age).clamp_min(1e-30).log()  # log 0 = -inf would make KL's 0 * inf a NaN
    assert f.loss(out, age).item() == pytest.approx(0, abs=1e-3)
    assert torch.allclose(f.target(age).sum(1), torch.ones(2))
    assert f.loss(out, age + 5).item() > 1


def test_mean_variance_loss_terms():
    f = make("mean_variance")
    out = torch.full((1, 101), -BIG)
    out[0, [20, 40]] = BIG  # mean 30, variance 100; CE on class 20 = log 2
    got = f.loss(out, torch.tensor([20.0])).item()
    assert got == pytest.approx(math.log(2) + 0.2 * 0.5 * 10 ** 2 + 0.05 * 100, rel=1e-4)


def test_residual_dex_loss_zero_when_bin_and_residual_are_right():
    f = make("residual_dex")
    out = torch.zeros(1, 20)
    out[0, :10] = -BIG
    out[0, 3], out[0, 13] = BIG, 0.2
    assert f.loss(out, torch.tensor([37.0])).item() == pytest.approx(0, abs=1e-5)
    assert f.loss(out, torch.tensor([38.0])).item() == pytest.approx(0.1, abs=1e-5)  # 1 year = 0.1 bin widths
    # age_max falls in the last bin
    out = torch.zeros(1, 20)
    out[0, :10], out[0, 9], out[0, 19] = -BIG, BIG, 0.5
    assert f.loss(out, torch.tensor([100.0])).item() == pytest.approx(0, abs=1e-5)


@pytest.mark.parametrize("name", ["coral", "corn"])
def test_ordinal_loss_near_zero_when_confident_and_right(name):
    k = torch.arange(100)
    out = torch.where(k < 25, BIG, -BIG)[None].float()
    f = make(name)
    assert f.loss(out, torch.tensor([25.0])).item() < 1e-6
    assert f.loss(out, torch.tensor([30.0])).item() > 1


def test_coral_shares_one_weight_vector():
    f = make("coral")
    out = f(torch.randn(8, 4))
    gaps = out - out[:, :1]  # task differences come from the biases alone
    assert torch.allclose(gaps, gaps[:1].expand_as(gaps), atol=1e-5)
    assert sum(p.numel() for p in f.parameters()) == 4 + 100


def test_corn_task_k_ignores_samples_at_or_below_k_minus_1():
    f = make("corn")
    out, age = torch.randn(2, 100), torch.tensor([10.0, 60.0])
    base = f.loss(out, age)
    changed = out.clone()
    changed[0, 50] += 5.0  # task 50 trains only on age > 49: not the 10-year-old
    assert f.loss(changed, age).item() == pytest.approx(base.item(), rel=1e-6)
    changed[1, 50] += 5.0
    assert f.loss(changed, age).item() != pytest.approx(base.item(), rel=1e-4)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_weights_zero_weight_ignored_uniform_weight_is_mean(name):
    f = make(name)
    torch.manual_seed(1)
    out, age = f(torch.randn(5, 4)).detach(), torch.tensor([12.0, 33.0, 47.0, 71.0, 5.0])
    base = f.loss(out[:4], age[:4])
    assert f.loss(out, age, torch.tensor([1.0, 1, 1, 1, 0])).item() == pytest.approx(base.item(), rel=1e-5)
    assert f.loss(out[:4], age[:4], torch.full((4,), 3.0)).item() == pytest.approx(base.item(), rel=1e-5)
    # a non-uniform weight moves the loss toward the up-weighted sample
    w = torch.tensor([1.0, 1, 1, 1, 5])
    alone = f.loss(out[4:], age[4:])
    mixed = f.loss(out, age, w)
    assert min(base, alone) - 1e-5 <= mixed <= max(base, alone) + 1e-5


# ---- a tiny fit -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_trains_on_planted_linear_relation(name):
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    age = (40 + 12 * x[:, 0] + 6 * x[:, 1] + torch.randn(256)).clamp(1, 95)
    f = create_formulation(name, 8)
    opt = torch.optim.Adam(f.parameters(), lr=0.1)
    with torch.no_grad():
        before, _ = f.decode(f(x))
    losses = []
    for _ in range(60):
        loss = f.loss(f(x), age)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < sum(losses[:10])
    with torch.no_grad():
        pred, sigma = f.decode(f(x))
    assert pred.shape == sigma.shape == (256,)
    assert torch.isfinite(pred).all()
    assert torch.isfinite(sigma).all() if f.has_sigma else torch.isnan(sigma).all()
    mae_before, mae_after = (before - age).abs().mean(), (pred - age).abs().mean()
    assert mae_after < 0.5 * mae_before, (mae_before, mae_after)
