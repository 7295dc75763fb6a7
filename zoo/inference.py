"""Inference API used by the bench and the dashboard: `zoo.load(model_id).predict(images, mc_dropout=N, tta=...)`.

Every predictor returns the same dict of [B] float arrays (NaN where a quantity does not apply):
  age              mean predicted age in years
  sigma_aleatoric  the formulation's own predictive std (NLL / distribution heads), RMS over passes and views
  sigma_epistemic  MC-Dropout spread (std over stochastic passes), or the spread across ensemble members
  sigma_tta        spread of the age over test-time-augmentation views
  gender_prob      probability of "female"
and, for a model with attribute heads (zoo.attributes), one more key per attribute in `predictor.attributes` order:
  attr:NAME        probability that the attribute (or composite target) holds, averaged over MC passes and views
`predictor.attributes` is () for a model without; `predictor.targets` maps composite names to their expressions.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.predictor import ModesPredictor, Predictor  # noqa: F401  (the interface every predictor here satisfies)

OUTPUTS = ("age", "sigma_aleatoric", "sigma_epistemic", "sigma_tta", "gender_prob")
ATTR_PREFIX = "attr:"  # zoo.attributes.ATTR_PREFIX: an attribute's output key (its task name)
TTA_MODES = ("flip", "flip+crop")
# How many views each mode uses. Each mode's views are a prefix of the next one's ([x, mirror, crop, crop's mirror]),
# so one pass over the widest mode's views serves every narrower mode (predict_modes).
TTA_VIEWS = {None: 1, "flip": 2, "flip+crop": 4}


def to_batch(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [B, H, W, 3] / [H, W, 3] arrays or float [B, 3, H, W] tensors in [0, 1] -> float [B, 3, size, size]."""
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [B, H, W, 3], got shape {images.shape}")
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    else:
        x = images.float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous(memory_format=torch.channels_last)


def tta_views(x: torch.Tensor, mode: str | None) -> list[torch.Tensor]:
    """The TTA_VIEWS[mode] views of a batch, in the order whose prefixes are the narrower modes."""
    if mode is None:
        return [x]
    views = [x, x.flip(-1)]
    if mode == "flip+crop":
        s = x.shape[-1]
        m = max(1, round(s * 0.05))  # a 90 % centre crop, resized back
        crop = F.interpolate(x[..., m:s - m, m:s - m], size=(s, s), mode="bilinear", align_corners=False)
        views += [crop, crop.flip(-1)]
    return views


def set_mc_dropout(model: nn.Module, active: bool) -> None:
    """Dropout layers sample (MC-Dropout) while BatchNorm stays in eval mode."""
    model.eval()
    if active:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.train()


def predict_photos(predictor: Predictor, photos, detector: str = "dlib_hog", **kw) -> list:
    """Any photos (paths or RGB arrays) -> one `zoo.pipeline.FaceRow` per face, predicted by `predictor`."""
    from zoo.pipeline import Pipeline

    return Pipeline({predictor.id or "model": predictor}, detector=detector, **kw).predict_photos(photos)


