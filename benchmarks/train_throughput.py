"""Training throughput on CPU, in one process, interleaved so machine noise hits every variant alike:

  raw        forward+backward+step of the model on one fixed batch (no data loading, no augmentation)
  reference  the training loop as it was before device support (issue 22): a copy of that CPU code path
  device     `Trainer.train_epoch` as it is now (device-aware: autocast, pinned batches, DDP hooks; all off on CPU)

Goals: device / reference within 5 % (the device work costs nothing on CPU); loop / raw >= 0.9 (compute-bound).

    python benchmarks/train_throughput.py [--models resnet18,mobilenetv3_small_100] [--size 64] [--steps 25]
"""
from __future__ import annotations

import argparse
import time
from contextlib import closing

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from zoo.config import TrainConfig
from zoo.train import Trainer


def raw_rate(trainer: Trainer, steps: int) -> float:
    """The same model, loss and optimiser on one fixed batch: no data loading, no augmentation."""
    with closing(trainer.feeder.epoch()) as batches:  # one batch; closing stops the feeder's worker thread
        b = next(batches)
    trainer.model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = trainer._loss(b)
        trainer.opt.zero_grad(set_to_none=True)
        loss.backward()
        trainer.opt.step()
    return steps * len(b["x"]) / (time.perf_counter() - t0)


def reference_loss(trainer: Trainer, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """`Trainer._loss` before device support (commit 84ad9db)."""
    cfg, m = trainer.cfg, trainer.model
    out = m(b["x"].contiguous(memory_format=torch.channels_last) if cfg.channels_last else b["x"])
    loss = torch.zeros(())
    if m.age is not None:
        known = torch.isfinite(b["age"])
        if known.any():
            loss = loss + cfg.loss_weights.get("age", 1.0) * m.age.loss(out["age"][known], b["age"][known],
                                                                         b["w"][known])
    if m.gender is not None:
        known = ~torch.isnan(b["gender"])
        if known.any():
            loss = loss + cfg.loss_weights.get("gender", 1.0) * trainer.gender_loss(
                out["gender"][known], b["gender"][known], b["gw"][known])
    if m.race is not None:
        known = b["race"] >= 0
        if known.any():
            loss = loss + cfg.loss_weights.get("race", 0.5) * nn.functional.cross_entropy(
                out["race"][known], b["race"][known])
    return loss


def reference_rate(trainer: Trainer, steps: int) -> float:
    """`Trainer.train_epoch` before device support (commit 84ad9db), on the same feeder."""
    trainer.total_steps = trainer.step + steps
    self = trainer
    self.model.train()
    for bn in self.frozen_bn:
        bn.eval()
    t0 = time.perf_counter()
    batches = self.feeder.epoch()
    bar = tqdm(batches, total=self.feeder.steps, disable=True, leave=False, unit="batch")
    losses, seen = [], 0
    with closing(batches), bar:
        for b in bar:
            if self.step >= self.total_steps:
                break
            self._set_lr()
            loss = reference_loss(self, b)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.step += 1
            seen += len(b["x"])
            losses.append(loss.item())
            if len(losses) % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return seen / (time.perf_counter() - t0)


def device_rate(trainer: Trainer, steps: int) -> float:
    trainer.total_steps = trainer.step + steps
    return trainer.train_epoch()["train_img_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,mobilenetv3_small_100")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds (the order alternates every round)")
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        cfg = TrainConfig(backbone=name, img_size=args.size, batch_size=args.batch, augment="light", device="cpu")
        trainer = Trainer(cfg, progress=False)
        raw_rate(trainer, 3)  # warm-up (allocator, kernels)
        device_rate(trainer, 3)
        raws, refs, devs = [], [], []
        for i in range(args.rounds):
            raws.append(raw_rate(trainer, args.steps))
            pair = [(refs, reference_rate), (devs, device_rate)]
            for out, fn in pair if i % 2 == 0 else pair[::-1]:
                out.append(fn(trainer, args.steps))
        raw, ref, dev = (float(np.median(v)) for v in (raws, refs, devs))
        per_round = float(np.median(np.array(devs) / np.array(refs)))
        rows.append((name, raw, ref, dev, dev / ref, per_round, dev / raw))
    head = f"model @{args.size}px, batch {args.batch}, {torch.get_num_threads()} thread(s)"
    print(f"\n{head:44s} {'raw img/s':>10s} {'reference':>10s} {'device':>10s} {'dev/ref':>8s} "
          f"{'(rounds)':>9s} {'dev/raw':>8s}")
    for name, raw, ref, dev, ratio, per_round, loop in rows:
        print(f"{name:44s} {raw:10.1f} {ref:10.1f} {dev:10.1f} {ratio:8.3f} {per_round:9.3f} {loop:8.2f}")
    print("\ndev/ref: median device-loop img/s over median reference-loop img/s; (rounds): median of the "
          "per-round ratios")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
