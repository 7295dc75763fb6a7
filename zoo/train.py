"""Training: one config → one registered run, resumable after a crash or `kill -9`.

Each epoch ends with an atomic `state.pt` (model, optimiser, schedule, RNG, history), so re-running the same command
continues from the last finished epoch. The best epoch is kept as fp16 safetensors; on completion the run is evaluated
on the test split and `run.json` is written, which is what makes it part of the registry.

Model selection, early stopping and the plateau schedule follow one val score: the MAE when the model has an age head
and the primary dataset's val split has ages; else gender accuracy; else the mean balanced accuracy of the attribute
heads (at 0.5); or the config's `select`, on another dataset's val split with SCORE@DATASET. Attribute heads
(`attr:NAME` tasks) then get their decision thresholds chosen on val (every dataset's val split that has their labels)
and reported on test: run.json `metrics["attributes"]`.

Devices: `device` (config or `--device`) is auto | cpu | cuda | cuda:N. On CUDA the feeder hands over uint8 batches in
pinned memory, copied without blocking and augmented on the GPU, and the step runs under autocast (bf16 where
supported, else fp16 with a grad scaler). On CPU the step is as it always was: the feeder thread augments, fp32.

torchrun: `torchrun --nproc_per_node N -m zoo train --config …` trains with DistributedDataParallel (gloo on CPU, nccl
on GPU). Every rank draws the same global order from the same seeded generator and takes a strided slice of each
global batch (batch_size / N images), so the global batch and the data order are the single-process run's. Rank 0
alone evaluates (its val metrics are broadcast, so early stopping and the plateau schedule decide alike on every
rank) and writes checkpoints, history and run.json; every rank waits for its per-epoch state, and a restarted group
(`--max-restarts`) resumes from it.
"""
from __future__ import annotations

import atexit
import copy
import json
import math
import os
import platform
import queue
import shutil
import threading
import time
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from zoo.attributes import attribute_matrix, task_attributes
from zoo.augment import augment_batch
from zoo.balance import GROUP_NAMES, balance
from zoo.config import TrainConfig, parse_select, parse_source
from zoo.data.cache import load_images, to_tensor
from zoo.data.manifest import Manifest, extras_label, load_manifest
from zoo.data.readers import RACES
from zoo.runs import RunRecord
from zoo.evaluate import TTA_KEYS, attribute_report, attribute_scores, by_record_key
from zoo.gender import create_gender_loss
from zoo.inference import NetworkPredictor, predict_by_mode, to_batch
from zoo.metrics import all_metrics
from zoo.model import AgeGenderModel, count_flops
from zoo.optim import OPTIMIZERS, SCHEDULES, frozen_param_names
from zoo.paths import runs_dir
from zoo.provenance import git_commit
from zoo.registry import write_run


@dataclass
class TrainData:
    images: np.ndarray  # uint8 [N, S, S, 3]
    age: np.ndarray  # float [N]
    gender: np.ndarray  # float [N], NaN unknown
    race: np.ndarray  # int [N], -1 unknown
    train: np.ndarray  # indices
    val: np.ndarray
    test: np.ndarray
    data_hash: str
    young: np.ndarray | None = None  # float [N], the `Young` attribute where a dataset has it (CelebA-HQ), else NaN
    other_tests: dict[str, np.ndarray] = field(default_factory=dict)  # test split of each non-primary dataset
    probs: np.ndarray | None = None  # per train row: sampling probability from the dataset weights (None: uniform)
    attrs: np.ndarray | None = None  # float [N, K]: labels of the attribute tasks (model.attributes order), NaN unknown
    groups: np.ndarray | None = None  # float [N]: group codes of `group_balance`'s column (zoo.balance), NaN unknown
    other_vals: dict[str, np.ndarray] = field(default_factory=dict)  # val split of each non-primary dataset


def _labels(m: Manifest) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = m.frame
    race_idx = {r: i for i, r in enumerate(RACES)}
    return (f["age"].to_numpy(float), f["gender"].astype("float").to_numpy(),
            f["race"].map(race_idx).fillna(-1).astype(int).to_numpy())


def _subset(idx: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    if fraction >= 1:
        return idx
    if not 0 < fraction:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(idx)[: max(1, round(len(idx) * fraction))])


def data_hash(cfg: TrainConfig) -> str:
    """Identity of the training data, from manifests only (no image decoding), so finished runs skip fast. Further
    datasets of the mix add their hashes (their weights and framings are in the config's identity)."""
    kind, _, synth_id = parse_source(cfg.source)
    real = load_manifest(cfg.dataset).hash
    h = real if kind == "real" else f"{real}+{load_manifest(f'synth_{synth_id}').hash}"
    return "+".join([h] + [f"{d['name']}:{load_manifest(d['name']).hash}" for d in cfg.dataset_mix()[1:]])