class NetworkPredictor:
    """A single trained network (`zoo.model.AgeGenderModel`) with its decoding."""

    def __init__(self, model: nn.Module, img_size: int, model_id: str = "", info: dict | None = None,
                 runner: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None, runtime: str = "eager"):
        self.model = model.eval()
        self.img_size = img_size
        self.id = model_id
        self.info = info or {}
        # `runner`: a faster eval-mode forward of the same network (ONNX Runtime, torch.compile: zoo.export) giving
        # the heads' outputs and the backbone features, used on CPU tensors; MC-Dropout samples its head passes from
        # those features in torch. None: eager. Backbones with their own dropout (seed_cnn) run MC passes eager.
        self.runner, self.runtime = runner, runtime if runner is not None else "eager"
        # Dropout inside the backbone (seed_cnn's dense layer) means each MC pass must rerun the whole network;
        # otherwise only the heads see dropout and one backbone pass per view serves every MC pass.
        self._full_mc = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.backbone.modules())
        self.attributes: tuple[str, ...] = tuple(getattr(model, "attributes", ()))
        self.targets: dict[str, str] = dict((self.info.get("config") or {}).get("targets") or {})

    def _decode(self, out: dict[str, torch.Tensor], b: int) -> dict[str, torch.Tensor]:
        """Raw head outputs -> age, sigma, gender and `attr:NAME` probabilities, each [B]."""
        nan = torch.full((b,), float("nan"))
        age, sig = self.model.age.decode(out["age"]) if "age" in out else (nan, nan)
        gender = torch.sigmoid(out["gender"].float()) if "gender" in out else nan
        d = {"age": age.float(), "sigma": sig.float(), "gender": gender}
        if self.attributes:
            p = torch.sigmoid(out["attr"].float())
            d.update({ATTR_PREFIX + name: p[:, k] for k, name in enumerate(self.attributes)})
        return d

    def _stack(self, views: list[list[dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
        """Per view, per pass decoded outputs -> each key stacked [passes, views, B]."""
        return {k: torch.stack([torch.stack([o[k] for o in passes]) for passes in views], 1) for k in views[0][0]}

    @torch.inference_mode()  # no autograd bookkeeping at all (inference only)
    def _passes(self, x: torch.Tensor, mc_dropout: int, tta: str | None) -> dict[str, torch.Tensor]:
        """Stacked outputs [passes, views, B]."""
        m, n, sample = self.model, max(1, mc_dropout), mc_dropout > 0
        full = sample and self._full_mc
        if self.runner is not None and x.device.type == "cpu" and not full:
            return self._runner_passes(x, n, sample, tta)
        if full:  # otherwise the model stays as __init__ left it (eval): no per-batch walk over its modules
            set_mc_dropout(m, True)
        views = []  # per view: per pass decoded outputs
        for v in tta_views(x, tta):
            f = None if full else m.features(v)
            outs = [m.heads(m.features(v) if full else f, sample_dropout=sample) for _ in range(n)]
            views.append([self._decode(o, v.shape[0]) for o in outs])
        if full:
            set_mc_dropout(m, False)
        return self._stack(views)

    def _runner_passes(self, x: torch.Tensor, n: int, sample: bool, tta: str | None) -> dict[str, torch.Tensor]:
        """`_passes` with the runner computing the deterministic part: the heads' outputs, or (MC-Dropout, when
        dropout is only before the heads) the backbone features that torch then samples `n` head passes from."""
        views = []
        for v in tta_views(x, tta):
            r = self.runner(v)
            if self.attributes and "attr" not in r and not sample:  # an export without the attribute head: from
                r = {**r, "attr": self.model.attr(r["features"])}  # the features it reads (eval: no dropout)
            outs = [self.model.heads(r["features"], sample_dropout=True) for _ in range(n)] if sample else [r]
            views.append([self._decode(o, v.shape[0]) for o in outs])
        return self._stack(views)

    def predict(self, images: np.ndarray | torch.Tensor, mc_dropout: int = 0, tta: str | None = None,
                batch_size: int = 256) -> dict[str, np.ndarray]:
        return self.predict_modes(images, (tta,), mc_dropout, batch_size)[tta]

    predict_photos = predict_photos

    def predict_modes(self, images: np.ndarray | torch.Tensor, modes: Sequence[str | None], mc_dropout: int = 0,
                      batch_size: int = 256) -> dict[str | None, dict[str, np.ndarray]]:
        """{mode: predictions} for several TTA modes (None = off) from one pass over the widest mode's views."""
        return predict_by_mode(lambda chunk, n, tta: self._passes(to_batch(chunk, self.img_size), n, tta),
                               images, modes, mc_dropout, batch_size)

    @torch.inference_mode()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """float [B, 3, S, S] batch -> the backbone features the heads read [B, D] (eval mode: no dropout, no TTA);
        the runner's own output on CPU tensors."""
        if self.runner is not None and x.device.type == "cpu":
            return self.runner(x)["features"]
        return self.model.features(x)

    def embed(self, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """The penultimate features (what the heads read) of the plain view: float32 [B, D] (the bench's embedding
        map, `bench.embedding`). One deterministic pass, whatever the inference mode of the predictions."""
        return embed_batches(lambda chunk: self.features(to_batch(chunk, self.img_size)), images, batch_size)


def embed_batches(features: Callable[[np.ndarray | torch.Tensor], torch.Tensor], images: np.ndarray | torch.Tensor,
                  batch_size: int) -> np.ndarray:
    """`features(chunk)` over `images` in batches -> float32 numpy [B, D]."""
    if images.ndim == 3:
        images = images[None]
    parts = [features(images[i:i + batch_size]).float().flatten(1).cpu().numpy()
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros((0, 0), np.float32)


def predict_by_mode(passes: Callable[..., dict[str, torch.Tensor]], images: np.ndarray | torch.Tensor,
                    modes: Sequence[str | None], mc_dropout: int, batch_size: int,
                    ) -> dict[str | None, dict[str, np.ndarray]]:
    """Batch `images`, run `passes(chunk, mc_dropout, widest mode)` -> CPU outputs [passes, views, B], and reduce
    them to OUTPUTS (and `attr:NAME` probabilities) for each mode over that mode's views (a prefix of the widest
    mode's)."""
    widest = max(_check_modes(modes), key=TTA_VIEWS.get)
    if images.ndim == 3:
        images = images[None]
    parts: dict = {m: [] for m in modes}
    for i in range(0, len(images), batch_size):
        r = passes(images[i:i + batch_size], mc_dropout, widest)
        for m in modes:
            parts[m].append(_summarise({k: v[:, :TTA_VIEWS[m]] for k, v in r.items()}, mc_dropout, m))
    return {m: {k: torch.cat([p[k] for p in parts[m]]).numpy() for k in parts[m][0]} if parts[m] else
            {k: np.zeros(0, np.float32) for k in OUTPUTS} for m in modes}


def _check_modes(modes: Sequence[str | None]) -> Sequence[str | None]:
    bad = [m for m in modes if m not in TTA_VIEWS]
    if bad or not modes:
        raise ValueError(f"unknown tta {bad or modes!r}; choose from {TTA_MODES} or None")
    return modes


def _summarise(r: dict[str, torch.Tensor], mc_dropout: int, tta: str | None) -> dict[str, torch.Tensor]:
    """[passes, views, B] outputs -> the OUTPUTS of one batch."""
    age = r["age"]
    nan = torch.full_like(age[0, 0], float("nan"))
    return {
        "age": age.mean(dim=(0, 1)),
        "sigma_aleatoric": r["sigma"].pow(2).mean(dim=(0, 1)).sqrt(),
        "sigma_epistemic": age.mean(1).std(0, unbiased=False) if mc_dropout > 0 else nan,
        "sigma_tta": age.mean(0).std(0, unbiased=False) if tta else nan,
        "gender_prob": r["gender"].mean(dim=(0, 1)),
        **{k: v.mean(dim=(0, 1)) for k, v in r.items() if k.startswith(ATTR_PREFIX)},  # probabilities averaged
    }


class EnsemblePredictor:
    """Members' mean; epistemic sigma is the spread across members (combined with each member's MC spread). An
    attribute's probability is the mean of the members that predict it."""

    def __init__(self, members: Sequence[ModesPredictor], model_id: str = "", info: dict | None = None):
        from zoo.attributes import predictor_attributes, predictor_targets

        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.img_size = max(m.img_size for m in members)
        self.id = model_id
        self.info = info or {}
        self.attributes = tuple(dict.fromkeys(a for m in self.members for a in predictor_attributes(m)))
        self.targets: dict[str, str] = {}
        for m in self.members:  # one name, one meaning: members may not define a target differently
            for name, expr in predictor_targets(m).items():
                if self.targets.setdefault(name, expr) != expr:
                    raise ValueError(f"ensemble members define target {name!r} differently: "
                                     f"{self.targets[name]!r} vs {expr!r}")

    predict_photos = predict_photos

    def predict(self, images: np.ndarray | torch.Tensor, mc_dropout: int = 0, tta: str | None = None,
                batch_size: int = 256) -> dict[str, np.ndarray]:
        return self.predict_modes(images, (tta,), mc_dropout, batch_size)[tta]

    def predict_modes(self, images: np.ndarray | torch.Tensor, modes: Sequence[str | None], mc_dropout: int = 0,
                      batch_size: int = 256) -> dict[str | None, dict[str, np.ndarray]]:
        outs = [m.predict_modes(images, modes, mc_dropout, batch_size) for m in self.members]
        return {mode: _combine([o[mode] for o in outs]) for mode in modes}

    def embed(self, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Members' features concatenated, each member's block L2-normalised per image: float32 [B, sum D].
        Concatenated, not averaged: members differ in width (resnet18 512, Lite0 1280) and even at equal width their
        axes are unrelated, so a mean would mix incomparable coordinates; normalised blocks weigh every member
        equally, and a squared distance is the sum of the members' own (cosine-like) squared distances."""
        blocks = []
        for m in self.members:
            f = m.embed(images, batch_size)
            blocks.append(f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12))
        return np.concatenate(blocks, axis=1).astype(np.float32, copy=False)


def _combine(outs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Members' predictions of the same images -> the ensemble's."""
    stack = {k: np.stack([o[k] for o in outs]) for k in OUTPUTS}
    within = np.nan_to_num(stack["sigma_epistemic"]) ** 2
    return {
        "age": stack["age"].mean(0),
        "sigma_aleatoric": np.sqrt(np.mean(stack["sigma_aleatoric"] ** 2, axis=0)),
        "sigma_epistemic": np.sqrt(stack["age"].var(0) + within.mean(0)),
        "sigma_tta": stack["sigma_tta"].mean(0),
        "gender_prob": stack["gender_prob"].mean(0),
        **{k: np.mean([o[k] for o in outs if k in o], axis=0)
           for k in dict.fromkeys(k for o in outs for k in o if k.startswith(ATTR_PREFIX))},
    }
