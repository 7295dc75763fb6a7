"""Synthetic faces from a user's LOCAL pretrained diffusers text-to-image pipeline, prompted per age and gender.

Only a folder on disk written by `save_pretrained` is accepted (never a hub id: nothing is downloaded), and it is
loaded with `local_files_only=True`. Custom pipeline code inside the folder is never executed; the pipeline class
must be a diffusers class (e.g. StableDiffusionPipeline, which needs `transformers` installed) or one registered
in `LOCAL_PIPELINES` (the tests register their offline stand-in, tests/synth/tinypipe.py, there).
"""
from __future__ import annotations

import importlib.util
import inspect
import json
from pathlib import Path

import numpy as np
import torch

from zoo.data.cache import square_resize

# Pipeline classes defined in installed Python code (never in the folder) that a folder's model_index.json may name,
# besides diffusers' own: class name -> class. None ship with the product.
LOCAL_PIPELINES: dict[str, type] = {}

PROMPT_TEMPLATE = ("portrait photo of a {age}-year-old {person}, face, close-up, centered, looking at the camera, "
                   "natural light, high detail")
NEGATIVE_PROMPT = ("cartoon, drawing, illustration, painting, 3d render, multiple people, text, watermark, blurry, "
                   "deformed")


def person_word(age: float, gender: int) -> str:
    """'woman', 'teenage boy', 'baby girl', …: text-to-image models follow the noun more than the number."""
    male = int(gender) == 0
    if age < 3:
        return "baby boy" if male else "baby girl"
    if age < 13:
        return "boy" if male else "girl"
    if age < 18:
        return "teenage boy" if male else "teenage girl"
    return "man" if male else "woman"


def prompt_for(age: float, gender: int, template: str = PROMPT_TEMPLATE) -> str:
    return template.format(age=int(age), person=person_word(age, gender))


def validate_pipeline_dir(path: str | Path) -> Path:
    """The resolved local folder, or a clear error (missing folder, hub id, not a diffusers pipeline folder)."""
    p = Path(path).expanduser()
    if not p.exists():
        hint = (" It looks like a hub id: only local folders are supported (nothing is downloaded); save the "
                "pipeline with `pipe.save_pretrained(DIR)` on a machine that has it, then pass DIR."
                if str(path).count("/") == 1 and not str(path).startswith((".", "/", "~")) else "")
        raise FileNotFoundError(f"--from-pipeline {path}: no such local directory.{hint}")
    if not p.is_dir():
        raise NotADirectoryError(f"--from-pipeline {path}: not a directory (expected a diffusers pipeline folder)")
    if not (p / "model_index.json").is_file():
        raise FileNotFoundError(f"--from-pipeline {path}: not a diffusers pipeline folder (no model_index.json; "
                                f"write one with `pipeline.save_pretrained(DIR)`)")
    return p.resolve()


def _pipeline_class(index: dict):
    """The class that will load the folder: diffusers' own, or one of LOCAL_PIPELINES. Never remote code."""
    import diffusers

    name = index.get("_class_name")
    if isinstance(name, (list, tuple)):
        raise ValueError(f"pipeline folder names custom pipeline code {name}; running code from a model folder is "
                         f"not supported")
    for comp, spec in index.items():
        if comp.startswith("_") or not isinstance(spec, list) or not spec or spec[0] is None:
            continue
        lib = spec[0]
        if lib in ("transformers", "tokenizers") and importlib.util.find_spec(lib) is None:
            raise RuntimeError(f"this pipeline's {comp!r} is a {lib} {spec[1]}, but the `{lib}` package is not "
                               f"installed; install it (`pip install transformers`) to sample from this pipeline")
    if name in LOCAL_PIPELINES:
        return LOCAL_PIPELINES[name]
    cls = getattr(diffusers, str(name), None)
    if getattr(cls, "_backends", None):  # diffusers' dummy placeholder for a class whose backend is missing
        raise RuntimeError(f"{name} needs the packages {cls._backends}; install the missing ones to use it")
    if cls is None or not isinstance(cls, type) or not issubclass(cls, diffusers.DiffusionPipeline):
        raise ValueError(f"unknown pipeline class {name!r} in model_index.json (not a diffusers pipeline)")
    return diffusers.DiffusionPipeline


def load_pipeline(path: str | Path, device: str = "auto"):
    """Load a local pipeline folder offline (`local_files_only=True`) onto `device`."""
    p = validate_pipeline_dir(path)
    index = json.loads((p / "model_index.json").read_text())
    cls = _pipeline_class(index)  # DiffusionPipeline itself for diffusers classes (it dispatches on _class_name)
    pipe = cls.from_pretrained(str(p), local_files_only=True)
    dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_fingerprint(path: Path) -> dict:
    """Provenance of a pipeline folder: its model_index and the byte size of its weight and config files (cheap;
    hashing gigabytes of weights on every sample run is not)."""
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in (".safetensors", ".bin", ".json"))
    return {"path": str(path), "model_index": json.loads((path / "model_index.json").read_text()),
            "files": {f.relative_to(path).as_posix(): f.stat().st_size for f in files}}


def generate(pipe, ages: np.ndarray, genders: np.ndarray, generator: torch.Generator, size: int,
             steps: int = 30, guidance: float = 7.5, resolution: int | None = None,
             template: str = PROMPT_TEMPLATE, negative: str = NEGATIVE_PROMPT) -> np.ndarray:
    """One batch of images (uint8 [B, size, size, 3]) for the given labels. Only the keyword arguments the
    pipeline's `__call__` accepts are passed, so non-SD pipelines with fewer options work too."""
    prompts = [prompt_for(a, g, template) for a, g in zip(ages, genders)]
    accepted = inspect.signature(pipe.__call__).parameters
    kw = {"prompt": prompts, "num_inference_steps": steps, "guidance_scale": guidance, "generator": generator,
          "output_type": "np", "negative_prompt": [negative] * len(prompts) if negative else None}
    if resolution:
        kw.update(height=resolution, width=resolution)
    kw = {k: v for k, v in kw.items() if k in accepted and v is not None}
    images = pipe(**kw).images
    if isinstance(images, list):  # PIL images
        images = np.stack([np.asarray(im.convert("RGB")) for im in images])
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    return np.stack([square_resize(im, size) for im in images])
