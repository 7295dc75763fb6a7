"""`python -m bench run`: predictions of every (model, image, perturbation, severity) that the DB does not have yet
in the requested inference mode (`--tta`, `--mc-dropout`: `zoo.modes`; each mode's rows are their own).

Flow per run: resolve models (zoo registry ids and peers; one that fails to load is reported and skipped), datasets
(`name[:split]`) and conditions (`none` + perturbations × severities); ask the DB *and* the pending parts which
rows exist; compute only the missing ones, batch by batch; publish rows as atomic Parquet parts and (unless sharded)
merge them into the DB every few seconds in short transactions (see `bench.store`). A kill at any point loses at most
the rows of the last few seconds; the next identical run computes exactly those. Every run also rewrites the
`models` rows of all registered runs the DB holds from their run.json (`refresh_models`), so names and metadata
edited in the registry reach the DB even for models this run does not bench.

Attributes. A model with attribute heads (`Predictor.attributes`, e.g. `blond_or_glasses`) also gets one
`attributes` row per prediction and head: its probability and the image's label (`zoo.attributes.attribute_labels`
over the manifest's extras; composite targets from the model's config). They travel in the same buffer, parts and
merges as its predictions (attribute parts are published first), and a prediction counts as done only when all its
attribute rows exist, so a killed or repeated run ends with each attribute key exactly once.

Images. Clean images come from the decoded cache at each model's own img_size (`zoo.data.cache`, the same pixels
evaluation and training use). Perturbed images are made at a larger resolution, as a degradation would happen at
capture time: the cached decode at PERTURB_SIZE px (128, or the model's size when larger) is perturbed, then
resized to the model's size with the cache's own resize (`square_resize`). One perturbed batch is shared by every
model that needs it.

Sharding (`--shard i/N`, 0 ≤ i < N): a deterministic partition of each dataset's image list by a hash of the
image id, so N processes (GPUs, nodes) can fill one DB: each writes Parquet parts only, into `<db>.parts/` (a shared
filesystem, or copy the part folders together afterwards), and `python -m bench merge --db PATH` ingests them (it
can run while shards are still writing, and again at the end). Shards skip rows already in the DB or in parts.
Under torchrun (`torchrun --nproc_per_node N -m bench run`) each rank is such a shard on its own GPU and rank 0
merges for all of them and records the run (`bench.dist`): what a shared filesystem allows.

Embedding maps (`--embed`, off by default). After a dataset's predictions, each zoo model's penultimate features
of the selected clean images (`Predictor.embed`) are projected to 2-D (`bench.embedding`: UMAP, PCA fallback) and
stored in `embeddings`, one map per (model, dataset), for the dashboard's Embedding map page. Opt-in because it costs
a forward pass and a projection per model and dataset (the first UMAP fit in a process also compiles for ~1-2 min),
and because maps of every zoo model would outgrow the size the shipped DB allows them (bench/SCHEMA.md): bench the
models worth looking at with it. A map that already holds every selected image is kept, so a repeated or resumed run
writes nothing; one that lacks some is refitted over all of its images (a `replace` merge overwrites the old map).

Reliability. Every option is checked before any work (`plan`: unknown models, datasets or splits, a bad limit,
device or DB path raise BenchInputError, creating nothing), and repeated ids are merged, so a run computes each key
once. An image file that no longer decodes is a *bad image*: reported with its path, left out for every model and
from the `images` table, while the rest is benched. Ctrl-C (KeyboardInterrupt) publishes the buffered rows
before it propagates, so an interrupted run resumes exactly where it stopped.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import cv2
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from bench import dist as torchrun, store
from bench.attributes import images_rows
from bench.perturb import apply, list_perturbations, resolve_suite
from zoo.attributes import attribute_labels, predictor_attributes, predictor_targets
from zoo.data.cache import cache_path, image_loader, load_images, square_resize
from zoo.data.manifest import Manifest, load_manifest, manifest_path
from zoo.device import device_label, on_device, pick_device
from zoo.modes import inference_mode
from zoo.peers import is_peer, list_peers, load_peer
from zoo.predictor import Predictor

PERTURB_SIZE = 128
ATTR_CHUNK = 2000  # images per `images` part: attribute work survives a kill in chunks


SPLITS = ("train", "val", "test")
MODEL_KEYWORDS = ("all", "zoo", "peers", "best")


class BenchInputError(ValueError):
    """An option that cannot be run (unknown id, dataset, split; bad limit, device or DB path): raised before any
    work, with a one-line message."""


@dataclass
class RunOptions:
    models: str = "all"  # all | zoo | peers | best | comma-separated ids
    datasets: list[str] = field(default_factory=lambda: ["utkface:test"])
    perturb: str = "none"  # none | default | comma-separated names
    mc_dropout: int = 0
    tta: str | None = None
    db: Path | None = None
    batch_size: int = 64
    shard: tuple[int, int] | None = None
    limit: int | None = None
    device: str = "auto"
    runtime: str = "auto"  # zoo.export.RUNTIMES: what runs the zoo networks on the CPU (auto: the measured fastest)
    flush_seconds: float = 5.0  # publish a part at least this often: a kill loses at most this much work
    merge_seconds: float = 30.0  # merge parts into the DB (unless sharded) at most this often while running; a
    # merge costs ~0.1-0.2 s: merging at every 5 s flush cost a small model a few % (benchmarks/bench_throughput.py)
    workers: int = 2
    progress: bool = True
    embed: bool = False  # also store each zoo model's embedding map of each dataset (bench.embedding; peers have none)


@dataclass
class LoadedModel:
    id: str
    predictor: Predictor
    row: dict
    latency_s: float = 0.0
    images: int = 0

    @property
    def attributes(self) -> tuple[str, ...]:
        """The attribute heads the predictor has (`zoo.attributes.predictor_attributes`; none for most): one
        `attributes` row each per prediction."""
        return predictor_attributes(self.predictor)

    def framing(self, m: Manifest) -> str:
        """The framing this model reads `m` with: its own (peers with their own face pipeline), the one it trained
        that dataset with, else the dataset's own."""
        from zoo.registry import input_framing

        own = getattr(self.predictor, "framing", None)
        return own or input_framing(getattr(self.predictor, "info", None) or {}, m.dataset) or m.framing


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard i/N needs 0 <= i < N, got {text!r}")
    return i, n


