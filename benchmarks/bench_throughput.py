"""Is `python -m bench run` compute-bound? Its img/s vs the raw forward of the same model and batch; and how fast the
predictions store ingests rows.

For each model (random init, registered in a temp registry with a generated dataset): the bench's prediction loop
(cached images → batch → forward → decode → Parquet part → merge into DuckDB) against `model(x)` alone on one fixed
batch, alternating rounds so machine noise hits both alike (goal: ratio ≥ 0.9). A bench run also pays a fixed cost
per run and model (the anti-join that finds missing rows, a fresh model's first forward, the final merge: ~0.4 s
measured on mobilenetv3_small at one thread), which a short run of one small model feels
and a real run (every model × a dataset) does not; so it is timed at several run sizes (--images). Then the DuckDB
insert rate: rows published as Parquet parts and merged (anti-join on the primary key) into an empty DB and into one
already holding rows (goal ≥ 500k rows/s).

    python benchmarks/bench_throughput.py [--models resnet18,mobilenetv3_small_100] [--size 64] [--batch 64]
                                          [--images 4096,16384] [--rounds 3] [--rows 1000000] [--device auto]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_dataset(root: Path, n: int, size: int = 64) -> None:
    import cv2

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        age, gender, race = int(rng.integers(1, 90)), int(rng.integers(0, 2)), int(rng.integers(0, 5))
        img = np.clip(rng.normal(120 + age, 30, (size, size, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / f"{age}_{gender}_{race}_2017010{i:010d}.jpg.chip.jpg"), img)


def register(backbone: str, size: int) -> str:
    """A random-init model written into the (temp) registry like a trained run."""
    from safetensors.torch import save_file

    from zoo.config import TrainConfig
    from zoo.model import AgeGenderModel
    from zoo.paths import runs_dir

    cfg = TrainConfig(name=f"bench-{backbone}", backbone=backbone, img_size=size)
    rid = f"{backbone}-random-{size}"
    d = runs_dir() / rid
    d.mkdir(parents=True, exist_ok=True)
    model = AgeGenderModel(cfg, load_pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "best.safetensors"))
    cfg_d = asdict(cfg)
    cfg_d.pop("name")
    (d / "run.json").write_text(json.dumps({"id": rid, "kind": "single", "name": cfg.name, "config": cfg_d,
                                            "data": {"dataset": "utkface"}, "params": 0, "flops": 0}))
    return rid


def make_template(db: Path, size: int) -> Path:
    """A DB that already has the `images` rows (labels only: attribute measurement is not what we time) and the
    decoded-image cache at `size`, so bench rounds time only the prediction loop."""
    import pandas as pd

    from bench import store
    from bench.attributes import ATTRIBUTES
    from zoo.data.cache import load_images
    from zoo.data.manifest import load_manifest

    m = load_manifest("utkface")
    load_images(m, size, progress=False)
    f = m.frame
    rows = pd.DataFrame({"dataset": "utkface", "image_id": f["image_id"], "split": f["split"], "path": f["path"],
                         "age": f["age"], "age_min": f["age_min"], "age_max": f["age_max"], "gender": f["gender"],
                         "race": f["race"], "extras": f["extras"], **{a: np.nan for a in ATTRIBUTES},
                         "is_synthetic": False})
    rows["resolution"] = pd.array([None] * len(rows), dtype="Int32")
    store.write_part(db, "images", rows)
    store.merge(db)
    return db


def raw_rate(model_id: str, batch: int, size: int, steps: int, device) -> float:
    import torch

    from zoo.device import on_device
    from zoo.registry import load

    p = on_device(load(model_id), device)
    net = p.inner.model
    x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
        net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t)


def bench_rate(template: Path, work: Path, model_id: str, batch: int, device: str, limit: int | None = None) -> float:
    """One bench run on a copy of a DB that already has the images table (attributes are not what we time)."""
    from bench.run import RunOptions, run

    db = work / "round.duckdb"
    for p in (db, Path(f"{db}.wal")):
        p.unlink(missing_ok=True)
    shutil.rmtree(f"{db}.parts", ignore_errors=True)
    shutil.copy(template, db)
    s = run(RunOptions(models=model_id, datasets=["utkface"], perturb="none", db=db, batch_size=batch,
                       device=device, progress=False, limit=limit))
    return s["img_s"]


def insert_rate(work: Path, rows: int, txn_rows: int, parts: int = 10) -> list[tuple[str, float, float, float]]:
    """(label, part-write rows/s, merge rows/s, mean s per write transaction) into an empty DB, then again into the
    filled DB; merged in transactions of ≤ `txn_rows` rows (the store's default keeps each well under a second)."""
    import pyarrow as pa

    from bench import store

    db = work / "insert.duckdb"
    rng = np.random.default_rng(0)
    n_img = 21_000
    out = []
    for label, offset in (("empty DB", 0), (f"DB with {rows:,} rows", rows)):
        per = rows // parts
        tables = []
        for k in range(parts):
            i = np.arange(offset + k * per, offset + (k + 1) * per)
            f = rng.random(per)
            tables.append(pa.table({
                "model_id": pa.array([f"model-{j}" for j in (i // (n_img * 16)) % 1000]),
                "dataset": pa.array(["utkface"] * per), "image_id": pa.array([f"{j % n_img:016x}" for j in i]),
                "perturbation": pa.array([f"p{j}" for j in (i // n_img) % 16]),
                "severity": pa.array(((i // n_img) % 3).astype(np.int32)), "age_pred": f * 80,
                "sigma_aleatoric": f * 5, "sigma_epistemic": pa.nulls(per, pa.float64()),
                "sigma_tta": pa.nulls(per, pa.float64()), "gender_prob": f, "latency_ms": f,
                "bench_run": pa.array(["r"] * per)}))
        t = time.perf_counter()
        for tb in tables:
            store.write_part(db, "predictions", tb, tag="bench")
        w = rows / (time.perf_counter() - t)
        t = time.perf_counter()
        n = store.merge(db, max_rows=txn_rows)["predictions"]
        dt = time.perf_counter() - t
        assert n == rows, (n, rows)
        out.append((label, w, n / dt, dt / -(-rows // max(txn_rows, rows // parts))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,mobilenetv3_small_100", help="comma-separated; empty: insert only")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--images", default="4096,16384", help="comma-separated run sizes (images per bench round)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--txn-rows", type=int, default=None, help="rows per merge transaction (default: the store's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch

    from zoo.device import device_label, pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    os.environ["ZOO_ARTIFACTS"], os.environ["ZOO_CACHE"] = str(work / "artifacts"), str(work / "cache")
    try:
        from zoo.data.manifest import scan

        sizes = [int(x) for x in args.images.split(",") if x]
        if args.models:
            make_dataset(work / "utk", max(sizes))
            scan("utkface", work / "utk", progress=False)
        ids = [register(b, args.size) for b in args.models.split(",") if b]
        template = make_template(work / "template.duckdb", args.size) if ids else None
        rows = []
        for mid in ids:
            raw_rate(mid, args.batch, args.size, 2, device)  # warm-up
            for n in sizes:
                raws, benches = [], []
                for _ in range(args.rounds):
                    raws.append(raw_rate(mid, args.batch, args.size, max(1, n // args.batch), device))
                    benches.append(bench_rate(template, work, mid, args.batch, args.device, limit=n))
                r, b = float(np.median(raws)), float(np.median(benches))
                rows.append((mid.split("-random")[0], n, r, b, b / r))
        print(f"\ndevice: {device_label(device)}; torch threads: {torch.get_num_threads()}; "
              f"median of {args.rounds} alternating rounds")
        print(f"{'model @' + str(args.size) + 'px, batch ' + str(args.batch):32s} {'images/run':>10s} "
              f"{'raw img/s':>10s} {'bench img/s':>12s} {'ratio':>7s}")
        for name, n, r, b, ratio in rows:
            print(f"{name:32s} {n:10d} {r:10.1f} {b:12.1f} {ratio:7.2f}")
        print(f"\n{'DuckDB insert (' + format(args.rows, ',') + ' rows)':36s} {'parts rows/s':>12s} "
              f"{'merge rows/s':>13s} {'s/transaction':>14s}")
        import inspect

        from bench.store import merge

        txn = args.txn_rows or inspect.signature(merge).parameters["max_rows"].default
        print(f"(merge transactions of up to {txn:,} rows)")
        for label, w, m, per in insert_rate(work, args.rows, txn):
            print(f"{label:36s} {w:12,.0f} {m:13,.0f} {per:14.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
