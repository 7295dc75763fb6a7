"""Run configuration: a plain dataclass read from YAML. A run's identity is the hash of its config plus the hash of
the data manifest it trained on, so the same config on the same data is the same run (and is skipped when done).

A config file is a non-empty YAML mapping of TrainConfig fields; omitted fields take the defaults below. Every
config is validated before any data work (types, ranges, registered names), and all of its problems are reported
together in one `ConfigError`.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

TASKS = ("age", "gender", "race")  # and attr:NAME (zoo.attributes)
MIN_IMG_SIZE = 16  # smaller inputs collapse to nothing in the backbones' strided stages
SOURCE_SYNTAX = "real | synth:<id> | mixed:<fraction>:<id>"


class ConfigError(ValueError):
    """Every problem of one config, on one line: `invalid config x.yaml: lr must be > 0 (got -0.1); ...`."""

    def __init__(self, problems: list[str], source: str | Path | None = None):
        self.problems = list(problems)
        where = f" {source}" if source is not None else ""
        super().__init__(f"invalid config{where}: " + "; ".join(self.problems))


def parse_source(source: str) -> tuple[str, float, str]:
    """real | synth:<id> | mixed:<fraction>:<id> -> (kind, synthetic fraction, synth id)."""
    if source == "real":
        return "real", 0.0, ""
    kind, _, rest = source.partition(":")
    if kind == "synth" and rest:
        return kind, 1.0, rest
    if kind == "mixed" and rest.count(":") >= 1:
        frac, synth_id = rest.split(":", 1)
        try:
            f = float(frac)
        except ValueError:
            f = math.nan
        if f > 0 and synth_id:
            return kind, f, synth_id
    raise ValueError(f"source must be {SOURCE_SYNTAX} (fraction > 0), got {source!r}")


@dataclass
class TrainConfig:
    name: str = ""  # a human label; not part of the identity
    dataset: str = "utkface"  # the primary dataset: val and test splits, model selection
    # More training data: [{name, weight (default 1), framing (default the dataset's own)}]. Each batch draws from
    # the datasets in proportion to their weights; a task a dataset has no label for is masked out of the loss.
    # Naming the primary here changes its weight or framing; a dataset not named trains on its own only.
    datasets: list | None = None
    source: str = "real"  # real | synth:<id> | mixed:<fraction>:<id>  (synthetic training data)
    backbone: str = "resnet18"
    pretrained: str | None = None  # None | "imagenet" (packaged weights) | path to a local checkpoint
    backbone_kwargs: dict = field(default_factory=dict)
    formulation: str = "dldl"
    formulation_kwargs: dict = field(default_factory=dict)
    age_max: int = 100
    # any of age, gender, race, and attr:NAME (a binary attribute in a dataset's extras, or a target below)
    tasks: list = field(default_factory=lambda: ["age", "gender"])
    loss_weights: dict = field(default_factory=lambda: {"age": 1.0, "gender": 1.0, "race": 0.5})  # by task; else 1
    gender_loss: str = "bce"
    gender_loss_kwargs: dict = field(default_factory=dict)
    # Composite attribute targets, declared as data (zoo.attributes): {name: "Blond_Hair | Eyeglasses"} (| & ! ( ))
    targets: dict = field(default_factory=dict)
    # Each attribute head's binary loss (zoo.gender registry) and its arguments: {attr:NAME: {name: focal, gamma: 5,
    # alpha: 0.25, label_smoothing: 0.1}}; a head not named trains with bce.
    head_losses: dict = field(default_factory=dict)
    dropout: float = 0.2  # before the heads; > 0 enables MC-Dropout at inference
    img_size: int = 64
    augment: str = "light"  # none | light | strong
    train_fraction: float = 1.0
    age_balance: str = "none"  # none | inv_freq | sqrt_inv | lds | balanced_sampler
    gender_balance: str = "none"  # none | undersample | reweight
    # Balancing by any group column (zoo.balance GROUP_BALANCE): {column: gender | race | <attribute or target>,
    # strategy: undersample | weights, weights: {female: 1.0, male: 0.1}}; weights apply to every head's loss. With
    # gender_balance too, it applies to what gender_balance kept.
    group_balance: dict | None = None
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 2e-3
    weight_decay: float = 0.05
    backbone_lr_mult: float = 1.0  # < 1 fine-tunes a pretrained backbone more gently than the heads
    freeze: str = "none"  # none | linear_probe | stages:K (first K stages frozen, their BatchNorm in eval mode)
    schedule: str = "cosine"  # cosine | plateau
    warmup_epochs: float = 1.0
    epochs: int = 20
    max_steps: int | None = None  # equal step budget for sweeps; overrides epochs
    batch_size: int = 64
    patience: int = 6  # early stopping on the val score (epochs without improvement; zoo.train selection)
    # The val score that picks the best epoch (SELECT_SCORES): auto = the first task with val labels of age MAE,
    # gender accuracy, attribute balanced accuracy at 0.5. attr_auc suits an attribute model whose decision
    # threshold is chosen on val afterwards, where accuracy at 0.5 is a noisy selector. SCORE@DATASET scores the val
    # split of another dataset of the mix (gender_acc@celebahq: the mix's gender accuracy on CelebA-HQ val).
    select: str = "auto"
    ema_decay: float = 0.0  # > 0 evaluates and ships an exponential moving average of the weights (0 = off)
    seed: int = 0
    channels_last: bool = True
    # How a run executes, never what it is (RUNTIME_FIELDS: out of the identity at any value): auto (CUDA when
    # available, else CPU) | cpu | cuda | cuda:N. CUDA trains with mixed precision (bf16 where supported, else fp16
    # with a grad scaler); under torchrun each process takes the GPU of its LOCAL_RANK.
    device: str = "auto"
    compile: bool = False  # torch.compile the training forward pass (the shipped weights are the same module's)

    def identity(self) -> dict:
        d = asdict(self)
        d.pop("name")
        for key in RUNTIME_FIELDS:
            d.pop(key)
        for key, off in LATER_FIELDS.items():
            if d[key] == off:
                d.pop(key)
        return d

    def run_id(self, manifest_hash: str) -> str:
        blob = json.dumps({"config": self.identity(), "data": manifest_hash}, sort_keys=True).encode()
        return f"{self.backbone}-{self.formulation}-{hashlib.sha1(blob).hexdigest()[:8]}"

    def dataset_mix(self) -> list[dict]:
        """[{name, weight, framing}] with the primary dataset first (framing None = the dataset's own)."""
        from zoo.faces import FRAMINGS

        mix = [{"name": self.dataset, "weight": 1.0, "framing": None}]
        for e in self.datasets or []:
            if not isinstance(e, dict) or not isinstance(e.get("name"), str):
                raise ValueError(f"datasets entries are {{name, weight, framing}} mappings, got {e!r}")
            extra = set(e) - {"name", "weight", "framing"}
            if extra:
                raise ValueError(f"unknown keys {sorted(extra)} in datasets entry {e['name']!r}")
            w = float(e.get("weight", 1.0))
            if not w > 0:
                raise ValueError(f"dataset weight must be > 0, got {w} for {e['name']!r}")
            if e.get("framing") not in (None, *FRAMINGS):
                raise ValueError(f"framing must be one of {FRAMINGS}, got {e.get('framing')!r}")
            entry = {"name": e["name"], "weight": w, "framing": e.get("framing")}
            if e["name"] == self.dataset:
                mix[0] = entry
            elif any(m["name"] == e["name"] for m in mix):
                raise ValueError(f"dataset {e['name']!r} is listed twice in datasets")
            else:
                mix.append(entry)
        return mix

    def problems(self) -> list[str]:
        """Everything wrong with the values (types, ranges, registered names), without touching any data."""
        out, bad = [], set()
        for f in fields(self):
            p = type_problem(f.name, f.type, getattr(self, f.name))
            if p:
                out.append(p)
                bad.add(f.name)
        for name, check in _CHECKS:
            if name not in bad:
                p = check(getattr(self, name), self)
                if p:  # checks say "must be …" or, where that reads badly, the whole sentence
                    out.append(p if p.startswith(name) else f"{name} {p}")
        return out

    def data_problems(self) -> list[str]:
        """What the config names that is not on this machine: datasets (a reader or a scanned manifest), the
        synthetic set of `source`, a local `pretrained` checkpoint. Checks files only, decodes nothing."""
        from zoo.data.manifest import manifest_path
        from zoo.data.readers import list_readers

        out = []
        names = [self.dataset] + [e["name"] for e in self.datasets or [] if isinstance(e, dict)
                                  and isinstance(e.get("name"), str)]
        for n in dict.fromkeys(names):
            if n not in list_readers() and not manifest_path(n).exists():
                out.append(f"dataset {n!r} is neither a reader ({', '.join(list_readers())}) nor a scanned manifest "
                           f"(python -m zoo data scan --dataset NAME --root PATH)")
        try:
            kind, _, synth_id = parse_source(self.source)
        except ValueError:
            kind = "real"  # reported by problems()
        if kind != "real" and not manifest_path(f"synth_{synth_id}").exists():
            out.append(f"source: no synthetic set {synth_id!r} (python -m synth sample … --name {synth_id})")
        if self.pretrained not in (None, "imagenet") and not Path(self.pretrained).is_file():
            out.append(f"pretrained: no checkpoint file {self.pretrained!r}")
        return out

    def validate(self, data: bool = False, source: str | Path | None = None) -> "TrainConfig":
        """Raise one ConfigError with every problem; `data` also checks that the named data exists."""
        problems = self.problems()
        if data:
            problems += self.data_problems()
        if problems:
            raise ConfigError(problems, source)
        return self

    @classmethod
    def from_dict(cls, d: Any, source: str | Path | None = None) -> "TrainConfig":
        if not isinstance(d, dict):
            raise ConfigError([f"a config is a mapping of TrainConfig fields, got {type(d).__name__} {d!r:.60}"],
                              source)
        known = {f.name: f for f in fields(cls)}
        problems = []
        unknown = [k for k in d if k not in known]
        if unknown:
            problems.append(f"unknown config keys: {sorted(map(str, unknown))}; known: {sorted(known)}")
        cfg = cls(**{k: coerce(known[k].type, v) for k, v in d.items() if k in known})
        problems += cfg.problems()
        if problems:
            raise ConfigError(problems, source)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "TrainConfig":
        """A config file plus `KEY=VALUE` overrides (values in YAML syntax). An empty file is an error: a config
        names at least what it trains, so an accidental empty file never trains a default model."""
        d = read_yaml(path)
        if d is None or d == {}:
            raise ConfigError(["it is empty; a config is a non-empty mapping of TrainConfig fields, e.g. "
                               "`backbone: resnet18`"], path)
        if not isinstance(d, dict):
            raise ConfigError([f"a config is a mapping of TrainConfig fields, got {type(d).__name__} {d!r:.60}"], path)
        return cls.from_dict({**d, **parse_overrides(overrides or [])}, source=path)

    def to_yaml(self) -> str:
        return yaml.safe_dump(asdict(self), sort_keys=False)


# Fields added after runs were registered, with the value that reproduces the behaviour from before they existed.
# At that value they stay out of the identity, so adding a field never changes a registered run's id (and never
# makes `python -m zoo train` retrain a finished run). A new field goes here, not only into TrainConfig.
LATER_FIELDS = {"ema_decay": 0.0, "datasets": None, "targets": {}, "head_losses": {}, "group_balance": None,
                "select": "auto"}
# Val scores an epoch can be selected on (`select`; zoo.train): lower is better for mae, higher for the others.
SELECT_SCORES = ("auto", "mae", "gender_acc", "attr_bacc", "attr_auc")


def parse_select(value: str, cfg: "TrainConfig") -> tuple[str, str]:
    """`select` -> (score, dataset): `gender_acc` scores the primary dataset's val split, `gender_acc@celebahq` the val
    split of celebahq, which must be in the mix."""
    score, _, dataset = value.partition("@")
    if score not in SELECT_SCORES or (dataset and score == "auto"):
        raise ValueError(f"must be one of {', '.join(SELECT_SCORES)}, optionally SCORE@DATASET (got {value!r})")
    names = [m["name"] for m in cfg.dataset_mix()]
    if dataset and dataset not in names:
        raise ValueError(f"select {value!r} names {dataset!r}, which is not in the datasets trained on "
                         f"({', '.join(names)})")
    return score, dataset or cfg.dataset


# Fields that say how a run executes (hardware, compiler), not what it trains: out of the identity at every value, so
# the same config trained on a CPU, a GPU or under torchrun is the same run (README "Scaling up" says how close their
# results come).
RUNTIME_FIELDS = ("device", "compile")
DEVICE_SYNTAX = "auto | cpu | cuda | cuda:N"


def read_yaml(path: str | Path) -> Any:
    """The YAML document in a file; an unreadable or invalid file is a one-line ValueError naming it."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"invalid YAML in {path}{where}: {problem}") from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def parse_overrides(items: list[str]) -> dict:
    """`--set KEY=VALUE` items -> {key: YAML value}; a malformed item is a ValueError."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(f"--set {key.strip()}: {value!r} is not a YAML value") from None
    return out


def _base_types(annotation: str) -> set[str]:
    return {t.strip() for t in str(annotation).split("|")}


_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool, "list": list, "dict": dict}