def shard_mask(image_ids: pd.Series, shard: tuple[int, int] | None) -> np.ndarray:
    """Deterministic, order-free partition: crc32(image_id) mod N == i."""
    if shard is None:
        return np.ones(len(image_ids), bool)
    i, n = shard
    return np.fromiter((zlib.crc32(s.encode()) % n == i for s in image_ids), bool, len(image_ids))


def parse_dataset(spec: str) -> tuple[str, list[str] | None]:
    """`utkface` (every split), `utkface:test`, `utkface:val+test`."""
    name, _, splits = spec.partition(":")
    splits = splits.strip()
    return name.strip(), ([s.strip() for s in splits.split("+") if s.strip()] if splits and splits != "all"
                          else None)


def known_datasets() -> list[str]:
    """Registered readers and datasets with a scanned manifest (your own `csv` / `folder` data)."""
    from zoo.data.readers import list_readers

    folder = manifest_path("x").parent
    scanned = [p.stem for p in folder.glob("*.parquet")] if folder.is_dir() else []
    return sorted(set(list_readers()) | set(scanned))


def resolve_datasets(specs: list[str]) -> list[tuple[str, list[str] | None]]:
    """`[(name, splits or None = all)]`, one entry per dataset (repeats merged, splits in train/val/test order);
    BenchInputError for an unknown dataset or split."""
    known = known_datasets()
    merged: dict[str, set[str] | None] = {}
    for spec in specs:
        name, splits = parse_dataset(spec)
        if not name:
            raise BenchInputError(f"--datasets: empty dataset name in {spec!r}")
        if name not in known:
            raise BenchInputError(f"unknown dataset {name!r}; known: {', '.join(known)}")
        bad = [x for x in splits or [] if x not in SPLITS]
        if bad:
            raise BenchInputError(f"unknown split {bad[0]!r} in {spec!r}; splits: {', '.join(SPLITS)} (or all)")
        if splits == []:
            raise BenchInputError(f"--datasets: no split in {spec!r}")
        old = merged.get(name, set())
        merged[name] = None if splits is None or old is None else old | set(splits)
    if not merged:
        raise BenchInputError("--datasets: no dataset given")
    return [(n, None if sp is None else [x for x in SPLITS if x in sp]) for n, sp in merged.items()]


def normalise_perturb(spec: str | None) -> str:
    """The perturbation spec with repeats dropped (`blur,blur` → `blur`); BenchInputError for an unknown name."""
    from zoo.cliargs import split_list

    names = [n for n in split_list(spec or "none") if n != "none"]
    if "default" in names:  # every perturbation
        return "default"
    unknown = [n for n in names if n not in list_perturbations()]
    if unknown:
        raise BenchInputError(f"unknown perturbation {unknown[0]!r}; known: none, default, "
                              f"{', '.join(list_perturbations())}")
    return ",".join(names) or "none"


def check_device(name: str):
    """The torch device for `--device`; BenchInputError when it does not exist here."""
    import torch

    try:
        device = pick_device(name)
    except (RuntimeError, ValueError) as e:
        raise BenchInputError(f"--device {name!r}: {e}") from None
    if device.type not in ("cpu", "cuda"):
        raise BenchInputError(f"--device {name!r}: the bench runs on cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BenchInputError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BenchInputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def select_images(m: Manifest, splits: list[str] | None, limit: int | None,
                  shard: tuple[int, int] | None) -> np.ndarray:
    """Manifest row indices benched: the split(s), ordered by image_id, the first `limit`, then this shard's part."""
    f = m.frame
    keep = np.ones(len(f), bool) if splits is None else f["split"].isin(splits).to_numpy()
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(f["image_id"].to_numpy()[idx], kind="stable")]
    if limit is not None:
        idx = idx[:limit]
    return idx[shard_mask(f["image_id"].iloc[idx], shard)]


def unreadable(paths: list[Path], workers: int = 2) -> list[str | None]:
    """Why each file cannot be benched (None: it decodes). The test is the loaders' own (`cv2.imread` gives
    None: missing, unreadable or not an image), on a reduced decode, which is several times faster for JPEGs."""
    def why(path: Path) -> str | None:
        if not path.is_file():
            return "file missing"
        if cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_4) is None:
            return "cannot decode"
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:  # OpenCV releases the GIL while decoding
        return list(pool.map(why, paths))


class _Decoder:
    """Rows of a manifest decoded on demand with the cache's own loader (identical pixels): for small selections
    (`--limit`) where building the whole dataset's cache at this size would cost far more, and for datasets with
    bad images, which a cache (every row of the manifest) cannot hold."""

    def __init__(self, m: Manifest, size: int, framing: str, rows: np.ndarray, progress: bool):
        # faces are detected (or read from the detection store) for the selected rows only
        self.load, self.size, self.memo = image_loader(m, framing, progress, rows=rows), size, {}

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        for i in idx:
            if i not in self.memo:
                self.memo[i] = self.load(i, self.size)
        return np.stack([self.memo[i] for i in idx])


def _images(m: Manifest, size: int, framing: str, cache: dict, selected: np.ndarray, progress: bool,
            no_cache: set[str], log: Callable[[str], None]) -> object:
    """uint8 [N, size, size, 3] indexable by manifest row: the memory-mapped decoded cache (built once, under a
    lock shared by concurrent jobs), or a decoder when the cache is absent and few images are benched, or the
    dataset (`no_cache`) has a file that does not decode."""
    key = (m.dataset, size, framing)
    if key not in cache:
        if not cache_path(m, size, framing).exists() and (m.dataset in no_cache or len(selected) < 0.1 * len(m.frame)):
            cache[key] = _Decoder(m, size, framing, selected, progress)
        else:
            try:
                cache[key] = load_images(m, size, in_memory=False, progress=progress, framing=framing)
            except ValueError as e:  # a bad image outside the selection: decode the selection on demand instead
                if "cannot decode" not in str(e):
                    raise
                log(f"{m.dataset}: no image cache at {size} px ({e}); decoding the benched images on demand")
                no_cache.add(m.dataset)
                cache[key] = _Decoder(m, size, framing, selected, progress)
    return cache[key]


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------

