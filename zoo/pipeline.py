"""Photos in, one row per face out: the facade behind `python -m zoo predict`, the dashboard's photo comparison and
`zoo.load(id).predict_photos(...)` (in the spirit of MiVOLO's `Predictor` and yu4u's `demo.py`).

    pipe = zoo.Pipeline(["ensemble-3fc48f93"])        # or Pipeline.from_selector("best")
    rows = pipe.predict_photos(["group.jpg", rgb_array])

Every face goes through `zoo.faces` (detect, 5 landmarks, canonical aligned crop) and each model gets that crop
resized to its input (`square_resize`), exactly as the bench feeds aligned datasets. A photo without a face is still
predicted, on the documented fallback crop (`zoo.faces.fallback_crop`), and flagged (`face_found = False`). A file
that cannot be used (not an image, corrupt, too large) gets a row with the reason and no predictions.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from zoo.data.cache import square_resize
from zoo.faces import Face, FacePipeline, fallback_crop
from zoo.predictor import Predictor


@dataclass
class FaceRow:
    """One face of one photo (or the one fallback row of a photo without a face, or of an unusable file)."""

    file: str
    face: int  # 0 = the largest face
    face_found: bool
    n_faces: int
    box: tuple[float, float, float, float] | None = None  # x, y, w, h in the photo's pixels
    score: float | None = None
    reason: str = ""  # why there is no face / no prediction
    predictions: dict[str, dict[str, float]] = field(default_factory=dict)  # model id -> age, sigma, p_female, attr:*
    seconds: float = 0.0  # detection + every model, for this photo (on its first row)
    crop: np.ndarray | None = field(default=None, repr=False)
    detected: Face | None = field(default=None, repr=False)

    def flat(self) -> dict:
        """A CSV row: face fields, then `<model>:age`, `<model>:sigma`, `<model>:p_female` per model."""
        x, y, w, h = self.box or (None,) * 4
        out = {"file": self.file, "face": self.face, "face_found": self.face_found, "n_faces": self.n_faces,
               "box_x": x, "box_y": y, "box_w": w, "box_h": h, "score": self.score, "reason": self.reason,
               "seconds": round(self.seconds, 4)}
        for mid, p in self.predictions.items():
            out.update({f"{mid}:{k}": v for k, v in p.items()})
        return out

    def nested(self) -> dict:
        """A JSON record: face fields and {model id: {age, sigma, p_female}}."""
        x, y, w, h = self.box or (None,) * 4
        return {"file": self.file, "face": self.face, "face_found": self.face_found, "n_faces": self.n_faces,
                "box": None if self.box is None else {"x": x, "y": y, "w": w, "h": h}, "score": self.score,
                "reason": self.reason, "seconds": round(self.seconds, 4), "predictions": self.predictions}


def predict_crops(predictor: Predictor, crops: np.ndarray, mc_dropout: int = 0,
                  tta: str | None = None) -> dict[str, np.ndarray]:
    """Canonical crops uint8 [N, S, S, 3] -> a predictor's outputs, each crop resized to its input like the bench."""
    size = int(predictor.img_size)
    x = np.stack([square_resize(c, size) for c in crops])
    return predictor.predict(x, mc_dropout=mc_dropout, tta=tta)


def _summary(out: dict[str, np.ndarray], i: int) -> dict[str, float]:
    from zoo.metrics import total_sigma

    sigma = float(total_sigma(out["sigma_aleatoric"][i], out["sigma_epistemic"][i]))
    attrs = {k: float(v[i]) for k, v in out.items() if k.startswith("attr:")}  # attribute heads' probabilities
    return {"age": float(out["age"][i]), "sigma": sigma, "p_female": float(out["gender_prob"][i]), **attrs}


class Pipeline:
    """Face pipeline + one or more predictors (zoo networks, ensembles, peers: any `zoo.predictor.Predictor`)."""

    def __init__(self, predictors: Sequence[Predictor] | dict[str, Predictor], detector: str = "dlib_hog",
                 mc_dropout: int = 0, tta: str | None = None, all_faces: bool = True):
        if not isinstance(predictors, dict):
            predictors = {getattr(p, "id", "") or f"model{i}": p for i, p in enumerate(predictors)}
        if not predictors:
            raise ValueError("a Pipeline needs at least one model")
        self.predictors = predictors
        self.faces = FacePipeline(detector)
        self.mc_dropout, self.tta, self.all_faces = mc_dropout, tta, all_faces

    @classmethod
    def from_ids(cls, model_ids: Sequence[str], root: Path | None = None, **kw) -> "Pipeline":
        from zoo.registry import load

        return cls({m: load(m, root) for m in model_ids}, **kw)

    def faces_of(self, rgb: np.ndarray, name: str = "") -> list[FaceRow]:
        """The face rows of one RGB photo with their canonical crops (no predictions yet)."""
        faces = self.faces.detect(rgb)
        if not faces:
            return [FaceRow(name, 0, False, 0, reason="no face found: predicted on the whole image (fallback crop)",
                            crop=fallback_crop(rgb, self.faces.size))]
        keep = faces if self.all_faces else faces[:1]
        return [FaceRow(name, i, True, len(faces), tuple(round(v, 1) for v in f.box), round(f.score, 3),
                        crop=self.faces.align(rgb, f), detected=f) for i, f in enumerate(keep)]

    def predict_rgb(self, rgb: np.ndarray, name: str = "") -> list[FaceRow]:
        t0 = time.perf_counter()
        rows = self.faces_of(rgb, name)
        crops = np.stack([r.crop for r in rows])
        for mid, p in self.predictors.items():
            try:
                out = predict_crops(p, crops, self.mc_dropout, self.tta)
            except Exception as e:  # one broken model must not hide the others' answers
                for r in rows:
                    r.predictions[mid] = {"error": f"{type(e).__name__}: {e}"}
                continue
            for i, r in enumerate(rows):
                r.predictions[mid] = _summary(out, i)
        rows[0].seconds = time.perf_counter() - t0
        return rows

    def predict_photos(self, photos: Iterable[str | Path | np.ndarray], progress: bool = False) -> list[FaceRow]:
        """One row per face of every photo (paths or RGB uint8 arrays); unusable files get a row with the reason."""
        from tqdm import tqdm

        from zoo.photos import PhotoError, read_photo

        photos = list(photos)
        rows: list[FaceRow] = []
        for k, item in enumerate(tqdm(photos, unit="photo", desc="predict", disable=not progress)):
            if isinstance(item, np.ndarray):
                rows += self.predict_rgb(item, f"array{k}")
                continue
            name = str(item)
            try:
                rgb = read_photo(item).rgb
            except PhotoError as e:
                rows.append(FaceRow(name, 0, False, 0, reason=str(e)))
                continue
            except OSError as e:
                rows.append(FaceRow(name, 0, False, 0, reason=f"unreadable: {e.strerror or e}"))
                continue
            rows += self.predict_rgb(rgb, name)
        return rows


def photo_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Files named on the command line, and every file below named folders (sorted; hidden files skipped)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and not any(s.startswith(".") for s in
                                                                             f.relative_to(p).parts))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out
