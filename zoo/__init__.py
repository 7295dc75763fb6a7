"""Age and gender model zoo: registries of backbones and formulations, training, and the inference API.

    import zoo
    zoo.list_models()                       # registered model ids
    zoo.load(model_id).predict(images)      # images: uint8 [B, H, W, 3]
"""
from __future__ import annotations


def list_models() -> list[str]:
    from zoo.registry import list_runs

    return [r["id"] for r in list_runs()]


def load(model_id: str):
    from zoo.registry import load as _load

    return _load(model_id)