def type_problem(name: str, annotation: str, value: Any) -> str | None:
    """The dataclass annotation is the contract (`int | None`, `float`, …); bool is not accepted as a number."""
    allowed = _base_types(annotation)
    if value is None and "None" in allowed:
        return None
    kinds = [k for k in allowed if k != "None"]
    ok = any(isinstance(value, _TYPES[k]) and not (k in ("int", "float") and isinstance(value, bool))
             for k in kinds)
    if ok:
        return None
    want = " or ".join({"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false",
                        "list": "a list", "dict": "a mapping"}[k] for k in kinds)
    return f"{name} must be {want}{' or null' if 'None' in allowed else ''} (got {value!r:.60})"


def coerce(annotation: str, value: Any) -> Any:
    """YAML 1.1 reads `1e-3` (no dot) as a string: in a float field, a string that is a number is that number."""
    if _base_types(annotation) == {"float"} and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _range(test, text: str):
    return lambda v, cfg: None if test(v) else f"must be {text} (got {v!r})"


def _one_of(choices):
    """`choices`: a callable giving the registered names now (registries can grow after import)."""

    def check(v, cfg):
        names = list(choices())
        return None if v in names else f"must be one of {', '.join(map(str, names))} (got {v!r})"

    return check


def _registered(module: str, table: str):
    """The names in the zoo.plugins Registry `module.table`, imported when a config is first checked."""

    def names() -> list[str]:
        return getattr(importlib.import_module(module), table).names()

    return names