def resolve_model_ids(spec: str) -> list[str]:
    """Model ids of `--models` (keywords all / zoo / peers / best, or comma-separated ids, mixable), each once, in
    order; BenchInputError for an unknown id, listing the known ones."""
    from zoo.registry import list_runs, select_models

    zoo_ids = [r.id for r in list_runs()]
    out: list[str] = []
    from zoo.cliargs import split_list

    for item in split_list(spec or "all"):
        if item == "all":
            out += zoo_ids + list_peers()
        elif item == "zoo":
            out += zoo_ids
        elif item == "peers":
            out += list_peers()
        elif item == "best":  # the runnable model with the lowest val MAE
            try:
                out += select_models("best")
            except ValueError as e:
                raise BenchInputError(f"--models best: {e}") from None
        elif item in zoo_ids or item in list_peers():
            out.append(item)
        else:
            import difflib

            # The registry holds ~90 ids: name the closest ones and where the rest are listed.
            close = difflib.get_close_matches(item, [*zoo_ids, *list_peers()], n=5, cutoff=0.5)
            raise BenchInputError(f"unknown model {item!r}; "
                                  + (f"did you mean {', '.join(close)}? " if close else "")
                                  + f"known: {', '.join(MODEL_KEYWORDS)}, {', '.join(list_peers())} and "
                                    f"the {len(zoo_ids)} registered ids of `python -m zoo list`")
    if not out:
        raise BenchInputError(f"--models {spec!r} selects no model (registry: {len(zoo_ids)} models)")
    return list(dict.fromkeys(out))


def _runtime(runtime: str, device) -> str | None:
    """The runtime zoo networks run with (recorded in bench_runs.options); None before the device is known."""
    from zoo.export import resolve_runtime

    return None if device is None else resolve_runtime(runtime, device)


def load_model(model_id: str, device, runtime: str = "eager") -> LoadedModel:
    """A model ready to predict on `device` (zoo networks with `runtime` on the CPU: zoo.export; eager elsewhere);
    raises (with the reason) when it cannot be loaded."""
    if is_peer(model_id):
        p = load_peer(model_id)
        return LoadedModel(model_id, p, p.model_row())
    from zoo.export import resolve_runtime
    from zoo.registry import get_run, load

    run = get_run(model_id)
    predictor = load(model_id, runtime=resolve_runtime(runtime, device))
    return LoadedModel(model_id, on_device(predictor, device), run.to_row())


# ---------------------------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------------------------

def _floats(a) -> pa.Array:
    a = np.asarray(a, np.float64)
    return pa.array(a, mask=np.isnan(a))


class _Buffer:
    """Prediction rows (and attribute rows, `attr_chunks`) collected between flushes, as column arrays (cheap to
    turn into one Arrow table)."""

    COLS = ["model_id", "dataset", "image_id", "perturbation", "severity", "age_pred", "sigma_aleatoric",
            "sigma_epistemic", "sigma_tta", "gender_prob", "latency_ms", "bench_run", "mode"]

    def __init__(self) -> None:
        self.chunks: list[pa.Table] = []
        self.attr_chunks: list[pa.Table] = []
        self.rows = 0

    def add(self, model_id: str, dataset: str, image_ids: np.ndarray, cond: tuple[str, int], out: dict,
            latency_ms: float, run_id: str, mode: str) -> None:
        n = len(image_ids)
        f = _floats
        self.chunks.append(pa.table({
            "model_id": pa.array([model_id] * n, pa.string()), "dataset": pa.array([dataset] * n, pa.string()),
            "image_id": pa.array(list(image_ids), pa.string()), "perturbation": pa.array([cond[0]] * n, pa.string()),
            "severity": pa.array(np.full(n, cond[1], np.int32)), "age_pred": f(out["age"]),
            "sigma_aleatoric": f(out["sigma_aleatoric"]), "sigma_epistemic": f(out["sigma_epistemic"]),
            "sigma_tta": f(out["sigma_tta"]), "gender_prob": f(out["gender_prob"]),
            "latency_ms": pa.array(np.full(n, latency_ms, np.float64)), "bench_run": pa.array([run_id] * n),
            "mode": pa.array([mode] * n, pa.string())}))
        self.rows += n

    def add_attributes(self, model_id: str, dataset: str, image_ids: np.ndarray, cond: tuple[str, int],
                       probs: dict[str, np.ndarray], labels: dict[str, np.ndarray], run_id: str, mode: str) -> None:
        """Rows of the `attributes` table: one per (image, attribute); `labels` 0/1 or NaN (the image lacks it)."""
        n = len(image_ids)
        for name, prob in probs.items():
            lab = np.asarray(labels[name], np.float64)
            self.attr_chunks.append(pa.table({
                "model_id": pa.array([model_id] * n, pa.string()), "dataset": pa.array([dataset] * n, pa.string()),
                "image_id": pa.array(list(image_ids), pa.string()),
                "perturbation": pa.array([cond[0]] * n, pa.string()),
                "severity": pa.array(np.full(n, cond[1], np.int32)), "mode": pa.array([mode] * n, pa.string()),
                "attribute": pa.array([name] * n, pa.string()), "prob": _floats(prob),
                "label": pa.array(np.nan_to_num(lab).astype(np.int8), mask=np.isnan(lab)),
                "bench_run": pa.array([run_id] * n, pa.string())}))

    def take(self) -> pa.Table | None:
        if not self.chunks:
            return None
        t = pa.concat_tables(self.chunks)
        self.chunks, self.rows = [], 0
        return t

    def give_back(self, t: pa.Table) -> None:
        """Rows `take` gave out that could not be published go back first in line."""
        self.chunks.insert(0, t)
        self.rows += t.num_rows

    def take_attributes(self) -> pa.Table | None:
        if not self.attr_chunks:
            return None
        t = pa.concat_tables(self.attr_chunks)
        self.attr_chunks = []
        return t


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass
class Plan:
    """What a run will do, every option checked and normalised (`plan`)."""
    opts: RunOptions  # with datasets and perturb normalised (repeats merged)
    db: Path
    device: object  # torch.device
    model_ids: list[str]
    datasets: list[tuple[Manifest, np.ndarray]]  # manifest, selected rows (split, limit, shard)
    conds: list[tuple[str, int]]


