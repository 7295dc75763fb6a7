"""Per-image face detections of a dataset, computed once per (dataset, face pipeline version) and kept on disk.

One row per image id: what `zoo.faces.FacePipeline` found in the original file (found, count, score, box, the 5
landmarks of the largest face) and the file's size. The aligned-crop cache warps from these landmarks at any size,
and the bench's `images` table reports them, so detection runs once however many sizes and tables use it.

Image ids are content hashes, so a row stays valid when a manifest changes. Rows are saved every CHUNK images
(atomically), so a killed detection resumes where it stopped.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from zoo.data.manifest import Manifest
from zoo.faces import DATASET_MIN_FACE, FacePipeline, FaceReport
from zoo.paths import cache_dir, cache_lock

CHUNK = 500
LANDMARK_COLS = [f"lm{i}" for i in range(10)]  # x0, y0, ..., x4, y4 of the largest face, NaN without one
COLUMNS = ["image_id", "face_found", "n_faces", "face_score", "face_x", "face_y", "face_w", "face_h",
           *LANDMARK_COLS, "img_w", "img_h"]


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def given_box(extras: str | dict | None) -> list | None:
    """The `boxes` framing: extras `face_box` = [x, y, w, h] in the file's pixels."""
    import json

    e = json.loads(extras) if isinstance(extras, str) else (extras or {})
    box = e.get("face_box")
    return [tuple(float(v) for v in box)] if box is not None else None


def detect_row(pipe: FacePipeline, path: Path, boxes: list | None = None) -> dict:
    rgb = read_rgb(path)
    faces = pipe.detect(rgb, boxes)
    rep = FaceReport(bool(faces), len(faces), *((faces[0].score, tuple(faces[0].box)) if faces else ()))
    lm = faces[0].landmarks.reshape(-1) if faces else np.full(10, np.nan)
    return {**rep.as_row(), **dict(zip(LANDMARK_COLS, lm.tolist())), "img_w": rgb.shape[1], "img_h": rgb.shape[0]}


def detections_path(dataset: str, pipe: FacePipeline) -> Path:
    return cache_dir() / "faces" / f"{dataset}-{pipe.version}.parquet"


def _load(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=COLUMNS)


def _save(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)


def detections(manifest: Manifest, idx: np.ndarray | None = None, pipe: FacePipeline | None = None,
               progress: bool = True) -> pd.DataFrame:
    """Detection rows for manifest rows `idx` (default all), in that order; computes and stores missing ones."""
    pipe = pipe or FacePipeline(min_face=DATASET_MIN_FACE)
    f = manifest.frame if idx is None else manifest.frame.iloc[np.asarray(idx, dtype=int)]
    path = detections_path(manifest.dataset, pipe)
    stored = _load(path)
    if not f["image_id"].isin(stored["image_id"]).all():
        with cache_lock(path.stem):  # another job may be detecting the same images: wait, then take its rows
            stored = _detect_missing(manifest, f, _load(path), pipe, path, progress)
    out = f[["image_id"]].merge(stored.drop_duplicates("image_id"), on="image_id", how="left")
    out["face_found"] = out["face_found"].astype(bool)
    return out


def _detect_missing(manifest: Manifest, f: pd.DataFrame, stored: pd.DataFrame, pipe: FacePipeline, path: Path,
                    progress: bool) -> pd.DataFrame:
    todo = f[~f["image_id"].isin(stored["image_id"])]
    boxes = manifest.framing == "boxes"
    new: list[dict] = []
    for k, row in enumerate(tqdm(todo.itertuples(), total=len(todo), unit="img", disable=not progress or todo.empty,
                                 desc=f"faces {manifest.dataset}")):
        try:
            new.append({"image_id": row.image_id, **detect_row(pipe, manifest.root / row.path,
                                                               given_box(row.extras) if boxes else None)})
        except ValueError:  # undecodable now (deleted or changed after the scan): no face, no size
            new.append({"image_id": row.image_id, "face_found": False, "n_faces": 0})
        if len(new) >= CHUNK or k == len(todo) - 1:
            stored = pd.concat([stored, pd.DataFrame(new, columns=COLUMNS)], ignore_index=True)
            _save(stored, path)
            new = []
    return stored


def landmarks_of(rows: pd.DataFrame) -> np.ndarray:
    """[N, 5, 2] landmarks (NaN where no face was found)."""
    return rows[LANDMARK_COLS].to_numpy(np.float64).reshape(-1, 5, 2)
