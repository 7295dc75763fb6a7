"""Which CPU runtime should predict? Eager vs `torch.compile` vs BatchNorm-folded eager vs ONNX Runtime, for the
shipped headline networks at each headline input size, in one run, as img/s and ratios to eager.

Each runtime computes the network's raw outputs (every head) of the same batch (`--batch`, 64 by default) of real
UTKFace test faces when the dataset is there (random pixels otherwise: speed does not depend on content), prepared
exactly as `zoo.inference.NetworkPredictor` prepares it (`to_batch`: float, channels_last). Rounds are interleaved (every
runtime once per round, the order rotated each round) so a loaded machine's noise hits all alike; the table gives the
median img/s over rounds, the ratio to eager, and the largest absolute difference of any output from eager's.
`torch.compile`'s first call (the compilation) is timed apart and left out; if it fails the row says why. Threads:
torch and ONNX Runtime both get `--threads` (default: torch's current count).

    python benchmarks/inference_runtimes.py [--models ID,ID] [--batch 64] [--rounds 7] [--threads N]
                                            [--runtimes eager,compile,fold,onnx] [--json out.json]

The default CPU runtime (`zoo.export.DEFAULT_CPU_RUNTIME`, used by `--runtime auto`) is the fastest runtime whose
outputs match eager within zoo.export.PARITY_ATOL; README "Exported models and CPU runtimes" records the figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RUNTIMES = ("eager", "compile", "fold", "onnx")


def headline_models() -> list[str]:
    """One shipped single run per (backbone, input size) among the headline runs."""
    from zoo.registry import list_runs, missing_weights

    runs = list_runs()
    by_id = {r.id: r for r in runs}
    seen, out = set(), []
    for r in sorted(runs, key=lambda r: (r.img_size or 0, r.id)):
        key = (r.config.get("backbone"), r.img_size)
        if (r.kind == "single" and r.name.startswith("headline") and key not in seen
                and missing_weights(r, by_id) is None):
            seen.add(key)
            out.append(r.id)
    return out


def faces(n: int, size: int) -> tuple[np.ndarray, str]:
    """n real UTKFace test faces at `size` px (from the decoded-image cache), or random pixels without the data."""
    try:
        from zoo.data.cache import decode_image
        from zoo.data.manifest import load_manifest, manifest_path

        if not manifest_path("utkface").exists():
            raise FileNotFoundError("no UTKFace manifest (python -m zoo data scan --dataset utkface)")
        m = load_manifest("utkface")
        paths = [m.abspaths()[i] for i in np.flatnonzero((m.frame["split"] == "test").to_numpy())[:n]]
        return np.stack([decode_image(p, size) for p in paths]), "UTKFace test faces"
    except Exception as e:  # no dataset / manifest here: speed does not depend on the pixels
        return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8), \
            f"random pixels ({type(e).__name__})"


def build_runtimes(model, model_id: str, wanted: list[str]) -> tuple[dict, dict]:
    """{name: callable x -> raw outputs}, {name: note} (setup time, folds, or why a runtime is missing)."""
    from zoo.export import CompiledRunner, OnnxRunner, cached_onnx, fold_batchnorm

    fns, notes = {}, {}
    for name in wanted:
        t = time.perf_counter()
        try:
            if name == "eager":
                fns[name] = model
            elif name == "compile":
                fns[name] = CompiledRunner(model)
            elif name == "fold":
                folded, n = fold_batchnorm(model)
                fns[name] = folded
                notes[name] = f"{n} BN folded"
            elif name == "onnx":
                fns[name] = OnnxRunner(cached_onnx(model_id))
            notes[name] = (notes.get(name, "") + f" setup {time.perf_counter() - t:.1f}s").strip()
        except Exception as e:
            notes[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return fns, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=None, help="comma-separated ids (default: one headline run per size)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)

    import torch

    from zoo.inference import to_batch
    from zoo.registry import build_network, get_run

    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = [r for r in args.runtimes.split(",") if r]
    ids = args.models.split(",") if args.models else headline_models()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.rounds} "
          f"interleaved rounds; models: {', '.join(ids)}", flush=True)
    rows = []
    for mid in ids:
        run = get_run(mid)
        model = build_network(run)
        size = run.preprocessing(get_run).img_size
        images, source = faces(args.batch, size)
        x = to_batch(images, size)
        fns, notes = build_runtimes(model, mid, wanted)
        with torch.inference_mode():
            ref = model(x)
            diffs, first = {}, {}
            for name, fn in list(fns.items()):  # warm-up (compile: the compilation), and the output check
                t = time.perf_counter()
                try:
                    out = fn(x)
                except Exception as e:
                    notes[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
                    del fns[name]
                    continue
                first[name] = time.perf_counter() - t
                diffs[name] = max(float((out[k].float() - ref[k].float()).abs().max()) for k in ref)
            times: dict[str, list[float]] = {n: [] for n in fns}
            names = list(fns)
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    t = time.perf_counter()
                    fns[name](x)
                    times[name].append(time.perf_counter() - t)
        eager = args.batch / float(np.median(times["eager"])) if "eager" in times else float("nan")
        for name in wanted:
            ips = args.batch / float(np.median(times[name])) if name in times else float("nan")
            note = notes.get(name, "")
            if name == "compile" and name in first:
                note += f", compiled in {first[name]:.0f}s"
            rows.append({"model": mid, "img_size": size, "runtime": name, "img_s": ips, "ratio": ips / eager,
                         "max_abs_diff": diffs.get(name, float("nan")), "note": note.strip(", "),
                         "inputs": source})
            print(f"  {mid:<38} {size:>4} {name:<8} {ips:8.1f} img/s  x{ips / eager:4.2f}  "
                  f"max|d| {diffs.get(name, float('nan')):.1e}  {note.strip(', ')}", flush=True)
    print(f"\n| model | px | " + " | ".join(f"{n} img/s (x eager)" for n in wanted) + " | max abs diff vs eager |")
    print("|---|---|" + "---|" * len(wanted) + "---|")
    for mid in ids:
        r = {x["runtime"]: x for x in rows if x["model"] == mid}
        cells = [f"{r[n]['img_s']:.0f} ({r[n]['ratio']:.2f}x)" if r[n]["img_s"] == r[n]["img_s"] else "failed"
                 for n in wanted]
        d = max((r[n]["max_abs_diff"] for n in wanted if r[n]["max_abs_diff"] == r[n]["max_abs_diff"]), default=0)
        print(f"| {mid} | {r[wanted[0]]['img_size']} | " + " | ".join(cells) + f" | {d:.1e} |")
    for n in wanted:
        ratios = [x["ratio"] for x in rows if x["runtime"] == n and x["ratio"] == x["ratio"]]
        if ratios:
            print(f"{n}: geometric mean x{np.exp(np.mean(np.log(ratios))):.2f} of eager "
                  f"(min x{min(ratios):.2f}, max x{max(ratios):.2f})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
