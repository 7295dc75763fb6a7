"""Age formulations: how a feature vector becomes an age. Each one is a head (a linear layer, or CORAL's shared one),
a training loss and a decoder to (age, sigma) in years, registered by name so configs can pick one.

    f = create_formulation("dldl", in_features=512, age_max=100)
    out = f(feats)                       # raw head output [B, K]
    loss = f.loss(out, age, weight)      # scalar; weight: optional per-sample weights (age-imbalance reweighting)
    age, sigma = f.decode(out)           # [B], [B] in years; sigma is NaN for pure point regressors

Losses are computed in float32 whatever the head's dtype (autocast), and ages are clamped to [0, age_max].
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.plugins import Registry

FORMULATIONS = Registry("formulation")  # name -> Formulation subclass
list_formulations = FORMULATIONS.names


def register_formulation(name: str) -> Callable[[type], type]:
    """Class decorator: add a Formulation subclass to the registry under `name` (its `.name`)."""
    add = FORMULATIONS.register(name)

    def deco(cls: type[Formulation]) -> type[Formulation]:
        add(cls)
        cls.name = name
        return cls

    return deco


def create_formulation(name: str, in_features: int, **kwargs) -> "Formulation":
    return FORMULATIONS.get(name)(in_features, **kwargs)


def _reduce(per_sample: Tensor, weight: Tensor | None) -> Tensor:
    """sum(w * l) / sum(w) with per-sample weights, else the plain mean."""
    if weight is None:
        return per_sample.mean()
    w = weight.to(per_sample)
    return (w * per_sample).sum() / w.sum().clamp_min(1e-12)


def _moments(p: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std of a discrete distribution p [B, K] over values ([K] or [B, K])."""
    mean = (p * values).sum(1)
    var = (p * (values - mean[:, None]) ** 2).sum(1)
    return mean, var.clamp_min(0).sqrt()


