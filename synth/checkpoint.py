"""Resumable generator checkpoints: `weights.safetensors` (every module, incl. the EMA copy), `state.pt` (step,
optimiser and RNG state; torch.save, loaded with weights_only=True) and `generator.json` (config, provenance).

Generator weights are not committed by default: they live in `cache_dir()/synth/<id>/checkpoint/`, or in
`artifacts_dir()/synth/<id>/checkpoint/` with `--ship`. A checkpoint is written as a whole folder and swapped in by
rename, so a kill at any moment leaves either the previous or the new checkpoint complete, never a mix.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from zoo.paths import artifacts_dir, cache_dir

WEIGHTS, STATE, META = "weights.safetensors", "state.pt", "generator.json"


def synth_dir(gen_id: str, shipped: bool = False) -> Path:
    """`artifacts/synth/<id>/` (small committed outputs: summary, fidelity, grid) or `cache/synth/<id>/`."""
    return (artifacts_dir() if shipped else cache_dir()) / "synth" / gen_id


def portable(path: Path) -> str:
    """A checkpoint folder as `cache/…` or `artifacts/…`: committed records never carry this machine's paths."""
    for label, base in (("artifacts", artifacts_dir()), ("cache", cache_dir())):
        try:
            return f"{label}/{Path(path).resolve().relative_to(base.resolve()).as_posix()}"
        except ValueError:
            continue
    return Path(path).name


def _complete(d: Path) -> bool:
    return all((d / f).is_file() for f in (WEIGHTS, STATE, META))


def _candidates(gen_id: str) -> list[Path]:
    out = []
    for shipped in (True, False):
        base = synth_dir(gen_id, shipped)
        # `checkpoint.old` only survives a kill between the two renames of a swap.
        for d in (base / "checkpoint", base / "checkpoint.old"):
            if _complete(d):
                out.append(d)
                break
    return out


def find_checkpoint(gen_id: str) -> Path | None:
    """The most advanced complete checkpoint of a generator, shipped or cached."""
    found = _candidates(gen_id)
    if not found:
        return None
    return max(found, key=lambda d: json.loads((d / META).read_text()).get("step", 0))


def save_checkpoint(gen_id: str, shipped: bool, modules: dict[str, torch.nn.Module], state: dict, meta: dict) -> Path:
    base = synth_dir(gen_id, shipped)
    base.mkdir(parents=True, exist_ok=True)
    final, tmp, old = base / "checkpoint", base / "checkpoint.tmp", base / "checkpoint.old"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors = {f"{name}.{k}": v.detach().cpu().contiguous() for name, m in modules.items()
               for k, v in m.state_dict().items()}
    save_file(tensors, str(tmp / WEIGHTS), metadata={"step": str(meta.get("step", 0))})
    torch.save(state, tmp / STATE)
    (tmp / META).write_text(json.dumps(meta, indent=1, default=str))
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], device: torch.device | str = "cpu",
                    only: tuple[str, ...] | None = None) -> tuple[dict, dict]:
    """Load weights into `modules` (all, or the names in `only`); returns (state, meta)."""
    tensors = load_file(str(path / WEIGHTS), device=str(device))
    for name, m in modules.items():
        if only is not None and name not in only:
            continue
        prefix = f"{name}."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not sd:
            raise KeyError(f"checkpoint {path} has no weights for {name!r}")
        m.load_state_dict(sd)
    state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    return state, json.loads((path / META).read_text())