def plan(opts: RunOptions) -> Plan:
    """Check and normalise every option before any work; BenchInputError (one line) on the first problem.

    Creates nothing, except a first scan of a dataset's manifest from the shared data folder, which the run needs
    and which is only reached once every other option has been checked."""
    o = opts
    if o.batch_size < 1:
        raise BenchInputError(f"--batch-size must be >= 1, got {o.batch_size}")
    if o.mc_dropout < 0:
        raise BenchInputError(f"--mc-dropout must be >= 0, got {o.mc_dropout}")
    if o.limit is not None and o.limit < 1:
        raise BenchInputError(f"--limit must be >= 1 (images per dataset selection), got {o.limit}")
    if o.flush_seconds < 0 or o.merge_seconds < 0:
        raise BenchInputError("--flush-seconds and --merge-seconds must be >= 0")
    if o.shard is not None and not (o.shard[1] >= 1 and 0 <= o.shard[0] < o.shard[1]):
        raise BenchInputError(f"--shard i/N needs 0 <= i < N, got {o.shard[0]}/{o.shard[1]}")
    if o.embed and o.shard is not None:  # a shard sees part of the images; a map is fitted over all of them
        raise BenchInputError("--embed fits one map over every image of a dataset: run it in one process "
                              "(without --shard or torchrun)")
    if o.tta not in (None, "flip", "flip+crop"):
        raise BenchInputError(f"--tta must be flip or flip+crop, got {o.tta!r}")
    from zoo.export import RUNTIMES

    if o.runtime not in RUNTIMES:
        raise BenchInputError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {o.runtime!r}")
    perturb = normalise_perturb(o.perturb)
    device = check_device(o.device)
    default = o.db is None or Path(o.db) == store.default_db()
    db = Path(o.db or store.default_db())
    if not (default and not db.parent.exists()):  # the default DB's folder is created for it (below)
        try:
            store.check_db_path(db, write=True, must_exist=False)
        except store.DBPathError as e:
            raise BenchInputError(f"--db: {e}") from None
    model_ids = resolve_model_ids(o.models)
    resolved = resolve_datasets(list(o.datasets))
    datasets = []
    for name, splits in resolved:
        try:
            m = load_manifest(name)
        except (FileNotFoundError, ValueError) as e:
            raise BenchInputError(f"dataset {name!r}: {e}") from None
        if not len(select_images(m, splits, None, None)):
            have = ", ".join(sorted(m.frame["split"].dropna().astype(str).unique()))
            raise BenchInputError(f"dataset {name!r} has no images in split {'+'.join(splits or [])} "
                                  f"(its splits: {have})")
        datasets.append((m, select_images(m, splits, o.limit, o.shard)))
    specs = [n if sp is None else f"{n}:{'+'.join(sp)}" for n, sp in resolved]
    if default:
        db.parent.mkdir(parents=True, exist_ok=True)
    norm = RunOptions(**{**o.__dict__, "datasets": specs, "perturb": perturb, "db": db})
    return Plan(norm, db, device, model_ids, datasets, resolve_suite(perturb))