def _pretrained(v, cfg) -> str | None:
    from zoo.pretrained import PACKAGED

    if v == "":
        return "pretrained must be null, imagenet or a checkpoint path (got '')"
    if v == "imagenet" and cfg.backbone not in PACKAGED:
        return (f"pretrained: no packaged ImageNet weights for backbone {cfg.backbone!r} (available: "
                f"{', '.join(sorted(PACKAGED))})")
    return None


def _tasks(v, cfg) -> str | None:
    from zoo.attributes import is_attribute_task

    bad = [t for t in v if not (isinstance(t, str) and (t in TASKS or is_attribute_task(t)))]
    if not v or bad or len(set(map(str, v))) != len(v):
        return f"must be a non-empty list of distinct {', '.join(TASKS)} or attr:NAME (got {v!r})"
    return None


def _loss_weights(v, cfg) -> str | None:
    tasks = set(TASKS) | {t for t in (cfg.tasks if isinstance(cfg.tasks, list) else []) if isinstance(t, str)}
    bad = {k: w for k, w in v.items() if k not in tasks or isinstance(w, bool) or not isinstance(w, (int, float))
           or not w >= 0}
    return f"must map {', '.join(sorted(tasks))} to numbers >= 0 (got {bad!r})" if bad else None


def _parses(parse, prefix: str = ""):
    """A check from a parser that raises ValueError (or TypeError) saying what is wrong: `parse(value, config)`."""

    def check(v, cfg) -> str | None:
        try:
            parse(v, cfg)
        except (ValueError, TypeError) as e:
            return f"{prefix}{e}"
        return None

    return check


