"""Device-agnostic training and torchrun (issue 22): the device never enters a run's identity, torchrun's ranks share
the global batch, and a 2-process gloo run on CPU matches the single-process run and survives a killed rank. The GPU
tests skip without CUDA."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO  # noqa: E402
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# No batch-dependent randomness or statistics: dropout off, no augmentation, BatchNorm frozen (linear probe on the
# random backbone). Then 2 ranks x 4 images compute exactly the single process's 8-image step (up to float
# summation order), so their loss curves must agree to RTOL. With trainable BatchNorm, dropout or augmentation each
# rank normalises and draws over its own 4 images, and the curves only agree loosely (README, Scaling up).
EXACT = dict(name="ddp", backbone="seed_cnn", backbone_kwargs={"width": 4, "hidden": 16, "dropout": 0.0},
             dropout=0.0, augment="none", freeze="linear_probe", img_size=16, epochs=3, batch_size=8, lr=3e-3,
             warmup_epochs=0.5, patience=50, seed=3)
RTOL = 1e-5


def _scan_tiny(base: Path, n: int = 60) -> None:
    """A scanned UTKFace-style dataset of n 24 px images (brightness follows age, hue follows gender)."""
    from zoo.data.manifest import scan

    root = base / "utk"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        age, gender, race = int(rng.integers(1, 90)), int(rng.integers(0, 2)), int(rng.integers(0, 5))
        img = rng.integers(0, 40, (24, 24, 3)).astype(np.float32) + age * 2.0
        img[..., 2 * gender] += 60
        cv2.imwrite(str(root / f"{age}_{gender}_{race}_2017010{i:010d}.jpg.chip.jpg"),
                    np.clip(img, 0, 255).astype(np.uint8))
    scan("utkface", root, progress=False)


def _torchrun(args: list[str], env: dict, timeout: float = 400) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run ARGS`. On a timeout torchrun gets SIGTERM, on which it stops its workers (they
    run in sessions of their own: killing torchrun alone would leave them running), then the test fails."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"torchrun timed out after {timeout} s: {err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _tiny_data(n: int = 40, size: int = 16):
    from zoo.train import TrainData

    rng = np.random.default_rng(0)
    idx = np.arange(n)
    return TrainData(images=rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8), age=np.arange(n, dtype=float),
                     gender=(idx % 2).astype(float), race=idx % 5, train=idx[:24], val=idx[24:32], test=idx[32:],
                     data_hash="tiny")


def test_device_and_compile_never_enter_the_run_identity_and_devices_are_validated():
    from zoo.config import ConfigError, TrainConfig
    from zoo.train import resolve_device

    base = TrainConfig()
    for kw in (dict(device="cpu"), dict(device="cuda"), dict(device="cuda:3"), dict(compile=True)):
        cfg = TrainConfig(**kw)
        assert cfg.identity() == base.identity() and cfg.run_id("h") == base.run_id("h"), kw
        assert TrainConfig.from_dict({**cfg.identity(), **kw}).identity() == base.identity()
    with pytest.raises(ConfigError, match=r"device must be auto \| cpu \| cuda \| cuda:N \(got 'gpu'\)"):
        TrainConfig.from_dict({"device": "gpu"})
    with pytest.raises(ConfigError, match="compile must be true/false"):
        TrainConfig.from_dict({"compile": "yes"})
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.parametrize("weighted", [False, True])
def test_feeder_shards_split_each_global_batch_in_the_single_process_order(weighted):
    from zoo.train import BatchFeeder

    d = _tiny_data()
    probs = np.linspace(1, 2, len(d.train)) / np.linspace(1, 2, len(d.train)).sum() if weighted else None
    ones = np.ones(len(d.train))

    def feeder(shard=(0, 1)):
        return BatchFeeder(d, d.train, ones, ones, probs, 8, "none", np.random.default_rng(5), shard=shard)

    single, r0, r1 = feeder(), feeder((0, 2)), feeder((1, 2))
    assert single.steps == r0.steps == r1.steps == 3  # the same global step count on every rank
    for b, b0, b1 in zip(single.epoch(), r0.epoch(), r1.epoch()):
        assert len(b0["x"]) == len(b1["x"]) == 4
        assert torch.equal(b["age"][0::2], b0["age"]) and torch.equal(b["age"][1::2], b1["age"])
        assert torch.equal(b["x"][0::2], b0["x"])
    with pytest.raises(ValueError, match="batch size 8 is not divisible by the 3 torchrun processes"):
        feeder((0, 3))


def test_compile_flag_compiles_the_training_forward_only(tmp_env, monkeypatch):
    from zoo.config import TrainConfig
    from zoo.train import Trainer

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(m) or m)
    cfg = TrainConfig(backbone="seed_cnn", backbone_kwargs={"width": 4, "hidden": 16}, img_size=16, batch_size=8,
                      compile=True, device="cpu")
    t = Trainer(cfg, data=_tiny_data(), root=tmp_env.base / "runs", progress=False)
    assert compiled == [t.model] and t.device == torch.device("cpu") and t.amp_dtype is None and not t.feeder.pin
    assert np.isfinite(t.train_epoch()["train_loss"])


def test_torchrun_matches_the_single_process_run_and_resumes_after_a_killed_rank(tmp_env, monkeypatch):
    """One config, trained (1) in this process with `--device cpu` and (2) by `torchrun --nproc_per_node 2` (gloo)
    with rank 1 killed after 2 steps of epoch 2 under `--max-restarts 1`: the restarted group resumes from epoch 1's
    state, and the result is the same run (id), registered once, with every epoch, on the same loss curve."""
    from zoo.cli import main
    from zoo.config import TrainConfig

    _scan_tiny(tmp_env.base)
    cfg_path = tmp_env.base / "ddp.yaml"
    cfg_path.write_text(TrainConfig(**EXACT).to_yaml())
    monkeypatch.setenv("ZOO_ARTIFACTS", str(tmp_env.base / "single"))  # the manifest is in ZOO_CACHE, shared
    assert main(["train", "--config", str(cfg_path), "--device", "cpu"]) == 0
    (single_dir,) = (tmp_env.base / "single" / "runs").iterdir()
    single = json.loads((single_dir / "run.json").read_text())
    assert single["device"] == "cpu" and single["device_name"] and single["world_size"] == 1
    monkeypatch.setenv("ZOO_ARTIFACTS", str(tmp_env.artifacts))

    marker = tmp_env.base / "rank1-killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ZOO_TEST_KILL": f"1:2:2:{marker}"}
    done = _torchrun(["--standalone", "--nproc_per_node", "2", "--max-restarts", "1", "--monitor-interval", "0.1",
                      "-m", "zoo", "train", "--config", str(cfg_path)], env)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    assert marker.exists()  # rank 1 did die mid-epoch
    assert "resuming after epoch 1" in done.stdout, done.stdout[-2000:]
    assert done.stdout.count("test MAE") == 1  # rank 0 alone reports

    runs = tmp_env.artifacts / "runs"
    assert [p.name for p in runs.iterdir()] == [single["id"]]  # the same run id
    run_dir = runs / single["id"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.safetensors", "config.yaml", "history.csv", "run.json"]
    ddp = json.loads((run_dir / "run.json").read_text())
    assert ddp["id"] == single["id"] and ddp["world_size"] == 2 and ddp["device"] == "cpu"
    assert ddp["config"] == single["config"] and ddp["epochs_run"] == 3 and ddp["steps"] == single["steps"]
    h1, h2 = pd.read_csv(single_dir / "history.csv"), pd.read_csv(run_dir / "history.csv")
    assert list(h2["epoch"]) == [1, 2, 3]
    for col in ("train_loss", "val_mae", "lr"):
        np.testing.assert_allclose(h2[col], h1[col], rtol=RTOL, err_msg=col)
    assert ddp["metrics"]["test"]["mae"] == pytest.approx(single["metrics"]["test"]["mae"], rel=RTOL)


# ---- GPU (skipped without CUDA) -----------------------------------------------------------------------------------
@needs_cuda
def test_cuda_step_uses_pinned_batches_mixed_precision_and_device_augmentation(tmp_env):
    from zoo.config import TrainConfig
    from zoo.train import Trainer

    cfg = TrainConfig(backbone="seed_cnn", backbone_kwargs={"width": 4, "hidden": 16}, img_size=16, batch_size=8,
                      augment="strong", device="cuda")
    t = Trainer(cfg, data=_tiny_data(), root=tmp_env.base / "runs", progress=False)
    assert t.device.type == "cuda" and t.feeder.pin
    assert t.amp_dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    assert (t.scaler is not None) == (t.amp_dtype == torch.float16)
    with torch.no_grad(), closing(t.feeder.epoch()) as batches:
        raw = next(batches)
        assert raw["x"].dtype == torch.uint8 and raw["x"].is_pinned()
        b = t._to_device(raw)
    assert b["x"].device.type == "cuda" and b["x"].dtype == torch.float32 and b["x"].shape == (8, 3, 16, 16)
    assert 0 <= b["x"].min() and b["x"].max() <= 1
    assert all(np.isfinite(t.train_epoch()["train_loss"]) for _ in range(2))
    assert next(t.model.parameters()).device.type == "cuda"


@needs_cuda
def test_cuda_run_records_the_gpu_and_lands_near_the_cpu_run(tmp_env):
    """The same config on CPU and GPU: one run id, and results within what mixed precision and the GPU's own random
    streams (dropout, augmentation) explain."""
    from zoo.config import TrainConfig
    from zoo.train import train

    _scan_tiny(tmp_env.base, n=120)
    kw = dict(name="gpu", backbone="seed_cnn", backbone_kwargs={"width": 8, "hidden": 32}, img_size=24, epochs=4,
              batch_size=16, lr=3e-3, warmup_epochs=0.5, patience=50, seed=1)
    cpu = train(TrainConfig(**kw, device="cpu"), progress=False, root=tmp_env.base / "cpu")
    gpu = train(TrainConfig(**kw, device="cuda"), progress=False, root=tmp_env.base / "gpu")
    assert gpu["id"] == cpu["id"] and gpu["device"].startswith("cuda:")
    assert gpu["device_name"] == torch.cuda.get_device_name(torch.device(gpu["device"]))
    h_cpu = pd.read_csv(tmp_env.base / "cpu" / cpu["id"] / "history.csv")
    h_gpu = pd.read_csv(tmp_env.base / "gpu" / gpu["id"] / "history.csv")
    np.testing.assert_allclose(h_gpu["train_loss"], h_cpu["train_loss"], rtol=0.1)
    assert gpu["metrics"]["test"]["mae"] == pytest.approx(cpu["metrics"]["test"]["mae"], rel=0.1)


@needs_cuda
def test_cuda_compile_trains(tmp_env):
    from zoo.config import TrainConfig
    from zoo.train import Trainer

    cfg = TrainConfig(backbone="seed_cnn", backbone_kwargs={"width": 4, "hidden": 16}, img_size=16, batch_size=8,
                      device="cuda", compile=True)
    t = Trainer(cfg, data=_tiny_data(), root=tmp_env.base / "runs", progress=False)
    assert np.isfinite(t.train_epoch()["train_loss"])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_torchrun_nccl_on_two_gpus_matches_one_gpu(tmp_env):
    from zoo.config import TrainConfig

    _scan_tiny(tmp_env.base)
    cfg_path = tmp_env.base / "ddp.yaml"
    cfg_path.write_text(TrainConfig(**EXACT, device="cuda").to_yaml())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    one = subprocess.run([sys.executable, "-m", "zoo", "train", "--config", str(cfg_path)], cwd=REPO,
                         env={**env, "ZOO_ARTIFACTS": str(tmp_env.base / "one")}, capture_output=True, text=True,
                         timeout=400)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(["--standalone", "--nproc_per_node", "2", "-m", "zoo", "train", "--config", str(cfg_path)], env)
    assert two.returncode == 0, two.stderr[-3000:]
    (d1,), (d2,) = (tmp_env.base / "one" / "runs").iterdir(), (tmp_env.artifacts / "runs").iterdir()
    assert d1.name == d2.name
    r2 = json.loads((d2 / "run.json").read_text())
    assert r2["world_size"] == 2 and r2["device"] == "cuda:0"
    h1, h2 = pd.read_csv(d1 / "history.csv"), pd.read_csv(d2 / "history.csv")
    np.testing.assert_allclose(h2["train_loss"], h1["train_loss"], rtol=2e-2)  # bf16/fp16 autocast