def prepare_data(cfg: TrainConfig, progress: bool = True) -> TrainData:
    """Real data (val/test always real); `source` swaps or mixes the training images with a synthetic dataset;
    `datasets` adds the train splits of further datasets (their test splits are evaluated too)."""
    mix = cfg.dataset_mix()
    real = load_manifest(cfg.dataset)
    manifests = [real] + [load_manifest(d["name"]) for d in mix[1:]]
    labels = _attribute_labels(cfg, manifests)  # before any decoding: an unknown attribute name fails fast
    images = load_images(real, cfg.img_size, progress=progress, framing=mix[0]["framing"])
    age, gender, race = _labels(real)
    lab = labels[0]
    young = extras_label(real.frame, "Young")
    split = real.frame["split"].to_numpy()
    train = _subset(np.flatnonzero(split == "train"), cfg.train_fraction, cfg.seed)
    val, test = np.flatnonzero(split == "val"), np.flatnonzero(split == "test")
    kind, frac, synth_id = parse_source(cfg.source)
    if kind != "real":
        syn = load_manifest(f"synth_{synth_id}")
        s_images = load_images(syn, cfg.img_size, progress=progress)
        s_age, s_gender, s_race = _labels(syn)
        n_syn = len(train) if kind == "synth" else round(len(train) * frac)
        pick = np.random.default_rng(cfg.seed).permutation(len(syn.frame))[:n_syn]
        offset = len(images)
        images = np.concatenate([images, s_images[pick]])
        age, gender, race = (np.concatenate([a, b[pick]]) for a, b in ((age, s_age), (gender, s_gender), (race, s_race)))
        young = np.concatenate([young, np.full(len(pick), np.nan)])
        lab = np.concatenate([lab, np.full((len(pick), lab.shape[1]), np.nan)])
        syn_idx = offset + np.arange(len(pick))
        train = syn_idx if kind == "synth" else np.concatenate([train, syn_idx])
    parts, other_tests, other_vals = [(train, mix[0]["weight"])], {}, {}
    for d, m, mlab in zip(mix[1:], manifests[1:], labels[1:]):
        offset = len(images)
        images = np.concatenate([images, load_images(m, cfg.img_size, progress=progress, framing=d["framing"])])
        a, g, r = _labels(m)
        y = extras_label(m.frame, "Young")
        age, gender, race, young, lab = (np.concatenate(p) for p in ((age, a), (gender, g), (race, r), (young, y),
                                                                     (lab, mlab)))
        s = m.frame["split"].to_numpy()
        parts.append((offset + _subset(np.flatnonzero(s == "train"), cfg.train_fraction, cfg.seed), d["weight"]))
        other_tests[d["name"]] = offset + np.flatnonzero(s == "test")
        other_vals[d["name"]] = offset + np.flatnonzero(s == "val")
    probs = None
    if len(parts) > 1:  # each dataset's share of the draws is its weight, whatever its size
        train = np.concatenate([p for p, _ in parts])
        total = sum(w for _, w in parts)
        probs = np.concatenate([np.full(len(p), w / total / len(p)) for p, w in parts])
    k = len(task_attributes(cfg.tasks))
    column = (cfg.group_balance or {}).get("column")
    groups = (None if column is None else gender if column == "gender" else np.where(race >= 0, race, np.nan)
              if column == "race" else lab[:, k])
    return TrainData(images, age, gender, race, train, val, test, data_hash(cfg), young, other_tests, probs,
                     lab[:, :k] if k else None, groups, other_vals)


def _attribute_labels(cfg: TrainConfig, manifests: list[Manifest]) -> list[np.ndarray]:
    """Per manifest, float [N, K (+1)]: the attribute tasks' labels (and an attribute group column's, last)."""
    names = list(task_attributes(cfg.tasks))
    column = (cfg.group_balance or {}).get("column")
    if column is not None and column not in GROUP_NAMES:
        names.append(column)
    if not names:
        return [np.zeros((len(m.frame), 0)) for m in manifests]
    try:
        return attribute_matrix([m.frame for m in manifests], names, cfg.targets)
    except ValueError as e:
        raise ValueError(f"{' + '.join(m.dataset for m in manifests)}: {e}") from None


