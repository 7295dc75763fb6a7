"""Generator configuration: a dataclass read from YAML (`zoo/configs/synth_*.yaml`) plus CLI overrides.

A generator's id is its `name` (default `<generator>-<data>-<size>px`), so `source: synth:<id>` in a zoo config is
readable. Resuming checks that the checkpoint was trained with the same identity (everything that changes the
trained weights except the step budget), so `--steps` can be raised to train longer.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

GENERATORS = ("ddpm", "gan")

# CPU defaults, measured on the 2-core dev machine (see README in synth/__init__.py):
#   ddpm: 2.6M-param UNet2DModel, 32 px, batch 32, ~0.55 s/step -> 5000 steps ~ 46 min
#   gan : conditional DCGAN, 64 px, width 32, batch 32, ~0.3 s/step -> 8000 steps ~ 40 min
GENERATOR_DEFAULTS: dict[str, dict] = {
    "ddpm": dict(size=32, steps=5000, batch_size=32, lr=4e-4, warmup_steps=200, ema_decay=0.999,
                 model={"block_out_channels": [32, 64, 128], "layers_per_block": 1,
                        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
                        "norm_num_groups": 8, "attention_head_dim": 32}),
    "gan": dict(size=64, steps=8000, batch_size=32, lr=2e-4, warmup_steps=0, ema_decay=0.999,
                model={"width": 32, "z_dim": 128}),
}
# Keys that do not change what the weights learn: may differ between a checkpoint and the resuming command.
NON_IDENTITY = ("name", "steps", "ckpt_every", "log_every", "sample_steps", "guidance", "device")


@dataclass
class SynthConfig:
    generator: str = "ddpm"  # ddpm | gan
    name: str = ""  # the generator id; default <generator>-<data>-<size>px
    data: str = "utkface"  # real dataset (its TRAIN split only) the generator learns from
    size: int = 32  # image side in px (a power of two >= 16)
    steps: int = 5000  # optimiser steps in total (raise it and re-run to train longer)
    batch_size: int = 32
    lr: float = 4e-4
    warmup_steps: int = 200
    grad_clip: float = 1.0  # ddpm only (the GAN relies on spectral norm instead)
    ema_decay: float = 0.999  # EMA of the generator's weights, used for sampling; 0 disables
    flip: bool = True  # random horizontal flips: faces are near-symmetric, doubles the effective data
    seed: int = 0
    ckpt_every: int = 250  # steps between resumable checkpoints
    log_every: int = 25  # steps between loss-history points
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    model: dict = field(default_factory=dict)  # architecture kwargs (UNet2DModel for ddpm, width/z_dim for gan)
    # ddpm only
    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # cosine schedule: better than linear at low resolution
    cond_drop: float = 0.1  # label dropout at training time, enables classifier-free guidance at sampling
    sample_steps: int = 50  # DDIM steps at sampling time
    guidance: float = 2.0  # classifier-free guidance scale (1 = plain conditional; > 1 costs 2x per step)

    def __post_init__(self) -> None:
        if self.generator not in GENERATORS:
            raise ValueError(f"generator must be one of {GENERATORS}, got {self.generator!r}")
        if self.size < 16 or self.size & (self.size - 1):
            raise ValueError(f"size must be a power of two >= 16, got {self.size}")
        if not self.name:
            self.name = f"{self.generator}-{self.data}-{self.size}px"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ValueError(f"generator id {self.name!r} may only use letters, digits, '.', '_' and '-'")

    @classmethod
    def from_dict(cls, d: dict) -> "SynthConfig":
        from zoo.config import coerce, type_problem

        if not isinstance(d, dict):
            raise ValueError(f"a synth config is a mapping of SynthConfig fields, got {type(d).__name__} {d!r:.60}")
        known = {f.name: f for f in fields(cls)}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown synth config keys: {sorted(map(str, unknown))}; known: {sorted(known)}")
        d = {k: coerce(known[k].type, v) for k, v in d.items()}
        # types first, so __post_init__'s range checks never meet a string (all problems on one line)
        problems = [p for k, v in d.items() if (p := type_problem(k, known[k].type, v))]
        if problems:
            raise ValueError("invalid synth config: " + "; ".join(problems))
        gen = d.get("generator", "ddpm")
        if gen not in GENERATOR_DEFAULTS:
            raise ValueError(f"generator must be one of {GENERATORS}, got {gen!r}")
        defaults = GENERATOR_DEFAULTS[gen]
        merged = {**defaults, **d}
        merged["model"] = {**defaults["model"], **d.get("model", {})}
        return cls(**merged)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "SynthConfig":
        from zoo.config import read_yaml

        d = read_yaml(path)
        if d is not None and not isinstance(d, dict):
            raise ValueError(f"invalid synth config {path}: a mapping of SynthConfig fields, got {type(d).__name__}")
        return cls.from_dict({**(d or {}), **{k: v for k, v in overrides.items() if v is not None}})

    def to_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in NON_IDENTITY}

    def identity_hash(self) -> str:
        return hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:10]
