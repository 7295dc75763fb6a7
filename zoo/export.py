"""Exported networks and inference runtimes: ONNX / TorchScript export, and the runtime a predictor runs its
deterministic passes with (`eager`, `compile`, `onnx`, `auto`).

    python -m zoo export ID --format onnx -o model.onnx      # a user copy, preprocessing embedded as metadata
    zoo.load(ID, runtime="onnx").predict(crops)              # the same outputs through ONNX Runtime

What is exported: the single network of a `single` or `adapted` run (an ensemble is its members' mean; export the
members), from a float [B, 3, S, S] RGB batch in [0, 1] (the normalisation is inside the graph) to its raw head
outputs by task (`age`: the formulation's logits / parameters, `gender`: the female logit, `race`: logits) and,
last, the backbone `features` the heads read, in
eval mode (dropout off, BatchNorm folded into the convolutions by the exporter). Decoding (softmax moments, NLL
scale, ordinal sums) stays in `zoo.formulations`, so every runtime shares it. The metadata (ONNX metadata_props,
TorchScript `_extra_files["zoo.json"]`) says how to feed it: input size, layout, value range, the mean/std applied
inside, the resize rule, the framing of the training data and the face-pipeline (alignment template) version.

The runtime cache: `zoo.paths.cache_dir()/exported/<id>-<key>.onnx`, key = hash of the checkpoint(s) and of the
export recipe, so a retrained or re-shipped run never reads a stale file; writes are atomic (concurrent bench
processes may export the same model; the last replace wins with identical content).

Runtimes. `eager` is the reference. `onnx` runs the network in ONNX Runtime on the CPU, `compile` through
`torch.compile`. MC-Dropout needs dropout active at inference, which an eval-mode export removes; so the exported
graph also outputs the backbone features (`features`), and MC passes sample the dropout before the heads in torch
from them (one runtime pass per view, as eager does). A backbone with dropout inside (seed_cnn's dense layer) runs
its MC passes eager. TTA works on the inputs: any runtime. On CUDA every runtime is eager (the fast runtimes here
are CPU paths). `auto` is `DEFAULT_CPU_RUNTIME` on the CPU, measured by
`benchmarks/inference_runtimes.py`, falling back to eager when a model cannot be exported.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from zoo.runs import RunRecord

if TYPE_CHECKING:  # torch is imported on use: `zoo.cli` imports this module for its constants and stays light
    import torch
    from torch import nn

RUNTIMES = ("auto", "eager", "compile", "onnx", "onnx-cached")
FORMATS = ("onnx", "torchscript")
# Measured by benchmarks/inference_runtimes.py (batch 64, every headline input size, this project's 2-core CPU):
# see README "Exported models and CPU runtimes".
DEFAULT_CPU_RUNTIME = "onnx"
RUNTIME_HELP = ("what runs the zoo networks: auto (the measured fastest with equal outputs: "
                f"{DEFAULT_CPU_RUNTIME} on the CPU, eager on CUDA), eager, compile (torch.compile), onnx (ONNX "
                "Runtime on a cached export, made on first use), onnx-cached (ONNX Runtime where an export is cached "
                "already, else eager). MC-Dropout samples its head passes in torch from the runtime's features")
OPSET = 17
EXPORT_RECIPE = f"zoo-export-v3|opset{OPSET}"  # part of the cache key: change it when the exported graph changes
OUTPUT_ORDER = ("age", "gender", "race", "attr")
PARITY_ATOL = 1e-3  # exported vs eager raw outputs (tests/zoo/test_export.py, acceptance of issue 22)


def _with_features(model: nn.Module, as_tuple: bool = False) -> nn.Module:
    """The eval-mode network returning its heads' raw outputs and the backbone features the heads read
    (`features`: MC-Dropout samples its head passes from them in torch). `as_tuple`: a tuple in `.names` order
    (heads in OUTPUT_ORDER, then features), as exporters and tracers need."""
    from torch import nn

    class WithFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.names = [k for k in OUTPUT_ORDER if getattr(model, k, None) is not None] + ["features"]

        def forward(self, x):
            f = self.model.features(x)
            out = {**self.model.heads(f), "features": f}
            return tuple(out[k] for k in self.names) if as_tuple else out

    return WithFeatures()


# ---------------------------------------------------------------------------------------------------------------
# What a run is: its network config, checkpoint files and preprocessing
# ---------------------------------------------------------------------------------------------------------------

def _network_run(model_id: str, root: Path | None = None) -> RunRecord:
    from zoo.registry import get_run

    run = get_run(model_id, root)
    if run.kind == "ensemble":
        raise ValueError(f"{model_id} is an ensemble (the mean of {', '.join(run.members)}): export its "
                         f"members; its runtime is theirs")
    return run


def _checkpoints(run: RunRecord | Mapping, root: Path | None = None) -> list[Path]:
    """The files the network's weights come from (an adapted run: its parent's, then its own BN statistics)."""
    from zoo.paths import runs_dir
    from zoo.registry import get_run

    run = RunRecord.from_dict(run)
    root = root or runs_dir()
    own = root / run.id / run.checkpoint_file
    if run.kind == "adapted":
        return _checkpoints(get_run(run.parent, root), root) + [own]
    return [own]


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def checkpoint_key(run: RunRecord | Mapping, root: Path | None = None) -> str:
    """A hash of the run's checkpoint bytes and of the export recipe: the cache key of its exported file."""
    h = hashlib.sha256(EXPORT_RECIPE.encode())
    for p in _checkpoints(run, root):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: this run's checkpoint was not shipped")
        h.update(_sha256(p).encode())
    return h.hexdigest()[:16]