# ---- devices and torchrun -------------------------------------------------------------------------------------------
def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) for a plain single-process run."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def resolve_device(name: str, local_rank: int = 0, world: int = 1) -> torch.device:
    """auto | cpu | cuda | cuda:N -> the device this process trains on. `auto` is CUDA when available; under torchrun
    (world > 1) `cuda` / `auto` is the GPU of the process's LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise ValueError(f"device {name}: CUDA is not available on this machine (use device auto or cpu)")
    if world > 1:
        if dev.index is not None:
            raise ValueError(f"device {name}: under torchrun each process trains on the GPU of its LOCAL_RANK; use "
                             f"device cuda or auto (choose GPUs with CUDA_VISIBLE_DEVICES)")
        dev = torch.device("cuda", local_rank)
    elif dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {dev}: this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


def device_name(dev: torch.device) -> str:
    """The hardware's name for run records: the GPU's name, or the CPU's model name."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _init_process_group(dev: torch.device) -> None:
    """Join torchrun's process group once per process: gloo on CPU, nccl on GPU.

    torchrun's c10d rendezvous shares one store across restarts, and the group's keys (each rank's address) are not
    namespaced per restart: a restarted group could read the dead ranks' addresses and fail to connect ("Connection
    refused") or hang (pytorch/pytorch#135712, #167288). So the group's store is prefixed with the restart count."""
    if dist.is_initialized():
        return
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    store, rank, world = next(dist.rendezvous("env://"))
    store = dist.PrefixStore(f"zoo/restart_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", store=store, rank=rank, world_size=world)
    atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _test_kill_hook() -> tuple[int, int, Path] | None:
    """TEST-ONLY (tests/zoo/test_train_distributed.py): ZOO_TEST_KILL="RANK:EPOCH:STEP:MARKER" makes rank RANK exit hard
    (`os._exit(1)`, as a crashed or killed process would) after STEP steps of epoch EPOCH (1-based), once: the MARKER
    file records the kill, so the rank torchrun restarts does not repeat it. Returns (epoch, step, marker) for this
    process, or None."""
    spec = os.environ.get("ZOO_TEST_KILL")
    if not spec:
        return None
    rank, epoch, step, marker = spec.split(":", 3)
    if int(rank) != dist_env()[0] or Path(marker).exists():
        return None
    return int(epoch), int(step), Path(marker)


class _Failed:
    """A worker's exception, handed to the consumer through the queue (a worker never dies silently)."""

    def __init__(self, error: BaseException):
        self.error = error


# Feeder workers still running, with their stop flags. A daemon thread that is inside a torch op when the
# interpreter exits aborts the process ("terminate called without an active exception", exit 134), so every worker
# is stopped and joined at exit, even one whose epoch generator was never closed (still referenced at exit).
_WORKERS: dict[threading.Thread, threading.Event] = {}


@atexit.register
def _stop_workers() -> None:
    for t, stop in list(_WORKERS.items()):
        stop.set()
        t.join(timeout=30)


