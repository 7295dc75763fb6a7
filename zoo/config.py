"""Run configuration: a plain dataclass read from YAML. A run's identity is the hash of its config plus the hash of
the data manifest it trained on, so the same config on the same data is the same run (and is skipped when done)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml


@dataclass
class TrainConfig:
    name: str = ""  # a human label; not part of the identity
    dataset: str = "utkface"  # the primary dataset: val and test splits, model selection
    # More training data: [{name, weight (default 1), framing (default the dataset's own)}]. Each batch draws from
    # the datasets in proportion to their weights; a task a dataset has no label for is masked out of the loss.
    # Naming the primary here changes its weight or framing; a dataset not named trains on its own only.
    datasets: list | None = None
    source: str = "real"  # real | synth:<id> | mixed:<fraction>:<id>  (synthetic training data)
    backbone: str = "resnet18"
    pretrained: str | None = None  # None | "imagenet" (packaged weights) | path to a local checkpoint
    backbone_kwargs: dict = field(default_factory=dict)
    formulation: str = "dldl"
    formulation_kwargs: dict = field(default_factory=dict)
    age_max: int = 100
    tasks: list = field(default_factory=lambda: ["age", "gender"])  # any of age, gender, race
    loss_weights: dict = field(default_factory=lambda: {"age": 1.0, "gender": 1.0, "race": 0.5})
    gender_loss: str = "bce"
    gender_loss_kwargs: dict = field(default_factory=dict)
    dropout: float = 0.2  # before the heads; > 0 enables MC-Dropout at inference
    img_size: int = 64
    augment: str = "light"  # none | light | strong
    train_fraction: float = 1.0
    age_balance: str = "none"  # none | inv_freq | sqrt_inv | lds | balanced_sampler
    gender_balance: str = "none"  # none | undersample | reweight
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 2e-3
    weight_decay: float = 0.05
    backbone_lr_mult: float = 1.0  # < 1 fine-tunes a pretrained backbone more gently than the heads
    freeze: str = "none"  # none | linear_probe | stages:K (first K stages frozen, their BatchNorm in eval mode)
    schedule: str = "cosine"  # cosine | plateau
    warmup_epochs: float = 1.0
    epochs: int = 20
    max_steps: int | None = None  # equal step budget for sweeps; overrides epochs
    batch_size: int = 64
    patience: int = 6  # early stopping on val MAE (epochs without improvement)
    ema_decay: float = 0.0  # > 0 evaluates and ships an exponential moving average of the weights (0 = off)
    seed: int = 0
    channels_last: bool = True

    def identity(self) -> dict:
        d = asdict(self)
        d.pop("name")
        for key, off in LATER_FIELDS.items():
            if d[key] == off:
                d.pop(key)
        return d

    def run_id(self, manifest_hash: str) -> str:
        blob = json.dumps({"config": self.identity(), "data": manifest_hash}, sort_keys=True).encode()
        return f"{self.backbone}-{self.formulation}-{hashlib.sha1(blob).hexdigest()[:8]}"

    def dataset_mix(self) -> list[dict]:
        """[{name, weight, framing}] with the primary dataset first (framing None = the dataset's own)."""
        from zoo.faces import FRAMINGS

        mix = [{"name": self.dataset, "weight": 1.0, "framing": None}]
        for e in self.datasets or []:
            if not isinstance(e, dict) or not isinstance(e.get("name"), str):
                raise ValueError(f"datasets entries are {{name, weight, framing}} mappings, got {e!r}")
            extra = set(e) - {"name", "weight", "framing"}
            if extra:
                raise ValueError(f"unknown keys {sorted(extra)} in datasets entry {e['name']!r}")
            w = float(e.get("weight", 1.0))
            if not w > 0:
                raise ValueError(f"dataset weight must be > 0, got {w} for {e['name']!r}")
            if e.get("framing") not in (None, *FRAMINGS):
                raise ValueError(f"framing must be one of {FRAMINGS}, got {e.get('framing')!r}")
            entry = {"name": e["name"], "weight": w, "framing": e.get("framing")}
            if e["name"] == self.dataset:
                mix[0] = entry
            elif any(m["name"] == e["name"] for m in mix):
                raise ValueError(f"dataset {e['name']!r} is listed twice in datasets")
            else:
                mix.append(entry)
        return mix

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}; known: {sorted(known)}")
        cfg = cls(**d)
        cfg.dataset_mix()  # validates the mix before any data work
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})

    def to_yaml(self) -> str:
        return yaml.safe_dump(asdict(self), sort_keys=False)


# Fields added after runs were registered, with the value that reproduces the behaviour from before they existed.
# At that value they stay out of the identity, so adding a field never changes a registered run's id (and never
# makes `python -m zoo train` retrain a finished run). A new field goes here, not only into TrainConfig.
LATER_FIELDS = {"ema_decay": 0.0, "datasets": None}


def expand_grid(spec: dict) -> list[TrainConfig]:
    """A sweep file: `base:` (shared keys) and `runs:` (a list of overrides, each one run), or `grid:` (a dict of
    key -> list of values, every combination)."""
    import itertools

    base = spec.get("base", {})
    configs = [TrainConfig.from_dict({**base, **over}) for over in spec.get("runs", [])]
    grid = spec.get("grid", {})
    if grid:
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            configs.append(TrainConfig.from_dict({**base, **dict(zip(keys, combo))}))
    return configs
