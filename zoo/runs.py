"""A registered run as a typed record: `RunRecord.load` / `from_json` are the one place a `run.json` is parsed
(`from_row`: its copy in a bench `models` row's `info`), `to_row()` the one place a run becomes a bench `models`
row, and `preprocessing()` the one place a run's input recipe (size, resize and crop rule, framing, face pipeline)
is derived. Light: no torch, no cv2 (the dashboard reads runs without them).

Writers (the trainer, `zoo ensemble`, AdaBN) still build the record as a dict and write it with
`zoo.registry.write_run`; `RunRecord.to_dict()` gives back exactly the file's content.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

RUN_FILE = "run.json"
KINDS = ("single", "ensemble", "adapted")
# run.json's top-level keys, in the order the trainer writes them (unknown keys are kept in `extra`)
_FIELDS = ("id", "kind", "name", "members", "parent", "config", "data", "commit", "created", "device", "params",
           "flops", "infer_img_s", "train_img_s", "epochs_run", "best_epoch", "steps", "checkpoint", "metrics")
# how every zoo network reads an image (zoo.data.cache.square_resize, zoo.inference.to_batch, zoo.export metadata)
RESIZE_RULE = ("canonical face crop -> centre square -> img_size x img_size (cv2 INTER_AREA when shrinking, "
               "INTER_LINEAR when enlarging: zoo.data.cache.square_resize)")
CROP_RULE = "centre square of the canonical face crop (5-point similarity alignment onto zoo.faces.TEMPLATE)"
INPUT_RULE = "float32 [batch, 3, img_size, img_size], RGB, values in [0, 1] (pixel / 255)"
NORMALISE_RULE = "inside the network: (x - mean) / std of its backbone"

Lookup = Callable[[str], "RunRecord"]


@dataclass(frozen=True)
class Preprocessing:
    """How a run's network is fed: everything a caller needs to turn a face photo into its input."""
    img_size: int
    framing: tuple[tuple[str, str | None], ...] = ()  # (dataset, framing its config trained it with; None: own)
    resize: str = RESIZE_RULE
    crop: str = CROP_RULE
    input: str = INPUT_RULE
    normalise: str = NORMALISE_RULE

    def framing_for(self, dataset: str) -> str | None:
        return dict(self.framing).get(dataset)

    @property
    def face_pipeline(self) -> str:
        """The face pipeline version (detector, alignment template, crop size) the canonical crops come from."""
        from zoo.faces import pipeline_version  # cv2: only when asked

        return pipeline_version()

    @property
    def face_crop_size(self) -> int:
        from zoo.faces import CROP_SIZE

        return CROP_SIZE


