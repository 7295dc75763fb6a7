"""How faithful is a synthetic set? A zoo model trained on REAL data judges it:

* label fidelity — the model's predicted age vs the intended age, per age bin (MAE, bias), and gender agreement
  (predicted gender vs intended). The same numbers on the real test split are stored beside them, so "MAE 9 on
  synthetic 60-69" can be read against the model's own error on real 60-69 faces.
* distribution distance — Fréchet distance between the model backbone's `.features()` of synthetic images and of
  real test images (FID-style, with a face-age backbone instead of Inception: nothing is downloaded). Baselines:
  real train vs real test (the floor), and the same at the synthetic images' resolution (how much of the distance
  is just low resolution).

Output: `artifacts/synth/<name>/fidelity.json` + `grid.png` (rows: age bins, columns: male | female samples).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from synth.data import write_json
from synth.labels import BIN_NAMES, GENDER_NAMES, N_BINS, age_bin
from zoo.data.cache import load_images
from zoo.data.manifest import Manifest, load_manifest
from zoo.inference import to_batch
from zoo.paths import artifacts_dir
from zoo.provenance import git_commit

GRID_MAX_BYTES = 300_000


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(Sa + Sb - 2 (Sa^1/2 Sb Sa^1/2)^1/2), via symmetric eigendecompositions (stable for
    rank-deficient covariances, e.g. fewer images than feature dimensions; no scipy sqrtm needed)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Fréchet distance needs at least 2 samples on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root_a @ sb @ root_a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr_sqrt)


@torch.no_grad()
def features(net: torch.nn.Module, images: np.ndarray, size: int, batch: int = 256) -> np.ndarray:
    net.eval()
    out = [net.features(to_batch(images[i:i + batch], size)).flatten(1).float().numpy()
           for i in range(0, len(images), batch)]
    return np.concatenate(out)


def _subset(n: int, k: int, seed: int) -> np.ndarray:
    return np.arange(n) if n <= k else np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def _resample(images: np.ndarray, size: int) -> np.ndarray:
    """Down to `size` and back: real images with the synthetic set's resolution."""
    s = images.shape[1]
    return np.stack([cv2.resize(cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA), (s, s),
                                interpolation=cv2.INTER_LINEAR) for im in images])


def label_fidelity(pred_age: np.ndarray, pred_gender: np.ndarray, age: np.ndarray, gender: np.ndarray) -> dict:
    """Per-bin MAE / bias of predicted vs intended age and gender agreement; bins without images are null."""
    bins = age_bin(age)
    g_ok = (pred_gender >= 0.5).astype(int) == gender.astype(int)
    err = pred_age - age
    per_bin = {}
    for b in range(N_BINS):
        m = bins == b
        per_bin[BIN_NAMES[b]] = None if not m.any() else {
            "n": int(m.sum()), "mae": float(np.abs(err[m]).mean()), "bias": float(err[m].mean()),
            "gender_agreement": float(g_ok[m].mean())}
    return {"n": int(len(age)), "mae": float(np.abs(err).mean()), "bias": float(err.mean()),
            "gender_agreement": float(g_ok.mean()),
            "gender_agreement_by_gender": {GENDER_NAMES[g]: float(g_ok[gender == g].mean()) if (gender == g).any()
                                           else None for g in (0, 1)},
            "per_bin": per_bin}