class Formulation(nn.Module):
    """Base class: a linear head with `n_outputs` outputs; subclasses define n_outputs, loss and decode."""

    name: str = ""
    has_sigma: bool = True

    def __init__(self, in_features: int, age_max: int = 100, **kwargs):
        super().__init__()
        if kwargs:  # a typo in a config's formulation_kwargs must not pass silently
            raise TypeError(f"{type(self).__name__} got unexpected kwargs: {', '.join(sorted(kwargs))}")
        self.in_features, self.age_max = in_features, int(age_max)
        self.head = self.make_head()

    @property
    def n_outputs(self) -> int:
        raise NotImplementedError

    def make_head(self) -> nn.Module:
        return nn.Linear(self.in_features, self.n_outputs)

    def forward(self, feats: Tensor) -> Tensor:
        return self.head(feats)

    def loss(self, out: Tensor, age: Tensor, weight: Tensor | None = None) -> Tensor:
        return _reduce(self.sample_loss(out.float(), self.clamp_age(age)), weight)

    def sample_loss(self, out: Tensor, age: Tensor) -> Tensor:
        """Per-sample loss [B] (float32 output, clamped float ages)."""
        raise NotImplementedError

    def decode(self, out: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def clamp_age(self, age: Tensor) -> Tensor:
        return age.float().clamp(0, self.age_max)

    # Regression heads work in a normalised space z = (age - c) / c, c = age_max / 2, so targets are O(1).
    def to_z(self, age: Tensor) -> Tensor:
        c = self.age_max / 2
        return (age - c) / c

    def from_z(self, z: Tensor) -> Tensor:
        c = self.age_max / 2
        return (c + c * z).clamp(0, self.age_max)


# ---- point regressors ------------------------------------------------------------------------------------------
class _PointRegression(Formulation):
    has_sigma = False

    @property
    def n_outputs(self) -> int:
        return 1

    def decode(self, out: Tensor) -> tuple[Tensor, Tensor]:
        age = self.from_z(out.float()[:, 0])
        return age, torch.full_like(age, float("nan"))


@register_formulation("l1")
class L1(_PointRegression):
    """Plain L1 regression of the normalised age (optimises MAE directly)."""

    def sample_loss(self, out: Tensor, age: Tensor) -> Tensor:
        return (out[:, 0] - self.to_z(age)).abs()


@register_formulation("l2")
class L2(_PointRegression):
    """Plain L2 (MSE) regression of the normalised age."""

    def sample_loss(self, out: Tensor, age: Tensor) -> Tensor:
        return (out[:, 0] - self.to_z(age)) ** 2


@register_formulation("smooth_l1")
class SmoothL1(_PointRegression):
    """Huber / smooth-L1 regression (Girshick, Fast R-CNN): quadratic within `beta` years, L1 beyond."""

    def __init__(self, in_features: int, age_max: int = 100, beta: float = 2.0, **kwargs):
        super().__init__(in_features, age_max, **kwargs)
        self.beta = float(beta)

    def sample_loss(self, out: Tensor, age: Tensor) -> Tensor:
        # beta is given in years; the loss lives in normalised units
        return F.smooth_l1_loss(out[:, 0], self.to_z(age), reduction="none", beta=self.beta / (self.age_max / 2))


# ---- likelihood heads ------------------------------------------------------------------------------------------
# The log-scale is expressed in years (sigma = exp(log_scale) years, Laplace b likewise) so outputs are readable;
# it is clamped to [LOG_SCALE_MIN, log(2 * age_max)] against exploding or vanishing variances.
LOG_SCALE_MIN = math.log(0.1)


class _NLL(Formulation):
    laplace: bool = False
    homoscedastic: bool = False

    def __init__(self, in_features: int, age_max: int = 100, **kwargs):
        super().__init__(in_features, age_max, **kwargs)
        init = math.log(age_max / 5)  # start near the spread of real ages, not at 1 year (huge first gradients)
        if self.homoscedastic:
            self.log_scale = nn.Parameter(torch.tensor(init))
        else:
            with torch.no_grad():
                self.head.bias[1] = init

    @property
    def n_outputs(self) -> int:
        return 1 if self.homoscedastic else 2

    def _mean_logscale(self, out: Tensor) -> tuple[Tensor, Tensor]:
        s = self.log_scale.expand(out.shape[0]) if self.homoscedastic else out[:, 1]
        return out[:, 0], s.float().clamp(LOG_SCALE_MIN, math.log(2 * self.age_max))

    def sample_loss(self, out: Tensor, age: Tensor) -> Tensor:
        mu, s = self._mean_logscale(out)
        s = s - math.log(self.age_max / 2)  # the scale in normalised units, matching mu
        r = (self.to_z(age) - mu) / s.exp()
        return s + (r.abs() if self.laplace else 0.5 * r ** 2)  # NLL up to a constant

    def decode(self, out: Tensor) -> tuple[Tensor, Tensor]:
        mu, s = self._mean_logscale(out.float())
        scale = s.exp()
        return self.from_z(mu), (scale * math.sqrt(2) if self.laplace else scale)  # Laplace std = sqrt(2) * b


@register_formulation("gaussian_nll")
class GaussianNLL(_NLL):
    """Heteroscedastic Gaussian NLL (Kendall & Gal 2017): per-image mean and log-sigma."""


@register_formulation("laplace_nll")
class LaplaceNLL(_NLL):
    """Heteroscedastic Laplace NLL: per-image mean and log-b; an L1-like fit with a learned attenuation."""

    laplace = True


@register_formulation("gaussian_nll_homo")
class GaussianNLLHomo(_NLL):
    """Homoscedastic Gaussian NLL: one learned global sigma (a baseline for the per-image one)."""

    homoscedastic = True


@register_formulation("laplace_nll_homo")
class LaplaceNLLHomo(_NLL):
    """Homoscedastic Laplace NLL: one learned global b."""

    laplace = True
    homoscedastic = True


# ---- distribution heads over integer ages 0..age_max ---------------------------------------------------------------
class _Softmax(Formulation):
    @property
    def n_outputs(self) -> int:
        return self.age_max + 1

    def ages(self, out: Tensor) -> Tensor:
        return torch.arange(self.age_max + 1, device=out.device, dtype=torch.float32)

    def decode(self, out: Tensor) -> tuple[Tensor, Tensor]:
        out = out.float()
        return _moments(out.softmax(1), self.ages(out))


@register_formulation("dex")
class DEX(_Softmax):
    """DEX (Rothe et al. 2015): (age_max+1)-way classification, decoded as the softmax expectation."""

    smoothing: float = 0.0

    def sample_loss(self, out: Tensor, age: Tensor) -> Tensor:
        return F.cross_entropy(out, age.round().long(), reduction="none", label_smoothing=self.smoothing)


@register_formulation("dex_ls")
class DEXLabelSmoothing(DEX):
    """DEX with label smoothing (Szegedy et al. 2016) against over-confident one-hot targets."""

    def __init__(self, in_features: int, age_max: int = 100, smoothing: float = 0.1, **kwargs):
        super().__init__(in_features, age_max, **kwargs)
        self.smoothing = float(smoothing)


@register_formulation("dldl")
class DLDL(_Softmax):
    """DLDL-v2 (Gao et al. 2018): KL to a Gaussian label distribution plus L1 on the expectation (in years)."""

    def __init__(self, in_features: int, age_max: int = 100, label_sigma: float = 2.0, l1_weight: float = 1.0,
                 **kwargs):
        super().__init__(in_features, age_max, **kwargs)
        self.label_sigma, self.l1_weight = float(label_sigma), float(l1_weight)

    def target(self, age: Tensor) -> Tensor:
        """Discretised Gaussian around each (possibly fractional) age, normalised over 0..age_max: [B, K]."""
        k = self.ages(age)
        return torch.softmax(-((k[None] - age[:, None]) ** 2) / (2 * self.label_sigma ** 2), dim=1)

    def sample_loss(self, out: Tensor, age: Tensor) -> Tensor:
        logp = out.log_softmax(1)
        kl = F.kl_div(logp, self.target(age), reduction="none").sum(1)
        return kl + self.l1_weight * ((logp.exp() * self.ages(out)).sum(1) - age).abs()


@register_formulation("mean_variance")
class MeanVariance(_Softmax):
    """Mean-variance loss (Pan et al. 2018): CE + lambda1 * (mean - age)^2 / 2 + lambda2 * variance, in years."""

    def __init__(self, in_features: int, age_max: int = 100, lambda1: float = 0.2, lambda2: float = 0.05, **kwargs):
        super().__init__(in_features, age_max, **kwargs)
        self.lambda1, self.lambda2 = float(lambda1), float(lambda2)

    def sample_loss(self, out: Tensor, age: Tensor) -> Tensor:
        mean, std = _moments(out.softmax(1), self.ages(out))
        ce = F.cross_entropy(out, age.round().long(), reduction="none")
        return ce + self.lambda1 * 0.5 * (mean - age) ** 2 + self.lambda2 * std ** 2


@register_formulation("residual_dex")
class ResidualDEX(Formulation):
    """Coarse bins + per-bin residual regression (DEX-style classification refined as in SSR-Net / Faster R-CNN).

    Outputs: n_bins logits, then n_bins residuals in units of the bin width (the offset from the bin centre).
    Bins are [k*w, (k+1)*w) for k < n_bins = ceil(age_max / w); the last bin also holds ages up to age_max.
    """

    def __init__(self, in_features: int, age_max: int = 100, bin_width: float = 10.0, **kwargs):
        self.bin_width = float(bin_width)
        self.n_bins = max(1, math.ceil(age_max / self.bin_width))
        super().__init__(in_features, age_max, **kwargs)

    @property
    def n_outputs(self) -> int:
        return 2 * self.n_bins

    def centers(self, out: Tensor) -> Tensor:
        return (torch.arange(self.n_bins, device=out.device, dtype=torch.float32) + 0.5) * self.bin_width

    def sample_loss(self, out: Tensor, age: Tensor) -> Tensor:
        logits, res = out[:, :self.n_bins], out[:, self.n_bins:]
        b = (age / self.bin_width).floor().long().clamp(0, self.n_bins - 1)
        target = (age - self.centers(out)[b]) / self.bin_width
        return F.cross_entropy(logits, b, reduction="none") + (res.gather(1, b[:, None])[:, 0] - target).abs()

    def decode(self, out: Tensor) -> tuple[Tensor, Tensor]:
        out = out.float()
        values = self.centers(out) + self.bin_width * out[:, self.n_bins:]  # each bin's refined age [B, n_bins]
        return _moments(out[:, :self.n_bins].softmax(1), values)


# ---- ordinal heads: age_max binary tasks "age > k", k = 0..age_max-1 ------------------------------------------------
class _Ordinal(Formulation):
    @property
    def n_outputs(self) -> int:
        return self.age_max

    def levels(self, age: Tensor) -> Tensor:
        """[B, age_max] float targets of "age > k" on the rounded age."""
        k = torch.arange(self.age_max, device=age.device)
        return (age.round().long()[:, None] > k[None]).float()

    def prob_greater(self, out: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, out: Tensor) -> tuple[Tensor, Tensor]:
        p = self.prob_greater(out.float())
        age = (p > 0.5).sum(1).float()  # rank counting, as both papers decode
        # The implied distribution P(age = k) = P(> k-1) - P(> k); CORAL's P(>k) need not be monotone, hence the clamp.
        ones, zeros = torch.ones_like(p[:, :1]), torch.zeros_like(p[:, :1])
        ext = torch.cat([ones, p, zeros], 1)
        pmf = (ext[:, :-1] - ext[:, 1:]).clamp_min(0)
        pmf = pmf / pmf.sum(1, keepdim=True).clamp_min(1e-12)
        _, sigma = _moments(pmf, torch.arange(self.age_max + 1, device=out.device, dtype=torch.float32))
        return age, sigma


class _SharedWeightHead(nn.Module):
    """CORAL's head: one weight vector shared by all tasks (rank consistency), one bias per task."""

    def __init__(self, in_features: int, n_tasks: int):
        super().__init__()
        self.fc = nn.Linear(in_features, 1, bias=False)
        # coral-pytorch's pre-initialisation: decreasing biases, so the initial P(age > k) is already ordered
        self.bias = nn.Parameter(torch.arange(n_tasks, 0, -1).float() / n_tasks)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) + self.bias