@dataclass(frozen=True, eq=False)
class RunRecord:
    """One `artifacts/runs/<id>/run.json`. Attributes are the file's top-level keys (None when absent). Not a
    mapping: read attributes, or `to_dict()` for the file's content as a plain dict."""
    id: str
    kind: str
    name: str = ""
    config: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    commit: str | None = None
    created: str | None = None
    device: str | None = None
    params: int | None = None
    flops: int | None = None
    infer_img_s: float | None = None
    train_img_s: float | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    steps: int | None = None
    checkpoint: str | None = None
    metrics: dict = field(default_factory=dict)
    members: tuple[str, ...] = ()
    parent: str | None = None
    extra: dict = field(default_factory=dict)  # keys this class does not know (kept for the round trip)
    present: tuple[str, ...] = field(default=(), repr=False)  # the file's keys, in its order (absent ≠ null)

    # ----- loading ----------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping) -> RunRecord:
        if isinstance(d, RunRecord):
            return d
        if not isinstance(d, Mapping) or not d.get("id"):
            raise ValueError(f"a run record is a mapping with an id, got {type(d).__name__}")
        kind = d.get("kind") or "single"
        if kind not in KINDS:
            raise ValueError(f"{d['id']}: unknown run kind {kind!r} (known: {', '.join(KINDS)})")
        known = {k: d[k] for k in _FIELDS if k in d}
        known["kind"] = kind
        for k in ("config", "data", "metrics"):
            known[k] = dict(known.get(k) or {})
        known["members"] = tuple(known.get("members") or ())
        known["name"] = known.get("name") or ""
        return cls(**known, extra={k: v for k, v in d.items() if k not in _FIELDS}, present=tuple(d))

    @classmethod
    def from_json(cls, text: str | bytes) -> RunRecord:
        """The record of a run.json's text. ValueError: not JSON, or not a run record."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_row(cls, row: Mapping) -> RunRecord | None:
        """The run record a bench `models` row carries in `info` (what `to_row` wrote); None where it carries none:
        an external peer's description, an empty or unreadable `info`."""
        info = row.get("info")
        try:
            if isinstance(info, (str, bytes)) and info:
                return cls.from_json(info)
            return cls.from_dict(info) if isinstance(info, Mapping) else None
        except (ValueError, TypeError):
            return None

    @classmethod
    def load(cls, path_or_id: str | Path, root: Path | None = None) -> RunRecord:
        """The record of a run.json path, a run folder, or a model id (in the registry at `root`). The only parser
        of run.json. KeyError: no such model; ValueError: not a run record."""
        p = Path(path_or_id)
        if p.name != RUN_FILE:
            if isinstance(path_or_id, str) and not p.is_dir():  # a model id
                from zoo.paths import runs_dir

                if "/" in path_or_id or "\\" in path_or_id or path_or_id.startswith("."):
                    raise ValueError(f"invalid model id {path_or_id!r}")
                p = (root or runs_dir()) / path_or_id
            p = p / RUN_FILE
        if not p.is_file():
            raise KeyError(f"no run record {p}")
        return cls.from_json(p.read_text())

    @classmethod
    def load_all(cls, root: Path | None = None) -> list[RunRecord]:
        """Every <root>/<id>/run.json, by id; a hand-edited or unreadable file is skipped."""
        from zoo.paths import runs_dir

        root = root or runs_dir()
        out = []
        for p in sorted(root.glob(f"*/{RUN_FILE}")) if root.is_dir() else []:
            try:
                out.append(cls.load(p))
            except (OSError, ValueError, TypeError):
                continue
        return out

    def to_dict(self) -> dict:
        """Exactly the file's content (keys the file lacked stay out)."""
        return dict(self._content)

    @cached_property
    def _content(self) -> dict:
        def value(k):
            v = getattr(self, k) if k in _FIELDS else self.extra[k]
            return list(v) if k == "members" else v

        d = {k: value(k) for k in self.present if k in _FIELDS or k in self.extra}
        for k in (*_FIELDS, *self.extra):  # set on a record made in code, not read from a file
            if k not in d and (k in self.extra or getattr(self, k) not in (None, {}, (), "")):
                d[k] = value(k)
        return d

    def __eq__(self, other: object) -> bool:  # the same file content (key order and unset defaults aside)
        return self._content == other._content if isinstance(other, RunRecord) else NotImplemented

    __hash__ = None  # type: ignore[assignment]

    # ----- derived ------------------------------------------------------------------------------------------------
    @property
    def display_name(self) -> str:
        return self.name or self.id

    @property
    def img_size(self) -> int | None:
        v = self.config.get("img_size")
        return int(v) if isinstance(v, (int, float)) else None

    @property
    def dataset(self) -> str:
        """The (primary) dataset it was trained on."""
        return self.config.get("dataset") or self.data.get("dataset") or ""

    @property
    def adapted_to(self) -> str | None:
        return self.data.get("adapted_to")

    @property
    def test_mae(self) -> float | None:
        return (self.metrics.get("test") or {}).get("mae")

    @property
    def val_mae(self) -> float | None:
        return (self.metrics.get("val") or {}).get("mae")

    def attribute_threshold(self, name: str) -> float | None:
        """The decision threshold its training chose on val for attribute head `name` (`metrics.attributes`), or
        None when it chose none (not an attribute model, or an unreadable value)."""
        try:
            t = float(self.metrics["attributes"][name]["threshold"])
        except (KeyError, TypeError, ValueError):
            return None
        return t if 0.0 <= t <= 1.0 else None

    @property
    def checkpoint_file(self) -> str:
        return self.checkpoint or "best.safetensors"

    @cached_property
    def train_config(self):
        """The zoo.config.TrainConfig of a single or adapted run (None for an ensemble, or a config this version
        cannot parse)."""
        if self.kind == "ensemble":
            return None
        from zoo.config import ConfigError, TrainConfig

        try:
            return TrainConfig.from_dict({"name": self.name, **self.config})
        except (ConfigError, TypeError, ValueError):
            return None

    def framing(self, dataset: str, lookup: Lookup | None = None, root: Path | None = None) -> str | None:
        """The framing this model reads `dataset` with: the one its config trained that dataset with (None: the
        dataset's own). Ensembles agree with their members or use the dataset's own; adapted runs follow their
        parent."""
        get = lookup or (lambda m: RunRecord.load(m, root))
        if self.kind == "ensemble":
            found = {get(m).framing(dataset, get) for m in self.members}
            return found.pop() if len(found) == 1 else None
        if self.kind == "adapted" and self.parent:
            return get(self.parent).framing(dataset, get)
        for e in self.config.get("datasets") or []:
            if isinstance(e, dict) and e.get("name") == dataset and e.get("framing"):
                return e["framing"]
        return None

    def network_run(self, lookup: Lookup | None = None, root: Path | None = None) -> RunRecord:
        """The single run whose config built this run's network (itself, or an adapted run's parent)."""
        if self.kind == "adapted" and self.parent:
            return (lookup or (lambda m: RunRecord.load(m, root)))(self.parent).network_run(lookup, root)
        return self

    def preprocessing(self, lookup: Lookup | None = None, root: Path | None = None) -> Preprocessing:
        """Its input recipe. Adapted runs use their parent's; an ensemble's size is its largest member's (each
        member resizes to its own)."""
        get = lookup or (lambda m: RunRecord.load(m, root))
        net = self if self.kind == "ensemble" else self.network_run(get)
        cfg = net.config
        datasets = [e["name"] if isinstance(e, dict) else str(e) for e in cfg.get("datasets") or []] \
            or [self.dataset or "utkface"]
        size = net.img_size
        if size is None:
            raise ValueError(f"{self.id}: its config has no img_size")
        return Preprocessing(size, tuple((d, self.framing(d, get)) for d in datasets))

    def to_row(self, runs: Mapping[str, Any] | Lookup | None = None, root: Path | None = None) -> dict:
        """The bench DB's `models` row (columns: bench.store.TABLES["models"]): the one place a run becomes a table
        row (the bench, the dashboard's registry view, its demo data and `zoo list` all use it).

        Ensembles take the member fields that all agree, else `mixed`; members are looked up in `runs` (id ->
        record, or a function), by default in the registry at `root`; a member that cannot be found is left out."""
        if runs is None:
            lookup = lambda m: RunRecord.load(m, root)  # noqa: E731
        elif callable(runs):
            lookup = runs
        else:
            lookup = runs.__getitem__
        cfg = dict(self.config)
        if self.kind == "ensemble":
            members = []
            for m in self.members:
                try:
                    members.append(RunRecord.from_dict(lookup(m)).config)
                except (KeyError, ValueError, OSError):
                    continue
            for k in ("dataset", "source", "pretrained", "tasks", "augment", "train_fraction", "age_balance",
                      "gender_balance", "dropout"):
                vals = {json.dumps(c.get(k), sort_keys=True) for c in members}
                if vals:
                    cfg.setdefault(k, json.loads(vals.pop()) if len(vals) == 1 else "mixed")
        source = cfg.get("source") or "real"
        dataset = cfg.get("dataset") or self.data.get("dataset", "")
        tasks = cfg.get("tasks") or ["age", "gender"]
        num = lambda v: float(v) if isinstance(v, (int, float)) else None  # noqa: E731 ('mixed' → NULL)
        return {"model_id": self.id, "name": self.display_name, "kind": self.kind, "source": "zoo",
                "backbone": cfg.get("backbone"), "formulation": cfg.get("formulation"),
                "img_size": cfg.get("img_size"), "tasks": ",".join(tasks) if isinstance(tasks, list) else str(tasks),
                "pretrained": _fmt_pretrained(cfg.get("pretrained")), "augment": cfg.get("augment"),
                "train_fraction": num(cfg.get("train_fraction")), "age_balance": cfg.get("age_balance"),
                "gender_balance": cfg.get("gender_balance"),
                "training_data": (dataset if source == "real" else f"{dataset}+{source}") if dataset else None,
                "dropout": num(cfg.get("dropout")), "params": self.params, "flops": self.flops,
                "infer_img_s": self.infer_img_s, "info": json.dumps(self.to_dict(), default=str)}


def _fmt_pretrained(p: str | None) -> str | None:
    if not p:
        return None
    return p if p == "imagenet" else Path(str(p)).name


def registry_version(root: Path | None = None) -> str:
    """Changes when a run is added, removed or rewritten (a cache key for readers of the registry)."""
    from zoo.paths import runs_dir

    root = root or runs_dir()
    if not root.is_dir():
        return f"{root}|-"
    return f"{root}|" + "|".join(f"{p.parent.name}:{p.stat().st_mtime_ns}" for p in sorted(root.glob(f"*/{RUN_FILE}")))