def preprocessing(run: RunRecord | Mapping, model: nn.Module, root: Path | None = None) -> dict[str, str]:
    """How to feed the exported network, as string metadata (RunRecord.preprocessing, plus the network's own
    normalisation constants)."""
    import torch

    from zoo.registry import get_run

    run = RunRecord.from_dict(run)
    get = lambda m: get_run(m, root)  # noqa: E731
    cfg = run.network_run(get).config
    prep = run.preprocessing(get)
    framing = {d: f or "dataset default" for d, f in prep.framing}
    heads = [k for k in OUTPUT_ORDER if getattr(model, k, None) is not None]
    return {
        "zoo.model_id": run.id, "zoo.kind": run.kind, "zoo.name": run.name,
        "zoo.backbone": str(cfg.get("backbone")), "zoo.formulation": str(cfg.get("formulation")),
        "zoo.formulation_kwargs": json.dumps(cfg.get("formulation_kwargs") or {}, sort_keys=True),
        "zoo.age_max": str(cfg.get("age_max", 100)), "zoo.outputs": ",".join(heads),
        "zoo.output_meaning": "age: raw formulation outputs (decode with zoo.formulations); gender: logit of "
                              "P(female); race: logits over zoo.data.readers.RACES; attr: one logit per attribute "
                              "head (names in the run's config tasks); features: the backbone "
                              "features the heads read (a last output)",
        "preprocess.img_size": str(prep.img_size),
        "preprocess.input": prep.input,
        "preprocess.normalise": "inside the graph: (x - mean) / std",
        "preprocess.mean": json.dumps([round(float(v), 6) for v in model.mean.flatten()]),
        "preprocess.std": json.dumps([round(float(v), 6) for v in model.std.flatten()]),
        "preprocess.resize": prep.resize,
        "preprocess.framing": json.dumps(framing, sort_keys=True),
        "preprocess.face_pipeline": f"{prep.face_pipeline} (5-point similarity alignment onto zoo.faces.TEMPLATE, "
                                    f"{prep.face_crop_size} px canonical crop)",
        "zoo.checkpoint_key": checkpoint_key(run, root), "zoo.export_recipe": EXPORT_RECIPE,
        "zoo.torch": torch.__version__,
        # MC-Dropout can sample head passes from the exported features only when the backbone has no dropout
        "zoo.backbone_dropout": str(int(any(isinstance(m, torch.nn.Dropout) and m.p > 0
                                            for m in model.backbone.modules()))),
    }


# ---------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------

def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def export_network(model: nn.Module, img_size: int, path: Path, fmt: str = "onnx",
                   metadata: dict[str, str] | None = None) -> Path:
    """Write `model` (an AgeGenderModel) as ONNX or TorchScript with `metadata`, atomically."""
    import torch

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    net = _with_features(copy.deepcopy(model).float().eval(), as_tuple=True)
    x = torch.rand(2, 3, img_size, img_size)
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
            if fmt == "onnx":
                import onnx

                names = net.names
                # The TorchScript-based exporter (dynamo=False) needs only `onnx`; the dynamo one also needs
                # onnxscript. It folds BatchNorm into the convolutions and drops Dropout (eval mode).
                torch.onnx.export(net, (x,), str(tmp), dynamo=False, input_names=["image"], output_names=names,
                                  dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                                  opset_version=OPSET, do_constant_folding=True)
                proto = onnx.load(str(tmp))
                for k, v in (metadata or {}).items():
                    proto.metadata_props.add(key=k, value=str(v))
                proto.producer_name = "agezoo"
                onnx.checker.check_model(proto)
                onnx.save(proto, str(tmp))
            else:
                with torch.no_grad():
                    traced = torch.jit.trace(net, (x,), check_trace=False)
                torch.jit.save(traced, str(tmp), _extra_files={"zoo.json": json.dumps(metadata or {})})
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export(model_id: str, path: Path | str | None = None, fmt: str = "onnx", root: Path | None = None) -> Path:
    """Export a registered single or adapted run; `path` None: into the runtime cache (ONNX only)."""
    from zoo.registry import build_network

    run = _network_run(model_id, root)
    model = build_network(run, root)
    meta = preprocessing(run, model, root)
    if path is None:
        if fmt != "onnx":
            raise ValueError("only ONNX exports are cached; give an output path for other formats")
        return cached_onnx(model_id, root, model=model)
    return export_network(model, int(meta["preprocess.img_size"]), Path(path), fmt, meta)