@register_formulation("coral")
class CORAL(_Ordinal):
    """CORAL (Cao et al. 2020): rank-consistent ordinal regression, binary CE summed over the age_max tasks."""

    def make_head(self) -> nn.Module:
        return _SharedWeightHead(self.in_features, self.age_max)

    def sample_loss(self, out: Tensor, age: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(out, self.levels(age), reduction="none").sum(1)

    def prob_greater(self, out: Tensor) -> Tensor:
        return out.sigmoid()


@register_formulation("corn")
class CORN(_Ordinal):
    """CORN (Shi et al. 2021): conditional tasks P(age > k | age > k-1), each trained on the samples with age > k-1."""

    def loss(self, out: Tensor, age: Tensor, weight: Tensor | None = None) -> Tensor:
        # Not a per-sample mean: as in the paper, the sum of BCE over all (sample, task) pairs in the conditional
        # subsets divided by the number of such pairs; per-sample weights scale both a sample's terms and its count.
        out, age = out.float(), self.clamp_age(age)
        y = self.levels(age)
        mask = torch.cat([torch.ones_like(y[:, :1]), y[:, :-1]], 1)  # task k sees samples with age > k-1
        bce = F.binary_cross_entropy_with_logits(out, y, reduction="none") * mask
        w = torch.ones_like(age) if weight is None else weight.to(age)
        return (w * bce.sum(1)).sum() / (w * mask.sum(1)).sum().clamp_min(1e-12)

    def prob_greater(self, out: Tensor) -> Tensor:
        return out.sigmoid().cumprod(1)  # P(> k) = prod_{j <= k} P(> j | > j-1)
