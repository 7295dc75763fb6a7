"""`python -m zoo predict` on a folder of mixed photos built from real faces (UTKFace test split, ../shared/data):
loosely framed faces pasted at random offsets and scales into larger backgrounds, photos with two or three faces,
face-free images, truncated JPEGs and files that are not images. Prints what came back and the time per photo.

    python benchmarks/predict_photos.py [--n 200] [--models best] [--keep DIR]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from zoo.data.detections import read_rgb
from zoo.data.manifest import load_manifest


def paste(canvas: np.ndarray, face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    s = int(rng.uniform(0.25, 0.55) * min(canvas.shape[:2]))
    f = cv2.resize(face, (s, s), interpolation=cv2.INTER_AREA)
    y, x = rng.integers(0, canvas.shape[0] - s), rng.integers(0, canvas.shape[1] - s)
    canvas[y:y + s, x:x + s] = f
    return canvas


def build(folder: Path, n: int, seed: int = 0) -> dict[str, int]:
    """{file name: number of pasted faces} (-1: not a usable photo)."""
    rng = np.random.default_rng(seed)
    m = load_manifest("utkface")
    test = m.frame[m.frame["split"] == "test"]["path"].to_numpy()
    faces = iter(read_rgb(m.root / p) for p in rng.permutation(test))
    kinds = rng.choice(["one", "one", "one", "two", "three", "none", "corrupt", "text"], n)
    truth = {}
    for i, kind in enumerate(kinds):
        h, w = int(rng.integers(360, 900)), int(rng.integers(360, 900))
        bg = cv2.GaussianBlur(rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8), (0, 0), 2)
        canvas = cv2.resize(bg, (w, h), interpolation=cv2.INTER_CUBIC)
        name = f"{i:03d}-{kind}.jpg"
        if kind == "text":
            (folder / f"{i:03d}-text.txt").write_text("not a photo")
            truth[f"{i:03d}-text.txt"] = -1
            continue
        if kind in ("one", "two", "three", "corrupt"):
            k = {"one": 1, "two": 2, "three": 3, "corrupt": 1}[kind]
            if k > 1:  # side by side, so they never overlap
                strip = w // k
                for j in range(k):
                    part = np.ascontiguousarray(canvas[:, j * strip:(j + 1) * strip])
                    canvas[:, j * strip:(j + 1) * strip] = paste(part, next(faces), rng)
            else:
                canvas = paste(canvas, next(faces), rng)
            truth[name] = k
        else:
            truth[name] = 0
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        data = buf.tobytes()
        if kind == "corrupt":
            data, truth[name] = data[: len(data) // 3], -1
        (folder / name).write_bytes(data)
    return truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--models", default="best")
    ap.add_argument("--keep", help="build the photos in this folder and keep them")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp) / "photos"
        folder.mkdir(parents=True, exist_ok=True)
        truth = build(folder, args.n)
        out = Path(tmp) / "predictions.csv"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "zoo", "predict", str(folder), "--models", args.models, "-o", str(out),
                        "-q"], check=True)
        wall = time.perf_counter() - t0
        rows = pd.read_csv(out)
    rows["name"] = rows["file"].map(lambda p: Path(p).name)
    found = rows[rows["face_found"]].groupby("name").size()
    table = []
    for kind, k in (("one face", 1), ("two faces", 2), ("three faces", 3), ("no face", 0), ("unusable", -1)):
        names = [n for n, t in truth.items() if t == k]
        got = found.reindex(names).fillna(0)
        table.append({"photos": kind, "n": len(names), "faces pasted": max(k, 0) * len(names),
                      "faces found": int(got.sum()), "rows": int(rows["name"].isin(names).sum()),
                      "with a reason": int(rows[rows["name"].isin(names)]["reason"].notna().sum())})
    print(pd.DataFrame(table).to_string(index=False))
    per = rows.loc[rows["face"] == 0, "seconds"]
    print(f"\n{len(truth)} files, {len(rows)} rows; time per photo (face pipeline + models): median "
          f"{1000 * per.median():.0f} ms, p90 {1000 * per.quantile(0.9):.0f} ms; whole command {wall:.1f} s "
          f"(including model loading)")


if __name__ == "__main__":
    main()