def sample_grid(images: np.ndarray, age: np.ndarray, gender: np.ndarray, per_cell: int = 6, thumb: int = 32,
                seed: int = 0) -> np.ndarray:
    """RGB grid: one row per age bin, `per_cell` thumbnails of males then of females; empty cells stay grey."""
    label_w, head_h, gap = 44, 14, 4
    rng = np.random.default_rng(seed)
    w = label_w + 2 * per_cell * thumb + gap
    grid = np.full((head_h + N_BINS * thumb, w, 3), 235, np.uint8)
    bins = age_bin(age)
    font = cv2.FONT_HERSHEY_PLAIN
    for g in (0, 1):
        x0 = label_w + g * (per_cell * thumb + gap)
        cv2.putText(grid, GENDER_NAMES[g], (x0 + 2, head_h - 3), font, 0.8, (40, 40, 40), 1, cv2.LINE_AA)
    for b in range(N_BINS):
        y0 = head_h + b * thumb
        cv2.putText(grid, BIN_NAMES[b], (2, y0 + thumb // 2 + 4), font, 0.8, (40, 40, 40), 1, cv2.LINE_AA)
        for g in (0, 1):
            idx = np.flatnonzero((bins == b) & (gender == g))
            pick = rng.choice(idx, min(per_cell, len(idx)), replace=False) if len(idx) else []
            x0 = label_w + g * (per_cell * thumb + gap)
            for j, i in enumerate(pick):
                interp = cv2.INTER_AREA if images.shape[1] > thumb else cv2.INTER_NEAREST
                grid[y0:y0 + thumb, x0 + j * thumb:x0 + (j + 1) * thumb] = cv2.resize(images[i], (thumb, thumb),
                                                                                     interpolation=interp)
    return grid


def write_grid(path: Path, images: np.ndarray, age: np.ndarray, gender: np.ndarray, thumb: int = 32,
               per_cell: int = 6) -> dict:
    """Write the grid PNG, shrinking thumbnails until it fits in GRID_MAX_BYTES (the dashboard loads it as is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    thumb = min(thumb, images.shape[1])
    while True:
        grid = sample_grid(images, age, gender, per_cell=per_cell, thumb=thumb)
        ok, buf = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if not ok:
            raise OSError("PNG encoding failed")
        if len(buf) <= GRID_MAX_BYTES or thumb <= 8:
            break
        thumb = max(8, int(thumb * 0.75))
    tmp = path.with_suffix(".tmp.png")
    tmp.write_bytes(buf.tobytes())
    tmp.replace(path)
    return {"file": path.name, "rows": BIN_NAMES, "cols": list(GENDER_NAMES), "per_cell": per_cell, "thumb_px": thumb,
            "bytes": len(buf)}


def _labels(m: Manifest) -> tuple[np.ndarray, np.ndarray]:
    return m.frame["age"].to_numpy(float), m.frame["gender"].astype("float").to_numpy()


def fidelity(name: str, model_id: str, real: str | None = None, max_images: int = 2000, seed: int = 0,
             progress: bool = True) -> dict:
    """Judge synthetic set `synth_<name>` with registered zoo model `model_id`; writes and returns fidelity.json."""
    from zoo.registry import build_network, get_run, load

    syn = load_manifest(f"synth_{name}")
    prov_path = syn.root / "provenance.json"
    prov = json.loads(prov_path.read_text()) if prov_path.exists() else {}
    real = real or (prov.get("real_data") or {}).get("dataset")
    if not real:
        raise ValueError(f"synthetic set {name!r} does not record its real dataset; pass --real DATASET")
    predictor = load(model_id)
    size = predictor.img_size
    run = get_run(model_id)
    feat_run = get_run(run.members[0]) if run.kind == "ensemble" else run  # features: first member
    net = build_network(feat_run)
    feat_size = feat_run.preprocessing(get_run).img_size

    # Synthetic images at their native size (grid) and the judging model's size (via its own resize).
    s_idx = _subset(len(syn.frame), max_images, seed)
    s_age, s_gender = (a[s_idx] for a in _labels(syn))
    native = int(prov.get("size") or 0) or None
    s_native = load_images(syn, native, progress=progress)[s_idx] if native else None
    s_imgs = load_images(syn, size, progress=progress)[s_idx]
    pred = predictor.predict(s_imgs)
    result = {"name": name, "dataset": f"synth_{name}", "model": model_id, "real_dataset": real,
              "generator": prov.get("generator", {}).get("id"), "synthetic": label_fidelity(
                  pred["age"], pred["gender_prob"], s_age, s_gender)}

    # The same model on real test images: the error it makes on real faces of each bin, for reference.
    rm = load_manifest(real)
    split = rm.frame["split"].to_numpy()
    r_age, r_gender = _labels(rm)
    test = np.flatnonzero((split == "test") & np.isfinite(r_age) & np.isfinite(r_gender))
    test = test[_subset(len(test), max_images, seed)]
    r_imgs = load_images(rm, size, progress=progress)
    r_test = r_imgs[test]
    rp = predictor.predict(r_test)
    result["real_test"] = label_fidelity(rp["age"], rp["gender_prob"], r_age[test], r_gender[test])

    train = np.flatnonzero(split == "train")
    train = train[_subset(len(train), min(max_images, len(test)), seed + 1)]
    f_test = features(net, r_test, feat_size)
    f_syn = features(net, s_imgs, feat_size)
    f_train = features(net, r_imgs[train], feat_size)
    dist = {"backbone_model": feat_run.id, "feature_dim": int(f_syn.shape[1]), "n_synthetic": len(f_syn),
            "n_real_test": len(f_test), "fd_synthetic_vs_real_test": frechet_distance(f_syn, f_test),
            "fd_real_train_vs_real_test": frechet_distance(f_train, f_test)}
    if native and native < size:
        f_low = features(net, _resample(r_imgs[train], native), feat_size)
        dist["fd_real_train_at_synthetic_res_vs_real_test"] = frechet_distance(f_low, f_test)
    result["feature_distance"] = dist
    out_dir = artifacts_dir() / "synth" / name
    grid_imgs = s_native if s_native is not None else s_imgs
    result["grid"] = write_grid(out_dir / "grid.png", grid_imgs, s_age, s_gender)
    result.update(commit=git_commit(), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_json(out_dir / "fidelity.json", result)
    return result