def _parse_targets(v: dict, cfg) -> None:
    from zoo.attributes import NAME, parse_target

    for name, expr in v.items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a target name (letters, digits, _ . -)")
        try:
            parse_target(expr, known=None)  # the names it uses are checked against the data when it is loaded
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None


def _parse_head_losses(v: dict, cfg) -> None:
    from zoo.attributes import is_attribute_task
    from zoo.gender import loss_problem

    heads = [t for t in (cfg.tasks if isinstance(cfg.tasks, list) else []) if is_attribute_task(t)]
    for task, spec in v.items():
        if task not in heads:
            raise ValueError(f"{task!r} is not an attribute task of tasks (attribute tasks: {', '.join(heads) or 'none'}"
                             f"; the gender head takes gender_loss)")
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"{task}: a head loss is a mapping {{name: <binary loss>, ...its arguments}}, got "
                             f"{spec!r:.60}")
        problem = loss_problem(spec["name"], {k: a for k, a in spec.items() if k != "name"})
        if problem:
            raise ValueError(f"{task}: {problem}")


def _parse_loss_kwargs(v: dict, cfg) -> None:
    from zoo.gender import GENDER_LOSSES, loss_problem

    problem = loss_problem(cfg.gender_loss, v) if cfg.gender_loss in GENDER_LOSSES else None  # else: gender_loss's
    if problem:
        raise ValueError(problem)


