"""Age and gender model zoo: registries of backbones and formulations, training, and the inference API.

    import zoo
    zoo.list_models()                       # registered model ids
    zoo.load(model_id).predict(images)      # images: uint8 [B, H, W, 3] face crops
    zoo.load(model_id).predict_photos(["photo.jpg"])   # any photos: faces found and aligned first
    zoo.Pipeline.from_ids([...]).predict_photos(paths)  # several models, one row per face
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoo.predictor import Predictor


def list_models() -> list[str]:
    from zoo.registry import list_runs

    return [r.id for r in list_runs()]


def load(model_id: str, runtime: str = "eager") -> Predictor:
    """A registered model, or an external peer (`peer:<name>`, `zoo.peers`), as a predictor (`zoo.predictor.
    Predictor`): `.predict(crops)`; registered models also `.predict_photos(photos)`. `runtime`: eager | onnx |
    compile | auto (zoo.export); peers run their own way."""
    if model_id.startswith("peer:"):
        from zoo.peers import load_peer

        return load_peer(model_id)
    from zoo.registry import load as _load

    return _load(model_id, runtime=runtime)


def __getattr__(name: str):
    """`zoo.Pipeline`, imported on first use: `import zoo.paths` must stay light (no torch) for readers and CLIs."""
    if name == "Pipeline":
        from zoo.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
