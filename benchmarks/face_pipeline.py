"""Face pipeline speed and recall: every registered detector (+ 5 landmarks + alignment) on real test images.

For each detector and dataset (UTKFace test: tight aligned crops; CelebA-HQ test: wider 64 px framing), on the same
N images in one run: the share of images with a face found, and images per second for detection + landmarks and for
the alignment warp. One thread (torch is not involved; dlib and OpenCV run single-threaded here).

    python benchmarks/face_pipeline.py [--n 300]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from zoo import faces as F
from zoo.data.detections import read_rgb
from zoo.data.manifest import load_manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    rows = []
    for name in ("utkface", "celebahq"):
        try:
            m = load_manifest(name)
        except FileNotFoundError as e:
            print(f"skipping {name}: {e}")
            continue
        test = m.frame[m.frame["split"] == "test"]
        pick = test.sample(min(args.n, len(test)), random_state=0)
        images = [read_rgb(m.root / p) for p in pick["path"]]
        for det in F.list_detectors():
            pipe = F.FacePipeline(det, min_face=F.DATASET_MIN_FACE)
            pipe.detect(images[0])  # build the detector and landmark model outside the timing
            t0 = time.perf_counter()
            found = [pipe.detect(x) for x in images]
            t_det = time.perf_counter() - t0
            t0 = time.perf_counter()
            for x, f in zip(images, found):
                pipe.align(x, f[0]) if f else F.fallback_crop(x)
            t_align = time.perf_counter() - t0
            rows.append({"dataset": name, "detector": det, "images": len(images),
                         "face found": f"{np.mean([bool(f) for f in found]):.1%}",
                         "detect + landmarks img/s": round(len(images) / t_det, 1),
                         "align img/s": round(len(images) / t_align, 1),
                         "pipeline img/s": round(len(images) / (t_det + t_align), 1)})
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