def _group_balance(v, cfg) -> str | None:
    from zoo.balance import group_spec_problem

    return None if v is None else group_spec_problem(v)


# (field, check(value, config) -> problem or None), run only on fields of the right type.
_CHECKS = [
    ("dataset", _range(bool, "a dataset name")),
    ("datasets", _parses(lambda v, cfg: cfg.dataset_mix(), "datasets: ")),
    ("source", _parses(lambda v, cfg: parse_source(v))),
    ("backbone", _one_of(_registered("zoo.backbones", "BACKBONES"))),
    ("pretrained", _pretrained),
    ("formulation", _one_of(_registered("zoo.formulations", "FORMULATIONS"))),
    ("age_max", _range(lambda v: v >= 1, ">= 1")),
    ("tasks", _tasks),
    ("loss_weights", _loss_weights),
    ("gender_loss", _one_of(_registered("zoo.gender", "GENDER_LOSSES"))),
    ("gender_loss_kwargs", _parses(_parse_loss_kwargs, "gender_loss_kwargs: ")),
    ("targets", _parses(_parse_targets, "targets: ")),
    ("head_losses", _parses(_parse_head_losses, "head_losses: ")),
    ("dropout", _range(lambda v: 0 <= v < 1, "in [0, 1)")),
    ("img_size", _range(lambda v: v >= MIN_IMG_SIZE, f">= {MIN_IMG_SIZE}")),
    ("augment", _one_of(_registered("zoo.augment", "AUGMENTS"))),
    ("train_fraction", _range(lambda v: 0 < v <= 1, "in (0, 1]")),
    ("age_balance", _one_of(_registered("zoo.balance", "AGE_BALANCE"))),
    ("gender_balance", _one_of(_registered("zoo.balance", "GENDER_BALANCE"))),
    ("group_balance", _group_balance),
    ("optimizer", _one_of(_registered("zoo.optim", "OPTIMIZERS"))),
    ("lr", _range(lambda v: 0 < v < math.inf, "> 0")),
    ("weight_decay", _range(lambda v: 0 <= v < math.inf, ">= 0")),
    ("backbone_lr_mult", _range(lambda v: 0 < v < math.inf, "> 0")),
    ("freeze", _parses(lambda v, cfg: importlib.import_module("zoo.optim").parse_freeze(v))),
    ("schedule", _one_of(_registered("zoo.optim", "SCHEDULES"))),
    ("warmup_epochs", _range(lambda v: 0 <= v < math.inf, ">= 0")),
    ("epochs", _range(lambda v: v >= 1, ">= 1")),
    ("max_steps", _range(lambda v: v is None or v >= 1, "null or >= 1")),
    ("batch_size", _range(lambda v: v >= 1, ">= 1")),
    ("patience", _range(lambda v: v >= 1, ">= 1")),
    ("select", _parses(parse_select)),
    ("ema_decay", _range(lambda v: 0 <= v < 1, "in [0, 1)")),
    ("seed", _range(lambda v: v >= 0, ">= 0")),
    ("device", _range(lambda v: re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None, DEVICE_SYNTAX)),
]


def expand_grid(spec: Any, source: str | Path | None = None) -> list[TrainConfig]:
    """A sweep file: `base:` (shared keys) and `runs:` (a list of overrides, each one run), or `grid:` (a dict of
    key -> list of values, every combination). Every run is validated; all problems are reported together."""
    import itertools

    shape = ("a sweep is a mapping with `runs:` (a list of mappings) and/or `grid:` (key -> list of values), "
             "optionally `base:` (a mapping)")
    if not isinstance(spec, dict) or set(spec) - {"base", "runs", "grid"}:
        raise ConfigError([shape], source)
    base, runs, grid = spec.get("base") or {}, spec.get("runs") or [], spec.get("grid") or {}
    if (not isinstance(base, dict) or not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs)
            or not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values())
            or not (runs or grid)):
        raise ConfigError([shape], source)
    overrides = [(f"runs[{i}] {over.get('name', '')}".strip(), over) for i, over in enumerate(runs)]
    keys = list(grid)
    if keys:  # product() of nothing is one empty combination: the base alone, which no sweep asked for
        overrides += [(f"grid {combo}", dict(zip(keys, combo)))
                      for combo in itertools.product(*(grid[k] for k in keys))]
    configs, problems = [], []
    for label, over in overrides:
        try:
            configs.append(TrainConfig.from_dict({**base, **over}))
        except ConfigError as e:
            problems += [f"{label}: {p}" for p in e.problems]
    if problems:
        raise ConfigError(problems, source)
    return configs
