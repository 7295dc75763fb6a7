"""Training loop shared by every generator: batches from the real TRAINING split, resumable checkpoints, summary.

Re-running the same command resumes from the most advanced checkpoint (shipped or cached) with the exact batch
order and noise it would have had without the interruption (numpy and torch RNG states are checkpointed), so an
interrupted run and an uninterrupted one end identical. Ctrl-C saves a checkpoint before exiting.
"""
from __future__ import annotations

import json
import math
import time

import numpy as np
import torch
from tqdm import tqdm

from synth.checkpoint import find_checkpoint, load_checkpoint, portable, save_checkpoint, synth_dir
from synth.config import SynthConfig
from synth.data import TrainSplit, load_train_split, write_json
from synth.labels import N_CLASSES, class_index
from zoo.provenance import git_commit


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_backend(cfg: SynthConfig, device: torch.device | str = "cpu"):
    device = torch.device(device)
    if cfg.generator == "ddpm":
        from synth.ddpm import DDPMBackend

        return DDPMBackend(cfg, device)
    from synth.gan import GANBackend

    return GANBackend(cfg, device)


def _batch(images: np.ndarray, classes: np.ndarray, idx: np.ndarray, flip: np.ndarray,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float().div_(127.5).sub_(1)  # uint8 -> [-1, 1]
    if flip.any():
        f = torch.from_numpy(flip)
        x[f] = x[f].flip(-1)
    return x.to(device), torch.from_numpy(classes[idx]).long().to(device)


class GeneratorTrainer:
    def __init__(self, cfg: SynthConfig, ship: bool = False, progress: bool = True, data: TrainSplit | None = None):
        self.cfg, self.ship, self.progress = cfg, ship, progress
        self.device = resolve_device(cfg.device)
        self.data = data or load_train_split(cfg.data, cfg.size, progress=progress)
        if self.data.images.shape[1:] != (cfg.size, cfg.size, 3):
            raise ValueError(f"training images are {self.data.images.shape[1:]}, expected {cfg.size} px")
        self.classes = class_index(self.data.age, self.data.gender.astype(int))
        assert self.classes.min() >= 0 and self.classes.max() < N_CLASSES
        torch.manual_seed(cfg.seed)
        self.backend = make_backend(cfg, self.device)
        self.rng = np.random.default_rng(cfg.seed)
        self.step, self.history, self.step_times = 0, [], []
        self.resumed_from: int | None = None

    # ---- persistence ---------------------------------------------------------------------------------------
    def meta(self) -> dict:
        cfg = self.cfg
        return {"id": cfg.name, "generator": cfg.generator, "step": self.step, "config": cfg.to_dict(),
                "identity": cfg.identity_hash(), "params": self.backend.params(),
                "data": {"dataset": cfg.data, "split": "train", "manifest_hash": self.data.manifest_hash,
                         "train_hash": self.data.train_hash, "n_train": int(len(self.data.images))},
                "s_per_step": float(np.median(self.step_times)) if self.step_times else None,
                "device": str(self.device), "shipped": self.ship, "commit": git_commit(),
                "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "history": self.history}

    def save(self) -> None:
        state = {"step": self.step, "optim": {k: o.state_dict() for k, o in self.backend.optimizers.items()},
                 "torch_rng": torch.get_rng_state(), "np_rng": json.dumps(self.rng.bit_generator.state),
                 "history": json.dumps(self.history), "step_times": json.dumps(self.step_times[-200:])}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        save_checkpoint(self.cfg.name, self.ship, self.backend.modules, state, self.meta())

    def resume(self) -> bool:
        path = find_checkpoint(self.cfg.name)
        if path is None:
            return False
        meta = json.loads((path / "generator.json").read_text())
        if meta["identity"] != self.cfg.identity_hash():
            old = SynthConfig.from_dict(meta["config"]).identity()
            diff = {k: (old.get(k), v) for k, v in self.cfg.identity().items() if old.get(k) != v}
            raise ValueError(f"checkpoint {path} of {self.cfg.name!r} was trained with another config "
                             f"(checkpoint vs now: {diff}); pass another --id or delete that checkpoint")
        if meta["data"]["train_hash"] != self.data.train_hash:
            raise ValueError(f"checkpoint {path} was trained on other data (train split hash "
                             f"{meta['data']['train_hash']} != {self.data.train_hash}); pass another --id")
        state, _ = load_checkpoint(path, self.backend.modules, self.device)
        for k, o in self.backend.optimizers.items():
            o.load_state_dict(state["optim"][k])
        self.step = self.backend.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.rng.bit_generator.state = json.loads(state["np_rng"])
        self.history = json.loads(state["history"])
        self.step_times = json.loads(state.get("step_times", "[]"))
        self.resumed_from = self.step
        return True

    def write_summary(self) -> dict:
        """The small, committed record of a generator (no weights): `artifacts/synth/<id>/generator.json`."""
        ckpt = find_checkpoint(self.cfg.name)
        summary = {**self.meta(), "checkpoint": portable(ckpt) if ckpt else None}
        write_json(synth_dir(self.cfg.name, shipped=True) / "generator.json", summary)
        return summary

    # ---- loop ----------------------------------------------------------------------------------------------
    def _set_lr(self) -> None:
        f = min(1.0, (self.step + 1) / self.cfg.warmup_steps) if self.cfg.warmup_steps else 1.0
        for o in self.backend.optimizers.values():
            for g in o.param_groups:
                g["lr"] = self.cfg.lr * f

    def run(self) -> dict:
        cfg = self.cfg
        if self.resume() and self.progress:
            print(f"{cfg.name}: resuming at step {self.step}/{cfg.steps}")
        n, bs = len(self.data.images), min(cfg.batch_size, len(self.data.images))
        saved = self.step
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.name}", disable=not self.progress,
                   unit="step")
        window: list[dict] = []
        try:
            while self.step < cfg.steps:
                idx = self.rng.integers(0, n, bs)  # with replacement: the RNG state alone defines the stream
                flip = (self.rng.random(bs) < 0.5) if cfg.flip else np.zeros(bs, bool)
                x, y = _batch(self.data.images, self.classes, idx, flip, self.device)
                self._set_lr()
                t0 = time.perf_counter()
                stats = self.backend.train_step(x, y)
                self.step_times.append(time.perf_counter() - t0)
                if not all(math.isfinite(v) for v in stats.values()):
                    raise FloatingPointError(f"{cfg.name}: loss is not finite at step {self.step}: {stats}")
                self.step += 1
                window.append(stats)
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    row = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                    self.history.append({"step": self.step, **row})
                    bar.set_postfix(loss=f"{row['loss']:.4f}", s_step=f"{np.median(self.step_times[-50:]):.2f}")
                    window = []
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                    self.save()
                    saved = self.step
        except KeyboardInterrupt:
            if self.step > saved:
                self.save()
                print(f"\n{cfg.name}: interrupted; checkpoint saved at step {self.step}")
            raise
        finally:
            bar.close()
        return self.write_summary()


def train_generator(cfg: SynthConfig, ship: bool = False, progress: bool = True,
                    data: TrainSplit | None = None) -> dict:
    """Train (or resume, or just summarise when already at `cfg.steps`) one generator."""
    return GeneratorTrainer(cfg, ship=ship, progress=progress, data=data).run()


def load_generator(gen_id: str, device: str = "auto"):
    """(backend with the sampling weights loaded, checkpoint meta) for a trained generator id."""
    path = find_checkpoint(gen_id)
    if path is None:
        raise FileNotFoundError(f"no checkpoint for generator {gen_id!r} under cache/synth/{gen_id}/checkpoint or "
                                f"artifacts/synth/{gen_id}/checkpoint; train it with `python -m synth train`")
    meta = json.loads((path / "generator.json").read_text())
    cfg = SynthConfig.from_dict(meta["config"])
    dev = resolve_device(device)
    backend = make_backend(cfg, dev)
    load_checkpoint(path, backend.modules, dev, only=backend.sample_modules)
    meta["checkpoint"] = str(path)
    return backend, meta
