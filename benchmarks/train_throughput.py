"""Is the training loop compute-bound? Full loop img/s vs the raw forward+backward+step of the same model and batch.

Measured in one run, alternating raw and loop rounds so machine noise hits both alike. Goal: ratio >= 0.9.

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


def loop_rate(trainer: Trainer, steps: int) -> float:
    trainer.total_steps = trainer.step + steps
    return trainer.train_epoch()["train_img_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,mobilenetv3_small_100")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        cfg = TrainConfig(backbone=name, img_size=args.size, batch_size=args.batch, augment="light")
        trainer = Trainer(cfg, progress=False)
        raw_rate(trainer, 3)  # warm-up (allocator, kernels)
        raws, loops = [], []
        for _ in range(args.rounds):
            raws.append(raw_rate(trainer, args.steps))
            loops.append(loop_rate(trainer, args.steps))
        r, l = float(np.median(raws)), float(np.median(loops))
        rows.append((name, r, l, l / r))
    print(f"\n{'model @' + str(args.size) + 'px, batch ' + str(args.batch):36s} {'raw img/s':>10s} "
          f"{'loop img/s':>11s} {'ratio':>7s}")
    for name, r, l, ratio in rows:
        print(f"{name:36s} {r:10.1f} {l:11.1f} {ratio:7.2f}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
