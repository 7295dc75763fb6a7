"""Conditional DCGAN in plain PyTorch, conditioned on the same 18 age-bin x gender classes as the DDPM.

G: [z, embed(y)] -> 4x4 -> transposed-conv upsampling to `size`, with class-conditional BatchNorm (the label
modulates every layer, not only the input). D: strided convs with spectral norm, projection discriminator output
`linear(h) + <embed(y), h>` (Miyato & Koyama 2018). Hinge loss, Adam(0, 0.9): the standard stable recipe.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from synth.config import SynthConfig
from synth.ema import make_ema, update_ema
from synth.labels import N_CLASSES


class CondBatchNorm(nn.Module):
    """BatchNorm whose scale and shift come from the class (initialised to the identity)."""

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(n_classes, channels)
        self.bias = nn.Embedding(n_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


def _n_levels(size: int) -> int:
    return int(math.log2(size)) - 2  # 4x4 -> size


class Generator(nn.Module):
    """DCGAN layout (e.g. 64 px, width 32: 4x4x256 -> 8x8x128 -> 16x16x64 -> 32x32x32 -> 64x64x3)."""

    def __init__(self, size: int, width: int = 32, z_dim: int = 128, n_classes: int = N_CLASSES):
        super().__init__()
        n = _n_levels(size)
        chans = [width * 2 ** (n - 1 - i) for i in range(n)]
        self.z_dim = z_dim
        self.embed = nn.Embedding(n_classes, z_dim)
        self.fc = nn.Linear(2 * z_dim, chans[0] * 16)
        self.bn0 = CondBatchNorm(chans[0], n_classes)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(chans[i], chans[i + 1], 4, 2, 1, bias=False)
                                 for i in range(n - 1))
        self.bns = nn.ModuleList(CondBatchNorm(chans[i + 1], n_classes) for i in range(n - 1))
        self.out = nn.ConvTranspose2d(chans[-1], 3, 4, 2, 1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.embed(y)], 1)).view(len(z), -1, 4, 4)
        h = F.relu(self.bn0(h, y))
        for up, bn in zip(self.ups, self.bns):
            h = F.relu(bn(up(h), y))
        return torch.tanh(self.out(h))


class Discriminator(nn.Module):
    """DCGAN layout mirrored (64 px, width 32: 64x64x3 -> 32x32x32 -> … -> 4x4x256), spectral norm everywhere."""

    def __init__(self, size: int, width: int = 32, n_classes: int = N_CLASSES):
        super().__init__()
        n = _n_levels(size)
        chans = [3] + [width * 2 ** i for i in range(n)]
        self.downs = nn.ModuleList(spectral_norm(nn.Conv2d(chans[i], chans[i + 1], 4, 2, 1)) for i in range(n))
        self.linear = spectral_norm(nn.Linear(chans[-1], 1))
        self.embed = spectral_norm(nn.Embedding(n_classes, chans[-1]))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = x
        for d in self.downs:
            h = F.leaky_relu(d(h), 0.2)
        h = h.sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(1)  # projection term: class-aware realism


class GANBackend:
    kind = "gan"
    sample_modules = ("G_ema",)

    def __init__(self, cfg: SynthConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        width, z_dim = int(cfg.model.get("width", 32)), int(cfg.model.get("z_dim", 128))
        self.G = Generator(cfg.size, width, z_dim).to(device)
        self.D = Discriminator(cfg.size, width).to(device)
        self.G_ema = make_ema(self.G) if cfg.ema_decay > 0 else self.G
        betas = (0.0, 0.9)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=betas)
        self.modules: dict[str, nn.Module] = {"G": self.G, "D": self.D}
        if self.G_ema is not self.G:
            self.modules["G_ema"] = self.G_ema
        else:
            self.sample_modules = ("G",)
        self.optimizers = {"G": self.opt_g, "D": self.opt_d}
        self.step = 0

    def params(self) -> int:
        return sum(p.numel() for p in self.G.parameters())

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One D step (hinge) then one G step, on real images x in [-1, 1] with classes y."""
        self.G.train(), self.D.train()
        b = len(x)
        z = torch.randn(b, self.G.z_dim, device=x.device)
        with torch.no_grad():
            fake = self.G(z, y)
        loss_d = F.relu(1 - self.D(x, y)).mean() + F.relu(1 + self.D(fake, y)).mean()
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        z = torch.randn(b, self.G.z_dim, device=x.device)
        loss_g = -self.D(self.G(z, y), y).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        if self.G_ema is not self.G:
            update_ema(self.G_ema, self.G, self.cfg.ema_decay, self.step)
        self.step += 1
        return {"loss": float(loss_d.detach() + loss_g.detach()), "loss_d": float(loss_d.detach()),
                "loss_g": float(loss_g.detach())}

    @torch.no_grad()
    def sample(self, y: torch.Tensor, generator: torch.Generator, progress: bool = False, **_) -> torch.Tensor:
        """Images in [-1, 1], [B, 3, S, S]; eval-mode BatchNorm so a sample does not depend on its batch."""
        net = self.G_ema.eval()
        z = torch.randn((len(y), net.z_dim), generator=generator).to(self.device)
        return net(z, y.to(self.device)).clamp(-1, 1)