def cached_onnx_path(run: RunRecord | Mapping, root: Path | None = None) -> Path:
    """Where the runtime cache keeps (or would keep) the run's ONNX export."""
    from zoo.paths import cache_dir

    run = RunRecord.from_dict(run)
    return cache_dir() / "exported" / f"{run.id}-{checkpoint_key(run, root)}.onnx"


def cached_onnx(model_id: str, root: Path | None = None, model: nn.Module | None = None) -> Path:
    """The run's ONNX file in the local cache, exported now if it is missing or its checkpoint changed."""
    from zoo.registry import build_network

    run = _network_run(model_id, root)
    path = cached_onnx_path(run, root)
    if path.is_file():
        return path
    model = model if model is not None else build_network(run, root)
    meta = preprocessing(run, model, root)
    export_network(model, int(meta["preprocess.img_size"]), path, "onnx", meta)
    for old in path.parent.glob(f"{model_id}-*.onnx"):  # stale exports of an older checkpoint of this run (only)
        key = old.name[len(model_id) + 1:-len(".onnx")]
        if old != path and len(key) == 16 and all(c in "0123456789abcdef" for c in key):
            old.unlink(missing_ok=True)
    return path


def read_metadata(path: Path | str) -> dict[str, str]:
    """The metadata of an exported file (ONNX metadata_props or TorchScript's zoo.json)."""
    import torch

    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        return dict(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                    .get_modelmeta().custom_metadata_map)
    extra = {"zoo.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        torch.jit.load(str(path), _extra_files=extra)
    return json.loads(extra["zoo.json"] or "{}")


def run_exported(path: Path | str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Raw outputs {task: tensor} of an exported file (ONNX through ONNX Runtime, TorchScript through torch.jit)."""
    import torch

    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxRunner(path)(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        net = torch.jit.load(str(path)).eval()
    names = read_metadata(path)["zoo.outputs"].split(",") + ["features"]
    with torch.inference_mode():
        return dict(zip(names, net(x.float().contiguous())))


def check_export(model_id: str, path: Path | str, x: torch.Tensor | None = None, root: Path | None = None) -> float:
    """The largest absolute difference between an exported file's raw outputs and the eager network's, on `x`
    (default: 8 random images at the network's input size), over every head."""
    import torch

    from zoo.registry import build_network

    run = _network_run(model_id, root)
    model = build_network(run, root)
    if x is None:
        size = int(preprocessing(run, model, root)["preprocess.img_size"])
        x = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = {**model(x), "features": model.features(x)}
    got = run_exported(path, x)
    if set(got) != set(ref):
        raise ValueError(f"{path}: outputs {sorted(got)} but the network has {sorted(ref)}")
    return max(float((got[k].float() - ref[k].float()).abs().max()) for k in ref)


# ---------------------------------------------------------------------------------------------------------------
# Runtimes: x [B, 3, S, S] float CPU tensor in [0, 1] -> raw outputs {task: tensor}, dropout off
# ---------------------------------------------------------------------------------------------------------------

class OnnxRunner:
    """ONNX Runtime on the CPU, as many intra-op threads as torch uses (the dashboard's 1, `bench --threads`)."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort
        import torch

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = path
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        import torch

        outs = self.session.run(None, {"image": x.float().contiguous().numpy()})
        return {k: torch.from_numpy(v) for k, v in zip(self.names, outs)}


class CompiledRunner:
    """`torch.compile` of the eval-mode network (a compiled copy: the eager module stays usable for MC passes)."""

    def __init__(self, model: nn.Module):
        import torch

        self.fn = torch.compile(_with_features(model), dynamic=False)

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        import torch

        return self.fn(x.contiguous(memory_format=torch.channels_last))


def resolve_runtime(runtime: str | None, device: torch.device | str | None = None) -> str:
    """The runtime a name means on a device: `auto` -> DEFAULT_CPU_RUNTIME on the CPU, eager elsewhere; every
    runtime is eager on a non-CPU device. `onnx-cached` stays itself (`exported_network` decides per network)."""
    runtime = runtime or "eager"
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    if device is not None and str(getattr(device, "type", device)).split(":")[0] != "cpu":
        return "eager"
    return DEFAULT_CPU_RUNTIME if runtime == "auto" else runtime


def _exported_backbone(path: Path) -> nn.Module:
    """Stands in for the backbone of a network whose backbone runs in ONNX Runtime (`exported_network`)."""
    from torch import nn

    class ExportedBackbone(nn.Module):
        def forward(self, x):
            raise RuntimeError(f"this network was loaded with runtime onnx-cached: its backbone runs in ONNX Runtime "
                               f"({path.name}), not in torch; load it with runtime eager to run it in torch "
                               f"(another device, training, BatchNorm adaptation)")

    return ExportedBackbone()


def exported_network(run: RunRecord | Mapping, root: Path | None = None) -> tuple[nn.Module, OnnxRunner] | None:
    """Runtime `onnx-cached`: when the run's ONNX export is already in the runtime cache, its heads (with the
    checkpoint's weights) and an ONNX Runtime session for the rest, without building the backbone in torch or
    importing timm and torchvision: the dashboard's model process is ready in about half the time. None when the
    export is missing (nothing is exported here), predates this runtime, or its backbone has dropout inside (its
    MC-Dropout passes need the torch backbone); the caller then builds the whole network."""
    import torch

    from zoo.config import TrainConfig
    from zoo.model import AgeGenderModel
    from zoo.registry import get_run, load_state

    run = RunRecord.from_dict(run)
    path = cached_onnx_path(run, root)
    if not path.is_file():
        return None
    runner = OnnxRunner(path)
    if runner.session.get_modelmeta().custom_metadata_map.get("zoo.backbone_dropout") != "0":
        return None
    net = run.network_run(lambda m: get_run(m, root))
    heads = {k: v for p in _checkpoints(run, root) for k, v in load_state(p.parent, p.name).items()
             if not k.startswith("backbone.")}  # an adapted run's own file holds only backbone statistics
    dim = runner.session.get_outputs()[-1].shape[-1]  # `features`, the last output
    cfg = TrainConfig.from_dict({"name": net.name, **net.config})
    with torch.device("meta"):
        model = AgeGenderModel(cfg, load_pretrained=False, backbone=(_exported_backbone(path), dim))
    model.load_state_dict(heads, assign=True)
    return model.eval(), runner


def make_runner(model: nn.Module, model_id: str, runtime: str, root: Path | None = None,
                ) -> Callable[[torch.Tensor], dict[str, torch.Tensor]] | None:
    """The fast deterministic forward of a registered network for `runtime` (None: eager). `auto` falls back to
    eager, with a warning, when the network cannot be exported; an explicit `onnx` raises; `onnx-cached` has
    none here (`exported_network` found no usable export: eager)."""
    name = resolve_runtime(runtime)
    if name in ("eager", "onnx-cached"):
        return None
    if name == "compile":
        return CompiledRunner(model)
    try:
        return OnnxRunner(cached_onnx(model_id, root, model=model))
    except Exception as e:
        if runtime != "auto":
            raise
        print(f"warning: {model_id}: ONNX export failed ({type(e).__name__}: {e}); running eager", file=sys.stderr)
        return None


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """An eval-mode copy of `model` with every BatchNorm that directly follows a convolution (and is that
    convolution's only reader) folded into the convolution's weights: (copy, number folded). timm's BatchNormAct2d
    keeps its activation. Found by a torch.fx trace of the backbone with BatchNorm modules as leaves."""
    import torch
    import torch.fx as fx
    from torch import nn

    model = copy.deepcopy(model).float().eval()

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, nn.BatchNorm2d) or super().is_leaf_module(m, qualname)

    net = model.backbone
    graph = _Tracer().trace(net)
    mods = dict(net.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (isinstance(src, fx.Node) and src.op == "call_module" and type(mods.get(src.target)) is nn.Conv2d
                and len(src.users) == 1):
            pairs.append((src.target, node.target))
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            conv, bn = mods[conv_name], mods[bn_name]
            scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
            shift = (bn.bias if bn.affine else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.bias = nn.Parameter(bias * scale + shift)
            rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
            parent, _, attr = bn_name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, attr,
                    nn.Sequential(*rest) if rest else nn.Identity())
    return model, len(pairs)