@contextmanager
def _signals_held(defer: bool = False) -> Iterator[None]:
    """SIGINT/SIGTERM during the body: ignored (publishing rows after an interrupt must not be cut short), or with
    `defer` taking effect right after it (their handlers run then, so an interrupt never splits publishing a part
    from forgetting its rows). Only the main thread can change signal handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    handler = (lambda s, _f: caught.append(s)) if defer else signal.SIG_IGN
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)


class Runner:
    def __init__(self, opts: RunOptions):
        self.o = opts
        self.db = Path(opts.db or store.default_db())
        self.sharded = opts.shard is not None
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
        self.device = None  # checked by `plan`
        self.buffer = _Buffer()
        self.last_flush = self.last_merge = time.monotonic()
        self.written = 0
        self.attr_written = 0  # `attributes` rows published (one per prediction and attribute head)
        self.predict_s = 0.0  # wall time of the prediction loops (incl. publishing), for img/s
        self.computed = 0
        self.skipped: dict[str, str] = {}
        self.bad_images: dict[str, dict[str, str]] = {}  # dataset -> {relative path: why}
        self.bad_rows: dict[str, set[int]] = {}  # dataset -> manifest rows of its bad images
        self.no_cache: set[str] = set()  # datasets whose image cache cannot be built (a bad image)
        self.cache: dict = {}
        self.selected: dict[str, np.ndarray] = {}  # manifest rows benched, by dataset
        self.attr_labels: dict[tuple[str, str], dict[str, np.ndarray]] = {}  # (model, dataset) -> `_labels`
        self.embedded: dict[str, dict] = {}  # "model@dataset" -> {images, method, seconds} of maps fitted here
        self.started = self.commit = None
        self.log = lambda msg: print(msg, file=sys.stderr, flush=True)
        self.dist: torchrun.Torchrun | None = None  # set by `run` under torchrun (bench/dist.py)

    @property
    def mode(self) -> str:
        """The inference mode of this run's rows (`zoo.modes.inference_mode`): part of every prediction's key."""
        return inference_mode(self.o.tta, self.o.mc_dropout)

    # -- publishing ------------------------------------------------------------------------------------------
    def merge(self) -> None:
        if self.sharded:
            return
        try:
            store.merge(self.db)
        except Exception as e:  # a reader holding the file too long must not kill hours of work: parts stay
            if not store.is_lock_error(e):
                raise
            self.log(f"merge postponed (database busy): {e}")

    def _publish(self) -> None:
        """The buffered rows as parts: attribute rows first, so a published prediction row has its attribute rows
        published too (`_missing` still checks both: a part can be lost to quarantine)."""
        a = self.buffer.take_attributes()
        if a is not None:
            self._write_part("attributes", a, lambda: self.buffer.attr_chunks.insert(0, a))
            self.attr_written += a.num_rows
        t = self.buffer.take()
        if t is not None:
            self._write_part("predictions", t, lambda: self.buffer.give_back(t))
            self.written += t.num_rows

    def _write_part(self, table: str, rows: pa.Table, keep: Callable[[], None]) -> None:
        """Publish `rows` as a part; rows not published (a failure) are kept for the next flush. An interrupt waits
        for the outcome: one that arrived just after the part was published used to keep its rows too, and
        `interrupted` published them again (duplicates)."""
        with _signals_held(defer=True):
            try:
                store.write_part(self.db, table, rows, tag=self.run_id)
            except BaseException:
                keep()
                raise

    def flush(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.last_flush < self.o.flush_seconds:
            return
        self._publish()
        self.last_flush = time.monotonic()
        if force or self.last_flush - self.last_merge >= self.o.merge_seconds:
            self.merge()
            self.last_merge = time.monotonic()

    def run_record(self, finished: bool) -> dict:
        o = self.o
        options = {"models": o.models, "datasets": o.datasets, "perturbations": o.perturb,
                   "mc_dropout": o.mc_dropout, "tta": o.tta, "mode": self.mode,
                   "shard": f"{o.shard[0]}/{o.shard[1]}" if o.shard else None,
                   "limit": o.limit, "batch_size": o.batch_size, "runtime": _runtime(o.runtime, self.device),
                   "embed": o.embed,
                   "skipped_models": self.skipped,
                   "bad_images": {ds: sorted(p) for ds, p in self.bad_images.items()}}
        if self.dist is not None:  # the user's shard (not this rank's), and the job's size
            options.update(self.dist.record())
        return {"run_id": self.run_id, "started": self.started, "finished": _now() if finished else None,
                "commit": self.commit, "device": device_label(self.device),
                "options": json.dumps(options), "n_rows": 0}

    def refresh_models(self) -> int:
        """Rewrite the `models` row of every registered run the DB (or a pending part) already holds from its
        run.json, benched in this run or not: a run renamed (or otherwise edited) in the registry shows its new
        name after the next bench run. A speed measured by the bench (`infer_img_s` missing from run.json) is kept.
        Returns the rows written."""
        from zoo.registry import list_runs

        runs = {r.id: r for r in list_runs()}
        if not runs:
            return 0
        known = store.query_known(self.db, "models", ["model_id", "infer_img_s"],
                                  "SELECT model_id, max(infer_img_s) AS infer_img_s FROM known GROUP BY model_id")
        rows = []
        for mid, speed in zip(known["model_id"], known["infer_img_s"]):
            if mid in runs:
                row = runs[mid].to_row(runs)
                if row["infer_img_s"] is None and pd.notna(speed):
                    row["infer_img_s"] = float(speed)
                rows.append(row)
        if rows:
            store.write_part(self.db, "models", pd.DataFrame(rows), tag=f"{self.run_id}-registry")
        return len(rows)

    def interrupted(self) -> None:
        """After Ctrl-C / SIGTERM: publish the buffered rows and merge them (unless sharded), so a re-run computes
        only what is left. A busy or failing merge leaves the parts for the next run."""
        with _signals_held():
            self._publish()
            if not self.sharded:
                try:
                    store.merge(self.db, timeout=10.0)
                except Exception as e:
                    self.log(f"merge postponed: {type(e).__name__}: {e}")

    # -- main ----------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        try:
            self.dist = torchrun.from_env()  # a rank of `torchrun … -m bench run`: its shard, its GPU
        except ValueError as e:
            raise BenchInputError(str(e)) from None
        if self.dist is not None:
            self.o = self.dist.adapt(self.o)
            self.sharded = self.dist.user_shard is not None or self.dist.rank != 0  # only rank 0 merges
            self.log = self.dist.logger()
            try:  # first: the heartbeat then covers every step (a slow plan included)
                self.dist.connect()
            except Exception as e:
                raise torchrun.RankLost(f"cannot join the torchrun job's store: {type(e).__name__}: {e}") from None
        p = plan(self.o)  # BenchInputError before any work
        self.o, self.db, self.device = p.opts, p.db, p.device
        try:
            return self._run(p)
        except (KeyboardInterrupt, duckdb.InterruptException) as e:  # DuckDB turns Ctrl-C inside a query into its own
            if self.started is not None:
                self.interrupted()
            if isinstance(e, KeyboardInterrupt):
                raise
            raise KeyboardInterrupt from None
        finally:
            if self.dist is not None:
                self.dist.close()

    def _run(self, p: Plan) -> dict:
        from zoo.provenance import git_commit

        o = self.o
        conds = p.conds
        t0 = time.perf_counter()
        self.started, self.commit = _now(), git_commit()
        self.merge()  # leftovers of a killed run first (unless sharded: shards never write the DB)
        models = []
        for mid in p.model_ids:
            try:
                models.append(load_model(mid, self.device, o.runtime))
            except Exception as e:  # PeerUnavailable, a missing checkpoint: reported, never fatal
                self.skipped[mid] = f"{type(e).__name__}: {e}"
                self.log(f"skipping model {mid}: {self.skipped[mid]}")
        rank = 0 if self.dist is None else self.dist.rank
        if rank == 0:  # one bench_runs row per job, written before any rank publishes predictions
            store.write_part(self.db, "bench_runs", pd.DataFrame([self.run_record(False)]), tag=self.run_id)
            self.refresh_models()
        if self.dist is not None:
            self.run_id = self.dist.share_run_id(self.run_id)
        if models:
            store.write_part(self.db, "models", pd.DataFrame([m.row for m in models]), tag=self.run_id)
        for m, idx in p.datasets:
            self.selected[m.dataset] = np.union1d(self.selected.get(m.dataset, np.array([], int)), idx)
        self.merge()
        n_images = 0
        for m, idx in p.datasets:
            n_images += len(idx)
            todo = self._missing(m, idx, models, conds) if models else {}
            need_attrs = self._images_missing(m, idx)
            self._find_bad_images(m, np.union1d(need_attrs, np.concatenate([np.zeros(0, np.int64),
                                                                            *todo.values()])))
            bad = np.fromiter(self.bad_rows.get(m.dataset, ()), np.int64)
            self._images_table(m, np.setdiff1d(need_attrs, bad))
            if models:
                todo = {k: v for k, v in ((k, np.setdiff1d(v, bad)) for k, v in todo.items()) if len(v)}
                t = time.perf_counter()
                self._predict_dataset(m, idx, models, conds, todo)
                self.flush(force=True)
                self.predict_s += time.perf_counter() - t
                if o.embed:  # after the predictions: a map is fitted once all of the dataset's images are in
                    self._embed_dataset(m, idx, models)
        self.flush(force=True)
        for lm in models:  # peers carry no training-time speed: record the one measured here
            if lm.row.get("infer_img_s") is None and lm.latency_s > 0:
                store.write_part(self.db, "models", pd.DataFrame([{**lm.row, "infer_img_s": lm.images / lm.latency_s}]),
                                 tag=self.run_id)
        rows, computed, predict_s, attr_rows = self.written, self.computed, self.predict_s, self.attr_written
        if rank > 0:  # handed to rank 0, which records and reports the job
            self.dist.report({"rows": rows, "computed": computed, "predict_s": predict_s, "images": n_images,
                              "skipped": self.skipped, "bad_images": self.bad_images, "attribute_rows": attr_rows})
        elif self.dist is not None:  # merging what the others publish while waiting for them
            for r in self.dist.gather(on_tick=self.flush):
                rows, computed, n_images = rows + r["rows"], computed + r["computed"], n_images + r["images"]
                attr_rows += r.get("attribute_rows", 0)
                predict_s = max(predict_s, r["predict_s"])
                self.skipped.update({k: v for k, v in r["skipped"].items() if k not in self.skipped})
                for ds, bad in r["bad_images"].items():
                    self.bad_images.setdefault(ds, {}).update(bad)
        if rank == 0:
            store.write_part(self.db, "bench_runs", pd.DataFrame([self.run_record(True)]), tag=self.run_id)
        self.merge()
        inserted = None if self.sharded else store.run_rows(self.db, self.run_id)
        return {"run_id": self.run_id, "rows": rows, "inserted": inserted, "attribute_rows": attr_rows,
                "models": [m.id for m in models],
                "skipped": dict(self.skipped), "bad_images": {d: dict(b) for d, b in self.bad_images.items()},
                "images": n_images, "conditions": len(conds), "mode": self.mode, "embedded": dict(self.embedded),
                "seconds": time.perf_counter() - t0, "predict_seconds": predict_s,
                "img_s": computed / predict_s if predict_s else float("nan"),
                "db": str(self.db), "sharded": self.sharded,
                "rank": rank, "world_size": 1 if self.dist is None else self.dist.world_size}

    def _find_bad_images(self, m: Manifest, rows: np.ndarray) -> None:
        """Rows about to be decoded (measured or predicted) whose file does not decode any more (deleted, truncated
        or replaced after the scan): reported once, then left out for every model."""
        if not len(rows):
            return
        paths = m.abspaths()
        why = unreadable([paths[i] for i in rows], workers=self.o.workers)
        bad = {int(i): w for i, w in zip(rows, why) if w is not None}
        if not bad:
            return
        self.bad_rows.setdefault(m.dataset, set()).update(bad)
        self.no_cache.add(m.dataset)  # a cache holds every row: it cannot be built with these files
        rel = m.frame["path"].astype(str).to_numpy()
        found = self.bad_images.setdefault(m.dataset, {})
        for i, w in bad.items():
            found[rel[i]] = w
        self.log(f"{m.dataset}: {len(bad)} bad image(s) left out for every model, e.g. {rel[next(iter(bad))]} "
                 f"({next(iter(bad.values()))})")

    def _images_missing(self, m: Manifest, idx: np.ndarray) -> np.ndarray:
        """Manifest rows not yet in the `images` table (DB or parts), or written before the face pipeline's
        columns existed (face_found NULL): to be (re)measured."""
        want = pd.DataFrame({"i": idx, "image_id": m.frame["image_id"].iloc[idx].to_numpy()})
        return store.query_known(self.db, "images", ["dataset", "image_id", "face_found"],
                                 f"SELECT w.i FROM want w WHERE NOT EXISTS (SELECT 1 FROM known k WHERE "
                                 f"k.dataset = '{_q(m.dataset)}' AND k.image_id = w.image_id AND k.face_found "
                                 "IS NOT NULL) ORDER BY w.i", frames={"want": want})["i"].to_numpy(np.int64)

    def _images_table(self, m: Manifest, missing: np.ndarray) -> None:
        """Attributes of the images `missing` from the `images` table, in chunks that survive a kill."""
        for s in range(0, len(missing), ATTR_CHUNK):
            rows = images_rows(m, missing[s:s + ATTR_CHUNK], workers=self.o.workers, progress=self.o.progress)
            store.write_part(self.db, "images", rows, tag=self.run_id)
        if len(missing):
            self.merge()

    def _missing(self, m: Manifest, idx: np.ndarray, models: list[LoadedModel],
                 conds: list[tuple[str, int]]) -> dict[tuple[int, int], np.ndarray]:
        """{(model index, condition index): manifest rows still to compute in this run's inference mode}, by an
        anti-join in DuckDB (rows of other modes are other predictions: they never count as done)."""
        frames = {"wm": pd.DataFrame({"m": range(len(models)), "model_id": [x.id for x in models]}),
                  "wi": pd.DataFrame({"i": idx, "image_id": m.frame["image_id"].iloc[idx].to_numpy()}),
                  "wc": pd.DataFrame({"c": range(len(conds)), "perturbation": [c[0] for c in conds],
                                      "severity": np.array([c[1] for c in conds], np.int32)})}
        sql = f"""
            WITH k AS (SELECT model_id, image_id, perturbation, severity FROM known
                       WHERE dataset = '{_q(m.dataset)}' AND mode = '{_q(self.mode)}'
                             AND model_id IN (SELECT model_id FROM wm)),
                 w AS (SELECT wm.m, wc.c, wi.i, wm.model_id, wi.image_id, wc.perturbation, wc.severity
                       FROM wm, wc, wi)
            SELECT w.m, w.c, list(w.i ORDER BY w.i) AS idx
            FROM w ANTI JOIN k USING (model_id, image_id, perturbation, severity)
            GROUP BY w.m, w.c"""
        got = store.query_known(self.db, "predictions", ["model_id", "dataset", "image_id", "perturbation",
                                                         "severity", "mode"], sql, frames=frames)
        todo = {(int(r.m), int(r.c)): np.asarray(r.idx, dtype=np.int64) for r in got.itertuples()}
        attr = [(k, len(x.attributes)) for k, x in enumerate(models) if x.attributes]
        if attr:  # a prediction counts as done once every attribute of its model has its row too
            frames["wm"] = pd.DataFrame({"m": [k for k, _ in attr], "model_id": [models[k].id for k, _ in attr],
                                         "n_attr": [n for _, n in attr]})
            sql = f"""
                WITH k AS (SELECT model_id, image_id, perturbation, severity, count(DISTINCT attribute) AS n
                           FROM known WHERE dataset = '{_q(m.dataset)}' AND mode = '{_q(self.mode)}'
                                 AND model_id IN (SELECT model_id FROM wm) GROUP BY ALL),
                     w AS (SELECT wm.m, wm.n_attr, wc.c, wi.i, wm.model_id, wi.image_id, wc.perturbation, wc.severity
                           FROM wm, wc, wi)
                SELECT w.m, w.c, list(w.i ORDER BY w.i) AS idx
                FROM w LEFT JOIN k USING (model_id, image_id, perturbation, severity)
                WHERE coalesce(k.n, 0) < w.n_attr GROUP BY w.m, w.c"""
            more = store.query_known(self.db, "attributes", ["model_id", "dataset", "image_id", "perturbation",
                                                             "severity", "mode", "attribute"], sql, frames=frames)
            for r in more.itertuples():
                key = (int(r.m), int(r.c))
                todo[key] = np.union1d(todo.get(key, np.zeros(0, np.int64)), np.asarray(r.idx, dtype=np.int64))
        return todo

    def _labels(self, lm: LoadedModel, m: Manifest) -> dict[str, np.ndarray]:
        """{attribute: float [manifest rows] 0/1, NaN where the image lacks it} for the model's attribute heads:
        `zoo.attributes.attribute_labels` over the manifest's extras (composite targets from the model's config),
        computed once per (model, dataset)."""
        key = (lm.id, m.dataset)
        if key not in self.attr_labels:
            targets = predictor_targets(lm.predictor)
            out = {}
            for name in lm.attributes:
                try:
                    out[name] = np.asarray(attribute_labels(m.frame, name, targets), np.float64)
                except (KeyError, ValueError) as e:  # the dataset does not have it: probabilities, no labels
                    self.log(f"{m.dataset}: no {name!r} labels for {lm.id} ({e}); its rows get label NULL")
                    out[name] = np.full(len(m.frame), np.nan)
            self.attr_labels[key] = out
        return self.attr_labels[key]

    def _predict_dataset(self, m: Manifest, idx: np.ndarray, models: list[LoadedModel],
                         conds: list[tuple[str, int]], todo: dict[tuple[int, int], np.ndarray]) -> None:
        o = self.o
        total = int(sum(len(v) for v in todo.values()))
        if not total:
            self.log(f"{m.dataset}: nothing to compute ({len(idx)} images × {len(models)} models × "
                     f"{len(conds)} conditions in mode {self.mode} already in {self.db}"
                     + (", bad images left out)" if m.dataset in self.bad_rows else ")"))
            return
        image_ids = m.frame["image_id"].to_numpy()
        bar = tqdm(total=total, unit="pred", desc=f"bench {m.dataset}", disable=not o.progress, smoothing=0.05)
        dead: set[int] = set()
        for c, cond in enumerate(conds):
            need = {mi: todo[(mi, c)] for mi in range(len(models)) if (mi, c) in todo}
            if not need:
                continue
            union = np.unique(np.concatenate(list(need.values())))
            for s in range(0, len(union), o.batch_size):
                chunk = union[s:s + o.batch_size]
                base: dict[int, np.ndarray] = {}  # perturbed chunk per base resolution, shared by models
                for mi, rows in need.items():
                    if mi in dead:
                        continue
                    lm = models[mi]
                    # rows and union are sorted, so this model's share of the chunk is one contiguous slice
                    sel = rows[np.searchsorted(rows, chunk[0]):np.searchsorted(rows, chunk[-1], side="right")]
                    if not len(sel):
                        continue
                    try:
                        x = self._inputs(m, sel, chunk, cond, lm.predictor.img_size, base, lm.framing(m))
                        t = time.perf_counter()
                        out = lm.predictor.predict(x, mc_dropout=o.mc_dropout, tta=o.tta, batch_size=o.batch_size)
                        dt = time.perf_counter() - t
                        probs = {a: np.asarray(out[f"attr:{a}"], np.float64) for a in lm.attributes}
                        labels = {a: v[sel] for a, v in self._labels(lm, m).items()} if probs else {}
                    except Exception as e:  # one model failing (OOM, a bug) must not stop the others
                        dead.add(mi)
                        self.skipped[lm.id] = f"failed while predicting: {type(e).__name__}: {e}"
                        self.log(f"model {lm.id} failed on {m.dataset}/{cond[0]}@{cond[1]}: {e!r}; skipping it")
                        continue
                    lm.latency_s += dt
                    lm.images += len(sel)
                    self.computed += len(sel)
                    if probs:
                        self.buffer.add_attributes(lm.id, m.dataset, image_ids[sel], cond, probs, labels, self.run_id,
                                                   self.mode)
                    self.buffer.add(lm.id, m.dataset, image_ids[sel], cond, out, 1000 * dt / len(sel), self.run_id,
                                    self.mode)
                    bar.update(len(sel))
                    self.flush()
        bar.close()

    def _embed_dataset(self, m: Manifest, idx: np.ndarray, models: list[LoadedModel]) -> None:
        """The embedding map (`bench.embedding`) of each zoo model on this dataset whose stored map lacks one of the
        selected images: features of the clean images (`Predictor.embed`), projected once over the selection plus
        the images the stored map already has (so a refit replaces every row of the old map, never half of it),
        written as one part (`replace` merge: a refit overwrites). A map that has every selected image is left as
        it is, so a repeated or resumed run writes nothing. Peers have no features: skipped."""
        from bench.embedding import project

        cand = [lm for lm in models if callable(getattr(lm.predictor, "embed", None)) and lm.id not in self.skipped]
        no_features = [lm.id for lm in models if not callable(getattr(lm.predictor, "embed", None))]
        if no_features:
            self.log(f"{m.dataset}: no embedding map for {', '.join(no_features)} (no features: peers)")
        if not cand:
            return
        image_ids = m.frame["image_id"].to_numpy()
        known = store.query_known(self.db, "embeddings", ["model_id", "dataset", "image_id"],
                                  f"SELECT DISTINCT model_id, image_id FROM known WHERE dataset = '{_q(m.dataset)}' "
                                  "AND model_id IN (SELECT model_id FROM wm)",
                                  frames={"wm": pd.DataFrame({"model_id": [lm.id for lm in cand]})})
        have = {k: set(v) for k, v in known.groupby("model_id")["image_id"]}

        def missing(bad: np.ndarray) -> list[tuple[LoadedModel, set]]:
            want = set(image_ids[np.setdiff1d(idx, bad)])
            return [(lm, have.get(lm.id, set())) for lm in cand if not want <= have.get(lm.id, set())]

        bad = np.fromiter(self.bad_rows.get(m.dataset, ()), np.int64)
        todo = missing(bad)
        if todo:  # about to decode: files that no longer decode are left out (and never asked of a map again)
            self._find_bad_images(m, np.setdiff1d(idx, bad))
            bad = np.fromiter(self.bad_rows.get(m.dataset, ()), np.int64)
            todo = missing(bad)
        if not todo:
            self.log(f"{m.dataset}: embedding maps of {len(cand)} model(s) already in {self.db}")
            return
        where = pd.Index(image_ids)
        for lm, old in todo:
            extra = where.get_indexer(list(old)) if old else np.zeros(0, np.int64)
            rows = np.setdiff1d(np.union1d(idx, extra[extra >= 0]), bad)
            t = time.perf_counter()
            try:
                feats = self._features(lm, m, rows)
                xy, method = project(feats)
            except Exception as e:  # one model's map failing must not stop the others
                self.skipped[lm.id] = f"embedding map failed: {type(e).__name__}: {e}"
                self.log(f"model {lm.id}: embedding map on {m.dataset} failed: {e!r}; skipping it")
                continue
            store.write_part(self.db, "embeddings", pd.DataFrame({
                "model_id": lm.id, "dataset": m.dataset, "image_id": image_ids[rows], "method": method,
                "x": xy[:, 0], "y": xy[:, 1]}), tag=self.run_id)
            dt = time.perf_counter() - t
            self.embedded[f"{lm.id}@{m.dataset}"] = {"images": len(rows), "method": method, "seconds": round(dt, 1),
                                                      "dims": int(feats.shape[1])}
            self.log(f"{m.dataset}: embedding map of {lm.id}: {method} of {feats.shape[1]}-d features, "
                     f"{len(rows)} images, {dt:.1f} s")
            self.merge()  # each map visible as soon as it is fitted (a merge takes well under a second)

    def _features(self, lm: LoadedModel, m: Manifest, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), D]: the model's features of the clean images at `rows` (sorted manifest rows)."""
        size, framing = lm.predictor.img_size, lm.framing(m)
        src = self._images_at(m, size, framing)
        if isinstance(src, _Decoder) and not np.isin(rows, self.selected[m.dataset]).all():
            src = _Decoder(m, size, framing, rows, self.o.progress)  # rows of an earlier map outside this selection
        step = max(self.o.batch_size, 256)
        parts = [lm.predictor.embed(np.asarray(src[rows[s:s + step]]), batch_size=self.o.batch_size)
                 for s in range(0, len(rows), step)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def _inputs(self, m: Manifest, sel: np.ndarray, chunk: np.ndarray, cond: tuple[str, int], size: int,
                base: dict, framing: str) -> np.ndarray:
        """uint8 [len(sel), size, size, 3]: cached clean pixels, or the shared perturbed chunk resized."""
        if cond[0] == "none":
            return np.asarray(self._images_at(m, size, framing)[sel])
        bsize = max(PERTURB_SIZE, size)
        if (bsize, framing) not in base:
            base[bsize, framing] = apply(cond[0], np.asarray(self._images_at(m, bsize, framing)[chunk]), cond[1])
        pos = np.searchsorted(chunk, sel)
        imgs = base[bsize, framing][pos]
        if bsize == size:
            return imgs
        return np.stack([square_resize(x, size) for x in imgs])

    def _images_at(self, m: Manifest, size: int, framing: str):
        return _images(m, size, framing, self.cache, self.selected[m.dataset], self.o.progress, self.no_cache,
                       self.log)


def _q(s: str) -> str:
    return s.replace("'", "''")


def run(opts: RunOptions) -> dict:
    """Run the bench with `opts`; returns a summary (rows written, models benched and skipped, time)."""
    return Runner(opts).run()

