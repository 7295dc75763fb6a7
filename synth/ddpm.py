"""Class-conditional DDPM: a `diffusers.UNet2DModel` with a class embedding (18 age-bin x gender classes + 1 null
class for classifier-free guidance), trained with `DDPMScheduler` noise, sampled with `DDIMScheduler`.

Trained from scratch in pixel space on the real training split (see `synth.train`). Label dropout (`cond_drop`)
teaches the null class, so sampling can push samples towards their class with `guidance` > 1 — this matters here:
the point of the generator is that the age bin of a sample is right.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import nn
from tqdm import tqdm

from synth.config import SynthConfig
from synth.ema import make_ema, update_ema
from synth.labels import N_CLASSES

NULL_CLASS = N_CLASSES  # the "no label" class used for guidance


def build_unet(cfg: SynthConfig) -> UNet2DModel:
    kw = dict(cfg.model)
    down = tuple(kw.pop("down_block_types"))
    up = tuple(kw.pop("up_block_types", [t.replace("Down", "Up") for t in reversed(down)]))
    kw["block_out_channels"] = tuple(kw["block_out_channels"])
    return UNet2DModel(sample_size=cfg.size, in_channels=3, out_channels=3, down_block_types=down,
                       up_block_types=up, num_class_embeds=N_CLASSES + 1, **kw)


class DDPMBackend:
    kind = "ddpm"
    sample_modules = ("ema",)  # sampling needs only the EMA weights

    def __init__(self, cfg: SynthConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.unet = build_unet(cfg).to(device)
        self.ema = make_ema(self.unet) if cfg.ema_decay > 0 else self.unet
        self.noise = DDPMScheduler(num_train_timesteps=cfg.train_timesteps, beta_schedule=cfg.beta_schedule,
                                   prediction_type="epsilon", clip_sample=True)
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.modules: dict[str, nn.Module] = {"unet": self.unet}
        if self.ema is not self.unet:
            self.modules["ema"] = self.ema
        else:
            self.sample_modules = ("unet",)
        self.optimizers = {"unet": self.opt}
        self.step = 0

    def params(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One denoising step on images x in [-1, 1] with classes y."""
        self.unet.train()
        b = x.shape[0]
        noise = torch.randn_like(x)
        t = torch.randint(0, self.cfg.train_timesteps, (b,), device=x.device)
        noisy = self.noise.add_noise(x, noise, t)
        drop = torch.rand(b, device=x.device) < self.cfg.cond_drop
        y = torch.where(drop, torch.full_like(y, NULL_CLASS), y)
        loss = F.mse_loss(self.unet(noisy, t, class_labels=y).sample, noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.unet.parameters(), self.cfg.grad_clip)
        self.opt.step()
        if self.ema is not self.unet:
            update_ema(self.ema, self.unet, self.cfg.ema_decay, self.step)
        self.step += 1
        return {"loss": float(loss.detach())}

    @torch.no_grad()
    def sample(self, y: torch.Tensor, generator: torch.Generator, steps: int | None = None,
               guidance: float | None = None, progress: bool = False) -> torch.Tensor:
        """DDIM (eta 0: deterministic given the initial noise) -> images in [-1, 1], [B, 3, S, S]."""
        steps = steps or self.cfg.sample_steps
        g = self.cfg.guidance if guidance is None else guidance
        net = self.ema.eval()
        sched = DDIMScheduler.from_config(self.noise.config)
        sched.set_timesteps(steps)
        # Noise drawn on CPU from a seeded generator: the same images on CPU and GPU for a given seed.
        x = torch.randn((len(y), 3, self.cfg.size, self.cfg.size), generator=generator).to(self.device)
        y = y.to(self.device)
        null = torch.full_like(y, NULL_CLASS)
        for t in tqdm(sched.timesteps, desc="ddim", disable=not progress, leave=False):
            if g == 1.0:
                eps = net(x, t, class_labels=y).sample
            else:  # classifier-free guidance: one batched pass for conditional and unconditional
                both = net(torch.cat([x, x]), t, class_labels=torch.cat([y, null])).sample
                cond, unc = both.chunk(2)
                eps = unc + g * (cond - unc)
            x = sched.step(eps, t, x, eta=0.0).prev_sample
        return x.clamp(-1, 1)
