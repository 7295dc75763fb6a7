"""Write a labelled synthetic set: `cache_dir()/synth/<name>/images/*.png` + `labels.csv` (path, age, gender,
split=train, generator, class) + `provenance.json`, scanned as dataset `synth_<name>` so that a zoo config can train
on `source: synth:<name>` or `mixed:<fraction>:<name>`.

Sampling is resumable too: the label plan is deterministic from the seed and every batch draws its noise from its
own seed, so an interrupted run re-generates only the missing batches and ends with the same images.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from synth.checkpoint import portable
from synth.data import scan_synthetic, train_labels, write_json, write_labels_csv
from synth.labels import AGE_MODES, class_name, sample_labels
from zoo.data.manifest import Manifest
from zoo.paths import artifacts_dir, cache_dir
from zoo.provenance import git_commit

BatchFn = Callable[[pd.DataFrame, torch.Generator], np.ndarray]  # plan rows, noise seed -> uint8 [B, S, S, 3]


def set_dir(name: str) -> Path:
    return cache_dir() / "synth" / name


def _batch_seed(seed: int, b: int) -> int:
    return int(np.random.SeedSequence([seed, b]).generate_state(1)[0])


def make_plan(n: int, ages: str, seed: int, generator: str, real: tuple[np.ndarray, np.ndarray] | None) -> pd.DataFrame:
    if ages not in AGE_MODES:
        raise ValueError(f"--ages must be one of {AGE_MODES}, got {ages!r}")
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    real_age, real_gender = real if real is not None else (None, None)
    age, gender, cls = sample_labels(n, ages, np.random.default_rng(seed), real_age, real_gender)
    return pd.DataFrame({"path": [f"images/{i:06d}.png" for i in range(n)], "age": age, "gender": gender,
                         "split": "train", "generator": generator, "class": [class_name(c) for c in cls],
                         "class_id": cls})


def write_set(name: str, plan: pd.DataFrame, batch_fn: BatchFn, provenance: dict, seed: int, batch_size: int,
              progress: bool = True) -> Manifest:
    """Generate every planned image that is not on disk yet, then write labels + provenance and scan."""
    root = set_dir(name)
    images_dir = root / "images"
    fingerprint = hashlib.sha1((plan.to_csv(index=False) + json.dumps(provenance.get("identity", {}), sort_keys=True,
                                                                       default=str)).encode()).hexdigest()[:16]
    plan_file = root / "plan.json"
    if plan_file.exists() and json.loads(plan_file.read_text()).get("fingerprint") != fingerprint:
        # Another generator/seed/n wrote this set before: its images do not match the new labels.
        shutil.rmtree(images_dir, ignore_errors=True)
        (root / "labels.csv").unlink(missing_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    write_json(plan_file, {"fingerprint": fingerprint, "n": len(plan)})
    n_batches = math.ceil(len(plan) / batch_size)
    t0, made = time.perf_counter(), 0
    bar = tqdm(total=len(plan), desc=f"sample {name}", disable=not progress, unit="img")
    for b in range(n_batches):
        rows = plan.iloc[b * batch_size:(b + 1) * batch_size]
        paths = [root / p for p in rows["path"]]
        if all(p.exists() for p in paths):
            bar.update(len(rows))
            continue
        imgs = batch_fn(rows, torch.Generator().manual_seed(_batch_seed(seed, b)))
        if imgs.dtype != np.uint8 or imgs.shape[0] != len(rows) or imgs.shape[-1] != 3:
            raise ValueError(f"generator returned {imgs.dtype} {imgs.shape}, expected uint8 [{len(rows)}, S, S, 3]")
        for p, im in zip(paths, imgs):
            tmp = p.with_name(p.stem + ".tmp.png")
            if not cv2.imwrite(str(tmp), cv2.cvtColor(im, cv2.COLOR_RGB2BGR)):
                raise OSError(f"cannot write {tmp}")
            tmp.replace(p)  # a kill never leaves a truncated PNG under a final name
        made += len(rows)
        bar.update(len(rows))
    bar.close()
    dt = time.perf_counter() - t0
    write_labels_csv(root, plan.drop(columns="class_id"))
    prov = {**provenance, "name": name, "dataset": f"synth_{name}", "n": len(plan), "seed": seed,
            "class_counts": plan["class"].value_counts().sort_index().to_dict(), "commit": git_commit(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "s_per_image": dt / made if made else None}
    write_json(root / "provenance.json", prov)
    m = scan_synthetic(name, root, progress=progress)
    prov["manifest_hash"] = m.hash
    write_json(root / "provenance.json", prov)
    write_json(artifacts_dir() / "synth" / name / "provenance.json", prov)  # small, committed, for the dashboard
    return m


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _file_sha1(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def sample_generator(gen_id: str, n: int, ages: str = "match", seed: int = 0, name: str | None = None,
                     batch_size: int = 64, steps: int | None = None, guidance: float | None = None,
                     device: str = "auto", progress: bool = True) -> Manifest:
    """Sample a trained DDPM/GAN (its EMA weights). Default set name: the generator id (`<id>-uniform` for
    uniform ages, so the two never overwrite each other)."""
    from synth.train import load_generator

    backend, meta = load_generator(gen_id, device)
    name = name or (gen_id if ages == "match" else f"{gen_id}-{ages}")
    dataset = meta["data"]["dataset"]
    plan = make_plan(n, ages, seed, gen_id, train_labels(dataset))
    cfg = meta["config"]
    eff_steps = steps or cfg.get("sample_steps")
    eff_guidance = cfg.get("guidance") if guidance is None else guidance

    def batch_fn(rows: pd.DataFrame, gen: torch.Generator) -> np.ndarray:
        y = torch.tensor(rows["class_id"].to_numpy(), dtype=torch.long)
        return _to_uint8(backend.sample(y, gen, steps=eff_steps, guidance=eff_guidance))

    ckpt = Path(meta["checkpoint"])
    sampling = {"ages": ages, "seed": seed}
    if meta["generator"] == "ddpm":
        sampling.update(sampler="ddim", steps=eff_steps, guidance=eff_guidance)
    prov = {"generator": {"id": gen_id, "kind": meta["generator"], "checkpoint": portable(ckpt), "step": meta["step"],
                          "weights_sha1": _file_sha1(ckpt / "weights.safetensors"), "config": cfg,
                          "trained_commit": meta.get("commit")},
            "real_data": meta["data"], "size": cfg["size"], "sampling": sampling}
    prov["identity"] = {"gen": prov["generator"]["weights_sha1"], **sampling}
    return write_set(name, plan, batch_fn, prov, seed, batch_size, progress)


def sample_pipeline(pipeline_dir: str | Path, n: int, ages: str = "match", seed: int = 0, name: str | None = None,
                    size: int = 128, data: str | None = "utkface", batch_size: int = 4, steps: int = 30,
                    guidance: float = 7.5, resolution: int | None = None, device: str = "auto",
                    progress: bool = True) -> Manifest:
    """Sample a local pretrained text-to-image pipeline, one prompt per planned (age, gender). `data` gives the real
    training split whose label mix `--ages match` reproduces (optional for `uniform`)."""
    from synth.pipeline import NEGATIVE_PROMPT, PROMPT_TEMPLATE, generate, load_pipeline, pipeline_fingerprint, \
        validate_pipeline_dir

    path = validate_pipeline_dir(pipeline_dir)
    real = None
    if data:
        try:
            real = train_labels(data)
        except FileNotFoundError:
            if ages == "match":
                raise
    elif ages == "match":
        raise ValueError("--ages match needs --data (the real dataset whose training labels to match)")
    fp = pipeline_fingerprint(path)
    content = {k: v for k, v in fp.items() if k != "path"}  # the same pipeline moved elsewhere keeps its id
    fid = hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:8]
    gen_name = f"pipe-{path.name}-{fid}"
    name = name or (gen_name if ages == "match" else f"{gen_name}-{ages}")
    pipe = load_pipeline(path, device)
    plan = make_plan(n, ages, seed, gen_name, real)

    def batch_fn(rows: pd.DataFrame, gen: torch.Generator) -> np.ndarray:
        return generate(pipe, rows["age"].to_numpy(), rows["gender"].to_numpy(), gen, size, steps, guidance,
                        resolution)

    sampling = {"ages": ages, "seed": seed, "steps": steps, "guidance": guidance, "resolution": resolution,
                "prompt_template": PROMPT_TEMPLATE, "negative_prompt": NEGATIVE_PROMPT}
    prov = {"generator": {"id": gen_name, "kind": "pipeline", "pipeline": fp}, "real_data": {"dataset": data},
            "size": size, "sampling": sampling, "identity": {"pipeline": fid, **sampling, "size": size}}
    return write_set(name, plan, batch_fn, prov, seed, batch_size, progress)
