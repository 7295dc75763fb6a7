"""AdaBN (Li et al. 2016): adapt a trained network to a new domain by re-estimating BatchNorm statistics on the
target's unlabelled images. Only running means/variances change; every learned weight stays as trained, so the
adapted run's checkpoint holds only those statistics and loads on top of its parent's.

On the network's own training split this is BatchNorm recalibration: statistics gathered during training describe
augmented images (and, with weight EMA, an average of buffers along the trajectory), not the clean images it sees
at test time. Measured on UTKFace val (EMA Lite0, 128 px): MAE 5.04 -> 4.95, gender 92.6 -> 92.8 %."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from zoo.data.cache import load_images
from zoo.data.manifest import load_manifest
from zoo.evaluate import registry_metrics
from zoo.inference import NetworkPredictor, to_batch
from zoo.paths import runs_dir
from zoo.provenance import git_commit
from zoo.registry import build_network, get_run, input_framing, write_run
from zoo.runs import RunRecord


CHECKPOINT = "bn_stats.safetensors"
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def bn_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """The BatchNorm buffers of a network (fp32: statistics are tiny and variances lose precision in fp16)."""
    return {k: v.contiguous() for k, v in model.state_dict().items() if k.endswith(BN_BUFFERS)}


@torch.no_grad()
def reestimate_bn(model: nn.Module, images: np.ndarray, img_size: int, batch_size: int = 128) -> nn.Module:
    """Reset every BatchNorm's running statistics and recompute them as a cumulative average over `images`."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError("model has no BatchNorm layers: AdaBN does not apply")
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every target image counts equally
        bn.train()
    for i in range(0, len(images), batch_size):
        model(to_batch(images[i:i + batch_size], img_size))
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def adapt(model_id: str, dataset: str, split: str = "train", root: Path | None = None) -> dict:
    """Register `<model_id>-adabn-<dataset>`: the parent with BN statistics from the target's `split` images."""
    root = root or runs_dir()
    parent = get_run(model_id, root)
    if parent.kind != "single":
        raise ValueError(f"AdaBN adapts single networks, {model_id} is {parent.kind!r}")
    new_id = f"{model_id}-adabn-{dataset}"
    out = root / new_id
    if (out / "run.json").exists():
        return RunRecord.load(out).to_dict()
    size = parent.preprocessing(lambda m: get_run(m, root)).img_size
    m = load_manifest(dataset)
    images = load_images(m, size, framing=input_framing(parent, dataset, root))
    idx = np.flatnonzero(m.frame["split"].to_numpy() == split)
    model = reestimate_bn(build_network(parent, root), images[idx], size)
    out.mkdir(parents=True, exist_ok=True)
    save_file(bn_statistics(model), str(out / CHECKPOINT))
    how = "BN recalibrated" if dataset == parent.data["dataset"] else f"AdaBN({dataset})"
    record = {"params": parent.params, "flops": parent.flops, "infer_img_s": parent.infer_img_s,
              "config": parent.config, "id": new_id,
              "kind": "adapted", "parent": model_id, "name": f"{parent.display_name} + {how}",
              "data": {**parent.data, "adapted_to": dataset, "adapt_split": split},
              "checkpoint": CHECKPOINT, "commit": git_commit(),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    record["metrics"] = registry_metrics(NetworkPredictor(model, size, new_id, record), dataset)
    write_run(record, root)
    return record
