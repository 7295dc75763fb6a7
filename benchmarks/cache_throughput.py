"""Does the decoded-image cache keep training compute-bound?

Measures, in one run: batches/s from the cache (with and without augmentation), JPEG decoding straight from disk
(what the cache avoids), and resnet18's training rate at the same size. Goal: cache >= 10x the training rate.

    python benchmarks/cache_throughput.py [--dataset utkface] [--size 64] [--batch 64]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import timm
import torch

from zoo.augment import augment_batch
from zoo.data.cache import decode_image, load_images, to_tensor
from zoo.data.manifest import load_manifest


def rate(fn, n_images: int, min_seconds: float = 3.0) -> float:
    fn()  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        fn()
        done += n_images
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="utkface")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    m = load_manifest(args.dataset)
    images = load_images(m, args.size)
    rng = np.random.default_rng(0)
    paths = m.abspaths()

    def cache_batch(augment: str) -> None:
        ix = np.sort(rng.choice(len(images), args.batch, replace=False))
        augment_batch(to_tensor(images[ix]), augment)

    def jpeg_batch() -> None:
        for i in rng.choice(len(paths), args.batch, replace=False):
            decode_image(paths[i], args.size)

    model = timm.create_model("resnet18", num_classes=1).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.rand(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    y = torch.rand(args.batch, 1)

    def train_step() -> None:
        loss = torch.nn.functional.l1_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    rows = [("cache, no augmentation", rate(lambda: cache_batch("none"), args.batch)),
            ("cache + light augmentation", rate(lambda: cache_batch("light"), args.batch)),
            ("cache + strong augmentation", rate(lambda: cache_batch("strong"), args.batch)),
            ("JPEG decode from disk (no cache)", rate(jpeg_batch, args.batch)),
            (f"resnet18 training step @{args.size}px", rate(train_step, args.batch, min_seconds=10))]
    train_rate = rows[-1][1]
    print(f"\n{'source':40s} {'img/s':>10s} {'x resnet18 train':>18s}")
    for name, r in rows:
        print(f"{name:40s} {r:10.0f} {r / train_rate:18.1f}")


if __name__ == "__main__":
    main()
