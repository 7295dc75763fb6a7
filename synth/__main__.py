"""`python -m synth …`: train a generator, sample a labelled synthetic set, measure its fidelity."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """examples:
  python -m synth train --generator ddpm --data utkface              # CPU default: 32 px, 5000 steps (~46 min)
  python -m synth train --config zoo/configs/synth_gan.yaml           # conditional DCGAN, 64 px (~40 min)
  python -m synth sample --generator ddpm-utkface-32px --n 2000 --ages match
  python -m synth sample --from-pipeline ~/models/my-sd-pipeline --n 500 --ages uniform --size 128
  python -m synth fidelity --generator ddpm-utkface-32px --model resnet18-dldl-1234abcd
  python -m zoo grid zoo/configs/synth_study.yaml                      # real vs synthetic vs mixed study
"""


def _train(args: argparse.Namespace) -> int:
    from synth.config import SynthConfig
    from synth.train import train_generator
    from zoo.config import parse_overrides

    over = {"generator": args.generator, "data": args.data, "size": args.size, "steps": args.steps,
            "batch_size": args.batch_size, "name": args.id, "device": args.device, "seed": args.seed}
    over.update(parse_overrides(args.set or []))
    over = {k: v for k, v in over.items() if v is not None}
    if args.config:
        cfg = SynthConfig.from_yaml(args.config, **over)
    else:
        cfg = SynthConfig.from_dict(over)
    print(f"generator {cfg.name}: {cfg.generator} at {cfg.size} px, {cfg.steps} steps of batch {cfg.batch_size} on "
          f"{cfg.data} (train split); checkpoints -> {'artifacts' if args.ship else 'cache'}/synth/{cfg.name}/")
    r = train_generator(cfg, ship=args.ship, progress=not args.quiet)
    s = r.get("s_per_step")
    print(f"{r['id']}: step {r['step']}/{cfg.steps}, {r['params'] / 1e6:.2f}M params"
          + (f", {s:.3f} s/step" if s else "") + f"; summary in artifacts/synth/{r['id']}/generator.json")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from synth.sample import sample_generator, sample_pipeline

    if bool(args.generator) == bool(args.from_pipeline):
        raise ValueError("pass exactly one of --generator ID or --from-pipeline LOCAL_DIR")
    if args.from_pipeline:
        try:
            m = sample_pipeline(args.from_pipeline, args.n, args.ages, args.seed, args.name, args.size or 128,
                                args.data, args.batch_size or 4, args.steps or 30,
                                7.5 if args.guidance is None else args.guidance, args.resolution, args.device,
                                progress=not args.quiet)
        except RuntimeError as e:  # a pipeline whose packages are missing: the user's setup, not a bug here
            raise ValueError(str(e)) from None
    else:
        m = sample_generator(args.generator, args.n, args.ages, args.seed, args.name, args.batch_size or 64,
                             args.steps, args.guidance, args.device, progress=not args.quiet)
    print(f"{m.dataset}: {len(m.frame)} images in {m.root} (manifest hash {m.hash}); train on it with "
          f"`source: synth:{m.dataset.removeprefix('synth_')}`")
    return 0


def _fidelity(args: argparse.Namespace) -> int:
    from synth.fidelity import fidelity
    from zoo.data.manifest import manifest_path

    if not manifest_path(f"synth_{args.generator}").exists():
        raise FileNotFoundError(f"no synthetic set {args.generator!r} (dataset synth_{args.generator}); write one with "
                                f"`python -m synth sample --generator ID --name {args.generator}`")
    r = fidelity(args.generator, args.model, args.real, args.max_images, progress=not args.quiet)
    s, d = r["synthetic"], r["feature_distance"]
    print(f"{r['dataset']} judged by {r['model']}: MAE {s['mae']:.2f} (real test {r['real_test']['mae']:.2f}), "
          f"gender agreement {s['gender_agreement']:.3f}")
    for b, v in s["per_bin"].items():
        ref = r["real_test"]["per_bin"].get(b)
        if v:
            print(f"  {b:>6}: n {v['n']:5d}  MAE {v['mae']:6.2f}  bias {v['bias']:+6.2f}  gender {v['gender_agreement']:.2f}"
                  + (f"   | real test MAE {ref['mae']:6.2f}" if ref else ""))
    print(f"  Fréchet distance to real test: {d['fd_synthetic_vs_real_test']:.3f} "
          f"(real train vs test: {d['fd_real_train_vs_real_test']:.3f})")
    print(f"written: artifacts/synth/{args.generator}/fidelity.json and grid.png")
    return 0


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one (None means: the config's or the generator's default)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m synth",
                                description="Train generators of labelled synthetic faces, sample labelled sets "
                                            "and measure their fidelity.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's). On a machine shared with "
                                               "other jobs, fewer threads than cores avoids OpenMP oversubscription")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train (or resume) a class-conditional DDPM or DCGAN on a real TRAIN split",
                       description="Train a generator conditioned on age bin x gender (18 classes) from scratch on "
                                   "the real training split only. Re-running resumes from the last checkpoint; "
                                   "raise --steps to train longer.",
                       formatter_class=_Help)
    t.add_argument("--generator", choices=["ddpm", "gan"], help="generator kind (default ddpm, or the config's)")
    t.add_argument("--config", type=Path, help="YAML config, e.g. zoo/configs/synth_ddpm.yaml; flags override it")
    t.add_argument("--data", help="real dataset (its manifest must exist; default utkface)")
    t.add_argument("--size", type=int, help="image size in px, power of two (CPU defaults: ddpm 32, gan 64)")
    t.add_argument("--steps", type=int, help="total optimiser steps (CPU defaults: ddpm 5000, gan 8000)")
    t.add_argument("--batch-size", type=int, help="batch size (default 32)")
    t.add_argument("--id", help="generator id (default <generator>-<data>-<size>px)")
    t.add_argument("--device", help="auto | cpu | cuda (default auto)")
    t.add_argument("--seed", type=int)
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key (YAML value)")
    t.add_argument("--ship", action="store_true",
                   help="keep checkpoints in artifacts/synth/<id>/ (committed) instead of the cache")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(fn=_train)

    s = sub.add_parser("sample", help="write a labelled synthetic set and scan it as dataset synth_<name>",
                       description="Generate N labelled faces into cache/synth/<name>/ (PNG + labels.csv) and scan "
                                   "them as dataset synth_<name> (all split=train), usable as `source: "
                                   "synth:<name>` or `mixed:<fraction>:<name>` in zoo configs.",
                       formatter_class=_Help)
    s.add_argument("--generator", help="a trained generator id (see artifacts/synth/*/generator.json)")
    s.add_argument("--from-pipeline", metavar="LOCAL_DIR",
                   help="a LOCAL diffusers text-to-image pipeline folder (save_pretrained); never downloads")
    s.add_argument("--n", type=int, default=2000, help="number of images")
    s.add_argument("--ages", choices=["match", "uniform"], default="match",
                   help="match: the real training split's age/gender mix; uniform: equal per age bin x gender")
    s.add_argument("--name", help="set name (default: generator id, `-uniform` appended for uniform ages)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, help="images per batch (default 64; 4 for pipelines)")
    s.add_argument("--steps", type=int, help="sampling steps (DDIM default: the config's 50; pipelines 30)")
    s.add_argument("--guidance", type=float, help="guidance scale (DDPM default: the config's; pipelines 7.5)")
    s.add_argument("--size", type=int, help="pipeline only: stored image size in px (default 128)")
    s.add_argument("--resolution", type=int, help="pipeline only: generation resolution (default: its own)")
    s.add_argument("--data", default="utkface", help="pipeline only: real dataset whose labels --ages match uses")
    s.add_argument("--device", default="auto", help="auto | cpu | cuda")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=_sample)

    f = sub.add_parser("fidelity", help="judge a synthetic set with a real-trained zoo model",
                       description="Per-age-bin MAE between intended and predicted age, gender agreement and a "
                                   "Fréchet distance on the model's backbone features vs real test images; writes "
                                   "artifacts/synth/<name>/fidelity.json and grid.png.",
                       formatter_class=_Help)
    f.add_argument("--generator", required=True, metavar="NAME", help="synthetic set name (dataset synth_<NAME>)")
    f.add_argument("--model", required=True, help="registered zoo model id trained on real data")
    f.add_argument("--real", help="real dataset to compare with (default: the set's provenance)")
    f.add_argument("--max-images", type=int, default=2000, help="cap per side, for speed")
    f.add_argument("--quiet", action="store_true")
    f.set_defaults(fn=_fidelity)
    return p


def main(argv: list[str] | None = None) -> int:
    from zoo.cli import error_line

    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.fn(args)
    except (OSError, ValueError, KeyError) as e:  # a user's mistake: one line, no traceback
        print(error_line(e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