class BatchFeeder:
    """Yields augmented training batches from the in-memory cache, prepared one batch ahead in a thread.

    `pin`: batches stay uint8 NHWC and go into pinned memory unaugmented, for a non-blocking copy to the GPU, which
    augments them (`Trainer._to_device`). `shard` = (rank, world): every process draws the same global order (same
    seeded generator) and takes the strided slice rank::world of each global batch of `batch_size`.
    `sample_weights`: per-sample weights of every head's loss (group balancing), batch key `sw`; None: none."""

    def __init__(self, data: TrainData, idx: np.ndarray, weights: np.ndarray, gender_weights: np.ndarray,
                 probs: np.ndarray | None, batch_size: int, augment: str, rng: np.random.Generator,
                 pin: bool = False, shard: tuple[int, int] = (0, 1), sample_weights: np.ndarray | None = None):
        self.data, self.idx, self.w, self.gw, self.probs = data, idx, weights, gender_weights, probs
        self.sw = sample_weights
        self.bs, self.augment, self.rng, self.pin, self.shard = batch_size, augment, rng, pin, shard
        if batch_size % shard[1]:
            raise ValueError(f"batch size {batch_size} is not divisible by the {shard[1]} torchrun processes; the "
                             f"global batch is split evenly across them")
        self.steps = max(1, len(idx) // batch_size)

    def _batch(self, pos: np.ndarray) -> dict[str, torch.Tensor]:
        ix = self.idx[pos]
        d = self.data
        b = {"age": torch.from_numpy(d.age[ix]).float(), "gender": torch.from_numpy(d.gender[ix]).float(),
             "race": torch.from_numpy(d.race[ix]).long(), "w": torch.from_numpy(self.w[pos]).float(),
             "gw": torch.from_numpy(self.gw[pos]).float()}
        if self.sw is not None:
            b["sw"] = torch.from_numpy(self.sw[pos]).float()
        if d.attrs is not None:
            b["attr"] = torch.from_numpy(d.attrs[ix]).float()
        if self.pin:
            return {"x": torch.from_numpy(d.images[ix]).pin_memory(), **{k: v.pin_memory() for k, v in b.items()}}
        return {"x": augment_batch(to_tensor(d.images[ix]), self.augment), **b}

    def epoch(self) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch of batches. Stopping early (break, close(), an exception) stops and joins the worker, so no
        thread outlives the epoch."""
        n = self.steps * self.bs
        if self.probs is not None:
            order = self.rng.choice(len(self.idx), size=n, replace=True, p=self.probs)
        else:
            order = self.rng.permutation(len(self.idx))[:n]
        q: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():  # a bounded wait, so a stopped consumer never leaves the worker blocked
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        def work() -> None:
            try:
                rank, world = self.shard
                for s in range(self.steps):
                    if stop.is_set() or not put(self._batch(order[s * self.bs:(s + 1) * self.bs][rank::world])):
                        return
            except BaseException as e:  # noqa: BLE001  (re-raised in the consumer)
                put(_Failed(e))
            finally:
                _WORKERS.pop(threading.current_thread(), None)

        t = threading.Thread(target=work, name="batch-feeder", daemon=True)
        _WORKERS[t] = stop
        t.start()
        try:
            for _ in range(self.steps):
                item = q.get()
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            stop.set()
            t.join()


def _freeze(model: AgeGenderModel, freeze: str) -> list[nn.Module]:
    """Freeze parameters; returns the BatchNorm layers to keep in eval mode (their statistics frozen too)."""
    frozen = frozen_param_names(model.backbone, freeze)  # zoo.optim.FREEZES
    for n, p in model.backbone.named_parameters():
        p.requires_grad_(n not in frozen)
    bns = []
    for name, m in model.backbone.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and any(
                f"{name}.{p}" in frozen for p, _ in m.named_parameters()):
            bns.append(m)
    return bns


class Trainer:
    def __init__(self, cfg: TrainConfig, data: TrainData | None = None, root: Path | None = None,
                 progress: bool = True):
        cfg.validate(data=data is None)  # before any data work: a bad name fails here, not after decoding
        self.rank, self.world, local_rank = dist_env()
        self.device = resolve_device(cfg.device, local_rank, self.world)
        if self.world > 1:
            _init_process_group(self.device)
        self.cfg, self.progress = cfg, progress and self.rank == 0
        git_commit()  # pin the process's commit now, before anything can be committed during the run
        if self.rank > 0:  # rank 0 first: it builds a missing image cache, the others then read it
            self._barrier()
        self.data = data or prepare_data(cfg, self.progress)
        if self.rank == 0:
            self._barrier()
        self.id = cfg.run_id(self.data.data_hash)
        self.dir = (root or runs_dir()) / self.id
        torch.manual_seed(cfg.seed)  # every device's generator: the same initial weights on CPU and GPU
        self.model = AgeGenderModel(cfg)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.to(self.device)
        cuda = self.device.type == "cuda"
        # Mixed precision on CUDA: bf16 where supported (no scaling needed), else fp16 with a grad scaler.
        self.amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.frozen_bn = _freeze(self.model, cfg.freeze)
        # Why EMA: fine-tuned runs overfit and their val MAE jumps by +-0.1 between epochs; averaging the weights
        # along the trajectory smooths that noise. BatchNorm statistics are averaged with them (use_buffers).
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
                    if cfg.ema_decay > 0 else None)
        self.gender_loss = create_gender_loss(cfg.gender_loss, **cfg.gender_loss_kwargs)
        # one binary loss per attribute head (config head_losses; bce where none is named)
        self.attr_losses = [create_gender_loss(**{"name": "bce", **cfg.head_losses.get(f"attr:{n}", {})})
                            for n in self.model.attributes]
        self.select, self.select_rows = self._selection()
        # the val dict's key of the selection score: SCORE@DATASET scores are added to the primary val's under it
        self.select_key = self.select if self.select_rows is self.data.val else self.cfg.select
        back = [p for p in self.model.backbone.parameters() if p.requires_grad]
        heads = [p for n, p in self.model.named_parameters() if not n.startswith("backbone.")]
        groups = [{"params": heads, "lr": cfg.lr}]
        if back:
            groups.append({"params": back, "lr": cfg.lr * cfg.backbone_lr_mult})
        for g in groups:
            g["base_lr"] = g["lr"]
        self.opt = OPTIMIZERS.get(cfg.optimizer)(groups, cfg.weight_decay)
        if self.data.probs is not None and cfg.age_balance != "none":
            raise ValueError("age_balance is not supported with several datasets yet (their ages are partly unknown)")
        codes = self.data.groups[self.data.train] if self.data.groups is not None else None
        bal = balance(self.data.age[self.data.train], self.data.gender[self.data.train], cfg.age_balance,
                      cfg.gender_balance, cfg.seed, codes, cfg.group_balance)
        probs = bal.probs
        if self.data.probs is not None:  # dataset weights
            probs = self.data.probs[bal.keep] / self.data.probs[bal.keep].sum()
        self.rng = np.random.default_rng(cfg.seed)
        self.feeder = BatchFeeder(self.data, self.data.train[bal.keep], bal.weights, bal.gender_weights, probs,
                                  min(cfg.batch_size, len(bal.keep)), cfg.augment, self.rng, pin=cuda,
                                  shard=(self.rank, self.world),
                                  sample_weights=bal.sample_weights if cfg.group_balance is not None else None)
        self.fwd: nn.Module = self.model  # the training forward pass: the model, wrapped by DDP and/or compiled
        if self.world > 1:
            t = self.data.train
            # A task whose label some training images lack can leave its head out of a rank's step (masked loss).
            gaps = (("age" in cfg.tasks and np.isnan(self.data.age[t]).any())
                    or ("gender" in cfg.tasks and np.isnan(self.data.gender[t]).any())
                    or ("race" in cfg.tasks and (self.data.race[t] < 0).any())
                    or (self.data.attrs is not None and np.isnan(self.data.attrs[t]).any()))
            self.fwd = DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None,
                                               find_unused_parameters=bool(gaps))
        if cfg.compile:
            self.fwd = torch.compile(self.fwd)
        self._kill = _test_kill_hook()
        steps = self.feeder.steps
        self.total_steps = cfg.max_steps or cfg.epochs * steps
        self.epochs = math.ceil(self.total_steps / steps)
        self.warmup = round(cfg.warmup_epochs * steps)
        self.step, self.epoch, self.best_mae, self.best_epoch, self.plateau = 0, 0, float("inf"), -1, [1.0, 0]
        self.history: list[dict] = []

    def _selection(self) -> tuple[str, np.ndarray]:
        """The val score that selects the best epoch (and drives early stopping and the plateau schedule), and the val
        rows it is scored on: `select` when named (SCORE@DATASET: that dataset's val split), else the first of age
        MAE, gender accuracy, mean attribute balanced accuracy whose task the model has and whose labels the primary
        dataset's val split has."""
        d, v = self.data, self.data.val
        if self.cfg.select != "auto":
            score, dataset = parse_select(self.cfg.select, self.cfg)
            rows = v if dataset == self.cfg.dataset else d.other_vals[dataset]
            labels = {"mae": d.age, "gender_acc": d.gender}.get(score, d.attrs)
            if labels is None or not np.isfinite(labels[rows]).any():
                raise ValueError(f"select: {self.cfg.select} needs its labels in the val split of {dataset}")
            return score, rows
        if "age" in self.cfg.tasks and np.isfinite(d.age[v]).any():
            return "mae", v
        if "gender" in self.cfg.tasks and np.isfinite(d.gender[v]).any():
            return "gender_acc", v
        if d.attrs is not None and np.isfinite(d.attrs[v]).any():
            return "attr_bacc", v
        raise ValueError(f"no task of {self.cfg.tasks} has labels in the val split of {self.cfg.dataset}, so no epoch "
                         f"can be selected; make a dataset with such labels the primary `dataset`")

    @property
    def net(self) -> AgeGenderModel:
        """The weights the run evaluates and ships: the EMA copy when enabled, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    # ---- persistence -------------------------------------------------------------------------------------
    def _save_state(self) -> None:
        state = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                 "epoch": self.epoch, "best_mae": self.best_mae, "best_epoch": self.best_epoch,
                 "plateau": self.plateau, "history": json.dumps(self.history),
                 "torch_rng": torch.get_rng_state(), "np_rng": json.dumps(self.rng.bit_generator.state)}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.device.type == "cuda":  # the GPU's generator drives dropout and augmentation there
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        tmp = self.dir / "state.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.dir / "state.pt")  # atomic: a kill leaves the previous epoch's state intact

    def _load_state(self) -> bool:
        """Every rank reads the state rank 0 wrote (a run may resume on another device: tensors load onto it)."""
        path = self.dir / "state.pt"
        if not path.exists():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.best_mae, self.best_epoch, self.plateau = state["best_mae"], state["best_epoch"], state["plateau"]
        self.history = json.loads(state["history"])
        torch.set_rng_state(state["torch_rng"])
        self.rng.bit_generator.state = json.loads(state["np_rng"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        return True

    def _save_best(self) -> None:
        sd = {k: (v.half() if v.is_floating_point() else v).contiguous().cpu()
              for k, v in self.net.state_dict().items()}
        save_file(sd, str(self.dir / "best.safetensors.tmp"))
        (self.dir / "best.safetensors.tmp").replace(self.dir / "best.safetensors")

    # ---- loop ----------------------------------------------------------------------------------------------
    def _loss(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg, m = self.cfg, self.model
        out = self.fwd(b["x"].contiguous(memory_format=torch.channels_last) if cfg.channels_last else b["x"])
        out = {k: v.float() for k, v in out.items()}  # losses in fp32 under autocast (a no-op in fp32)
        loss = torch.zeros((), device=b["x"].device)
        sw = b.get("sw")  # group balancing: per-sample weights of every head's loss
        if m.age is not None:
            known = torch.isfinite(b["age"])  # datasets without ages (CelebA-HQ) train the other tasks only
            if known.any():
                w = b["w"] if sw is None else b["w"] * sw
                loss = loss + cfg.loss_weights.get("age", 1.0) * m.age.loss(out["age"][known], b["age"][known],
                                                                             w[known])
        if m.gender is not None:
            known = ~torch.isnan(b["gender"])
            if known.any():
                w = b["gw"] if sw is None else b["gw"] * sw
                loss = loss + cfg.loss_weights.get("gender", 1.0) * self.gender_loss(
                    out["gender"][known], b["gender"][known], w[known])
        if m.race is not None:
            known = b["race"] >= 0
            if known.any():
                ce = nn.functional.cross_entropy(out["race"][known], b["race"][known], reduction="none")
                race = ce.mean() if sw is None else (ce * sw[known]).sum() / sw[known].sum().clamp_min(1e-12)
                loss = loss + cfg.loss_weights.get("race", 0.5) * race
        for k, name in enumerate(m.attributes):  # each head masked where its label is unknown (another dataset's)
            y = b["attr"][:, k]
            known = ~torch.isnan(y)
            if known.any():
                loss = loss + cfg.loss_weights.get(f"attr:{name}", 1.0) * self.attr_losses[k](
                    out["attr"][known, k], y[known], None if sw is None else sw[known])
        return loss

    def _set_lr(self) -> None:
        f = SCHEDULES.get(self.cfg.schedule)(self.step, self.total_steps, self.warmup, self.plateau[0])
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * f

    def _to_device(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A pinned uint8 batch -> the device (non-blocking copies), as float [0, 1] NCHW (channels_last in memory),
        augmented there. CPU batches come augmented from the feeder and pass through."""
        if not self.feeder.pin:
            return b
        b = {k: v.to(self.device, non_blocking=True) for k, v in b.items()}
        b["x"] = augment_batch(b["x"].permute(0, 3, 1, 2).float().div_(255), self.cfg.augment)
        return b

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def train_epoch(self) -> dict:
        self.fwd.train()
        for bn in self.frozen_bn:
            bn.eval()
        t0 = time.perf_counter()
        batches = self.feeder.epoch()
        bar = tqdm(batches, total=self.feeder.steps, desc=f"{self.id} epoch {self.epoch + 1}/{self.epochs}",
                   disable=not self.progress, leave=False, unit="batch")
        losses, seen = [], 0
        with closing(batches), bar:  # closing stops the feeder's worker when the step budget ends mid-epoch
            for b in bar:
                if self.step >= self.total_steps:
                    break
                self._set_lr()
                b = self._to_device(b)
                with self._autocast():
                    loss = self._loss(b)
                self.opt.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    self.scaler.step(self.opt)
                    self.scaler.update()
                else:
                    loss.backward()
                    self.opt.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                self.step += 1
                seen += len(b["x"])
                losses.append(loss.detach())  # no per-step host sync on a GPU
                if self.progress and len(losses) % 20 == 0:
                    bar.set_postfix(loss=f"{torch.stack(losses[-20:]).mean().item():.3f}")
                if self._kill is not None and (self.epoch + 1, len(losses)) == self._kill[:2]:
                    self._kill[2].touch()
                    os._exit(1)  # test-only (_test_kill_hook): a rank dies mid-epoch
        # the mean over every rank's steps (DDP averages their gradients, so this is the global batch's loss)
        total = torch.stack(losses).double().sum() if losses else torch.zeros((), dtype=torch.float64)
        if self.world > 1:
            total = total.to(self.device)
            dist.all_reduce(total)
        n = len(losses) * self.world
        train_loss = total.item() / n if n else float("nan")
        dt = time.perf_counter() - t0
        return {"train_loss": train_loss, "train_img_s": seen * self.world / dt, "train_s": dt}

    def evaluate(self, idx: np.ndarray, attributes: bool = False) -> dict:
        """Metrics of one split; `attributes` adds each attribute head's balanced accuracy and ROC AUC at 0.5 and their
        mean (`attr_bacc`), where the rows have its labels."""
        return self._metrics(self.predictions(idx)[None], idx, attributes)

    def evaluate_modes(self, idx: np.ndarray, modes: tuple[str | None, ...]) -> dict[str | None, dict]:
        return {m: self._metrics(p, idx) for m, p in self.predictions(idx, modes).items()}

    def _metrics(self, pred: dict[str, np.ndarray], idx: np.ndarray, attributes: bool = False) -> dict:
        young = self.data.young[idx] if self.data.young is not None else None
        out = all_metrics(pred, self.data.age[idx], self.data.gender[idx], young)
        if attributes and self.data.attrs is not None:
            out.update(attribute_scores(self.net.attributes, self.data.attrs[idx], pred))
        return out

    def predictions(self, idx: np.ndarray, modes: tuple[str | None, ...] = (None,)) -> dict[str | None, dict]:
        """{TTA mode: predictions} on the training device, in fp32 (the NetworkPredictor's own passes and
        reductions)."""
        pred = NetworkPredictor(self.net, self.cfg.img_size)
        if self.device.type == "cpu":
            preds = pred.predict_modes(self.data.images[idx], modes)
        else:
            def passes(chunk: np.ndarray, mc_dropout: int, tta: str | None) -> dict[str, torch.Tensor]:
                x = torch.from_numpy(np.ascontiguousarray(chunk)).pin_memory().to(self.device, non_blocking=True)
                x = to_batch(x.permute(0, 3, 1, 2).float().div_(255), self.cfg.img_size)
                return {k: v.float().cpu() for k, v in pred._passes(x, mc_dropout, tta).items()}

            preds = predict_by_mode(passes, self.data.images[idx], modes, 0, 256)
        return preds

    def _attribute_report(self, val_pred: dict, test_pred: dict, other_tests: dict) -> dict:
        """Thresholds chosen on the val splits of every dataset of the mix that has attribute labels; test metrics on
        their test splits (zoo.evaluate.attribute_report)."""
        d = self.data
        labelled = lambda idx: np.isfinite(d.attrs[idx]).any()  # noqa: E731
        val = [(d.val, val_pred)] + [(idx, self.predictions(idx)[None]) for idx in d.other_vals.values()
                                     if labelled(idx)]
        test = [(d.test, test_pred)] + [(idx, p) for idx, p in other_tests.values() if labelled(idx)]

        def pool(parts):
            idx = np.concatenate([i for i, _ in parts])
            return d.attrs[idx], {f"attr:{n}": np.concatenate([p[f"attr:{n}"] for _, p in parts])
                                  for n in self.net.attributes}

        return attribute_report(self.net.attributes, *pool(val), *pool(test))

    def _barrier(self) -> None:
        if self.world > 1 and self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        elif self.world > 1:
            dist.barrier()

    def run(self) -> dict:
        """Train to the end (or resume), then evaluate and register. Returns run.json's content."""
        if (self.dir / "run.json").exists():
            return RunRecord.load(self.dir).to_dict()
        fresh = False
        if self.rank == 0:  # rank 0 alone writes the run's folder
            fresh = not self.dir.exists()
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.yaml").write_text(self.cfg.to_yaml())
        self._barrier()
        try:
            return self._train()
        except BaseException:
            # A start that failed before its first finished epoch leaves nothing to resume: no folder either. A
            # folder that existed before this call, or holds a resumable state, is never touched.
            if fresh and not (self.dir / "state.pt").exists():
                shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _train(self) -> dict:
        resumed = self._load_state()
        if resumed and self.progress:
            print(f"{self.id}: resuming after epoch {self.epoch} (step {self.step})")
        while self.epoch < self.epochs and self.step < self.total_steps:
            row = {"epoch": self.epoch + 1, **self.train_epoch()}
            val = self.evaluate(self.data.val, attributes=True) if self.rank == 0 else None
            if self.rank == 0 and self.select_key not in val:  # SCORE@DATASET: scored on that dataset's val split
                val[self.select_key] = self.evaluate(self.select_rows, self.select.startswith("attr"))[self.select]
            if self.world > 1:  # rank 0's metrics: every rank takes the same selection and schedule decisions
                box = [val]
                dist.broadcast_object_list(box, src=0)
                val = box[0]
            row.update({f"val_{k}": v for k, v in val.items() if k not in ("n", "n_gender")})
            row["lr"] = self.opt.param_groups[0]["lr"]
            self.epoch += 1
            score = val[self.select_key] * (1 if self.select == "mae" else -1)  # lower is better (`_selection`)
            if score < self.best_mae:
                self.best_mae, self.best_epoch = score, self.epoch
                if self.rank == 0:
                    self._save_best()
                self.plateau[1] = 0
            else:
                self.plateau[1] += 1
                if self.plateau[1] >= 2:
                    self.plateau[0] *= 0.5
            self.history.append(row)
            if self.rank == 0:
                self._save_state()  # first: the state is the truth, history.csv is its readable copy
                # atomic like state.pt: a kill (or a reader) mid-write must never see an empty or half file
                pd.DataFrame(self.history).to_csv(self.dir / "history.csv.tmp", index=False)
                (self.dir / "history.csv.tmp").replace(self.dir / "history.csv")
            self._barrier()  # the epoch's state is on disk before any rank goes on (a restart resumes from it)
            if self.progress:
                attr = f" attribute bal. acc {val['attr_bacc']:.3f}" if "attr_bacc" in val else ""
                print(f"{self.id} epoch {self.epoch}: loss {row['train_loss']:.3f} val MAE {val.get('mae', float('nan')):.2f}"
                      f" gender acc {val.get('gender_acc', float('nan')):.3f}{attr} ({row['train_img_s']:.0f} img/s)")
            if self.epoch - self.best_epoch >= self.cfg.patience:
                break
        return self._finish()

    def _finish(self) -> dict:
        if self.rank != 0:  # rank 0 evaluates and registers; the others return its record
            self._barrier()
            if not (self.dir / "run.json").exists():
                raise RuntimeError(f"{self.id}: rank 0 did not register the run (its error says why)")
            return RunRecord.load(self.dir).to_dict()
        try:
            return self._register()
        finally:
            self._barrier()

    def _register(self) -> dict:
        if not (self.dir / "best.safetensors").exists():
            raise ValueError(f"{self.id}: no epoch reached a finite validation score (training diverged? try a lower "
                             f"lr); nothing to register")
        self.net.load_state_dict({k: v.float() if v.is_floating_point() else v
                                    for k, v in load_file(str(self.dir / "best.safetensors")).items()})
        val_pred = self.predictions(self.data.val)[None]
        test_preds = self.predictions(self.data.test, (None, *TTA_KEYS))  # the test modes share their views
        metrics = {"val": self._metrics(val_pred, self.data.val),
                   **by_record_key({m: self._metrics(p, self.data.test) for m, p in test_preds.items()})}
        other_tests = {name: (idx, self.predictions(idx)[None]) for name, idx in self.data.other_tests.items()}
        if other_tests:  # the other datasets of the mix, each on its own test split
            metrics["test_by_dataset"] = {name: self._metrics(p, idx) for name, (idx, p) in other_tests.items()}
        if self.net.attributes:
            metrics["attributes"] = self._attribute_report(val_pred, test_preds[None], other_tests)
        # cost on one CPU process, whatever trained it: comparable across the registry
        cpu_net = self.net if self.device.type == "cpu" else copy.deepcopy(self.net).cpu()
        record = {
            "id": self.id, "kind": "single", "name": self.cfg.name, "config": self.cfg.identity(),
            "data": {"dataset": self.cfg.dataset, "source": self.cfg.source, "hash": self.data.data_hash,
                     **({"mix": self.cfg.dataset_mix()} if self.cfg.datasets else {})},
            "commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "device": str(self.device), "device_name": device_name(self.device), "world_size": self.world,
            "params": sum(p.numel() for p in self.net.parameters()),
            "flops": count_flops(cpu_net, self.cfg.img_size), "infer_img_s": inference_rate(cpu_net, self.cfg.img_size),
            "train_img_s": float(np.median([h["train_img_s"] for h in self.history])),
            "epochs_run": self.epoch, "best_epoch": self.best_epoch, "steps": self.step,
            "checkpoint": "best.safetensors", "metrics": metrics,
        }
        write_run(record, self.dir.parent)
        (self.dir / "state.pt").unlink(missing_ok=True)  # optimiser state is only needed to resume
        return record


@torch.no_grad()
def inference_rate(model: nn.Module, img_size: int, batch: int = 64, reps: int = 3) -> float:
    model.eval()
    x = torch.rand(batch, 3, img_size, img_size).contiguous(memory_format=torch.channels_last)
    model(x)
    t0 = time.perf_counter()
    for _ in range(reps):
        model(x)
    return batch * reps / (time.perf_counter() - t0)


def train(cfg: TrainConfig, progress: bool = True, root: Path | None = None) -> dict:
    """Train (or resume) one run; a finished run is returned from the registry without loading any data."""
    cfg.validate(data=True)
    done = (root or runs_dir()) / cfg.run_id(data_hash(cfg)) / "run.json"
    if done.exists():
        return RunRecord.load(done).to_dict()
    return Trainer(cfg, progress=progress, root=root).run()
