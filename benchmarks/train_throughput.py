"""Training throughput on CPU, in one process, interleaved so machine noise hits every variant alike:

  raw        forward+backward+step of the model on one fixed batch (no data loading, no augmentation)
  reference  the training loop as it was before device support (issue 22): a copy of that CPU code path, with the
             trainer's own loss (`Trainer._loss`, on CPU the plain forward and loss that loop ran)
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
        raws, devs = [], []
        for i in range(args.rounds):
            pair = [(raws, raw_rate), (devs, device_rate)]
            for out, fn in pair if i % 2 == 0 else pair[::-1]:
                out.append(fn(trainer, args.steps))
        raw, dev = (float(np.median(v)) for v in (raws, devs))
        per_round = float(np.median(np.array(devs) / np.array(raws)))
        rows.append((name, raw, dev, dev / raw, per_round))
    head = f"model @{args.size}px, batch {args.batch}, {torch.get_num_threads()} thread(s)"
    print(f"\n{head:44s} {'raw img/s':>10s} {'device':>10s} {'dev/raw':>8s} {'(rounds)':>9s}")
    for name, raw, dev, ratio, per_round in rows:
        print(f"{name:44s} {raw:10.1f} {dev:10.1f} {ratio:8.3f} {per_round:9.3f}")
    print("\ndev/raw: median training-loop img/s over median fixed-batch img/s; (rounds): median of the "
          "per-round ratios")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
