"""What a predictor is: the one interface the bench, the face pipeline, the dashboard and the CLIs rely on.

Every kind satisfies it: a single network (`zoo.inference.NetworkPredictor`, eager, torch.compile or ONNX Runtime
underneath), an ensemble (`zoo.inference.EnsemblePredictor`), a network placed on a device (`zoo.device.
DevicePredictor`) and an external peer (`zoo.peers`). `zoo.load(model_id)` returns one.

Optional members some predictors add, which callers reach with `getattr`: `framing` (a peer that finds and aligns
faces itself: which images it takes), `predict_modes` (several TTA modes from one pass), `predict_photos` (whole
photos through `zoo.pipeline`), `model_row()` (a peer's row of the bench's `models` table), `embed(images)`
(the penultimate features, float32 [B, D], for the bench's embedding map; zoo networks and ensembles, not peers),
`attributes` and `targets` (attribute heads, `attr:NAME` outputs of predict(), and the composite targets they stand
for; networks, devices and ensembles).
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Predictor(Protocol):
    """Face crops in, per-image predictions out.

    `predict(images)`: uint8 [B, H, W, 3] (or one [H, W, 3]) face crops, resized to `img_size` by the predictor ->
    {"age", "sigma_aleatoric", "sigma_epistemic", "sigma_tta", "gender_prob"}, each float [B] (NaN where the
    predictor has no such output). `mc_dropout`: stochastic passes (0 = off; a predictor without dropout ignores
    it); `tta`: None, "flip" or "flip+crop" (`zoo.modes`)."""

    id: str  # the registry id ("" for an unregistered network), or "peer:<name>"
    img_size: int  # the input resolution the crops are resized to
    info: Mapping[str, Any]  # the run.json content as a plain dict (RunRecord.to_dict), or a peer's description

    def predict(self, images: np.ndarray, mc_dropout: int = 0, tta: str | None = None,
                batch_size: int = 256) -> dict[str, np.ndarray]: ...


@runtime_checkable
class ModesPredictor(Predictor, Protocol):
    """A predictor that also gives several TTA modes from one pass over the widest mode's views (networks, devices,
    ensembles; what an ensemble's members must be)."""

    def predict_modes(self, images: np.ndarray, modes: Sequence[str | None], mc_dropout: int = 0,
                      batch_size: int = 256) -> dict[str | None, dict[str, np.ndarray]]: ...
