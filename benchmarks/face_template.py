"""Measure the canonical crop template on UTKFace and how far UTKFace's own crops sit from it.

1. Template: detect + 5 landmarks on N train crops; the mean landmark position (px of the 200 px crop) is the
   template `zoo.faces.TEMPLATE` should hold.
2. Offsets on test crops: each crop's landmarks vs the template (mean landmark offset in px), and the similarity
   that aligns the crop (scale, rotation, shift): near identity means alignment leaves UTKFace almost unchanged.

    python benchmarks/face_template.py [--n-train 2000] [--n-test 1000]
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np
from tqdm import tqdm

from zoo import faces
from zoo.data.manifest import load_manifest


def landmarks_of(pipe: faces.FacePipeline, path) -> np.ndarray | None:
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    rgb = cv2.resize(rgb, (faces.CROP_SIZE, faces.CROP_SIZE), interpolation=cv2.INTER_AREA) \
        if rgb.shape[:2] != (faces.CROP_SIZE,) * 2 else rgb
    found = pipe.detect(rgb)
    return found[0].landmarks if found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=1000)
    args = ap.parse_args()
    m = load_manifest("utkface")
    rng = np.random.default_rng(0)
    pipe = faces.FacePipeline()
    paths = {s: [m.root / p for p in m.frame.loc[m.frame["split"] == s, "path"]] for s in ("train", "test")}
    train = rng.choice(len(paths["train"]), min(args.n_train, len(paths["train"])), replace=False)
    pts = [landmarks_of(pipe, paths["train"][i]) for i in tqdm(train, desc="template (train)")]
    found = np.stack([p for p in pts if p is not None])
    template = found.mean(0)
    print(f"train: {len(found)}/{len(pts)} faces found; template (px of {faces.CROP_SIZE}):")
    print(np.array2string(template.round(1), separator=", "))
    test = rng.choice(len(paths["test"]), min(args.n_test, len(paths["test"])), replace=False)
    offs, scales, rots, shifts, n_found = [], [], [], [], 0
    for i in tqdm(test, desc="offsets (test)"):
        p = landmarks_of(pipe, paths["test"][i])
        if p is None:
            continue
        n_found += 1
        offs.append(np.linalg.norm(p - template, axis=1).mean())
        mtx = faces.similarity_transform(p, template)
        scales.append(np.sqrt(abs(np.linalg.det(mtx[:, :2]))))
        rots.append(np.degrees(np.arctan2(mtx[1, 0], mtx[0, 0])))
        shifts.append(np.linalg.norm(faces.transform_points(mtx, [[100, 100]])[0] - [100, 100]))
    q = lambda a: f"mean {np.mean(a):.2f}, median {np.median(a):.2f}, p90 {np.percentile(a, 90):.2f}"  # noqa: E731
    print(f"\ntest: {n_found}/{len(test)} faces found ({n_found / len(test):.1%})")
    print(f"| measure (UTKFace test crops vs template, {faces.CROP_SIZE} px) | value |\n|---|---|")
    print(f"| mean landmark offset, px | {q(offs)} |")
    print(f"| alignment scale | {q(scales)} |")
    print(f"| alignment rotation, degrees (abs) | {q(np.abs(rots))} |")
    print(f"| alignment shift of the crop centre, px | {q(shifts)} |")


if __name__ == "__main__":
    main()
