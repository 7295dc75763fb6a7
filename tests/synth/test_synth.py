"""synth/: tiny generators (16 px, a handful of steps) on a tiny generated UTKFace-style dataset; no network."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, learnable_face  # noqa: E402
AGES = [1, 5, 15, 25, 35, 45, 55, 65, 80]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine OpenMP threads competing with other
    jobs make a 16 px step take seconds instead of milliseconds."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """90 images (5 per age bin x gender: 3 train, 1 val, 1 test), scanned as utkface, with ZOO_ARTIFACTS /
    ZOO_CACHE in a temp dir."""
    base = tmp_path_factory.mktemp("synth")
    root = base / "utk"
    root.mkdir()
    rng = np.random.default_rng(0)
    i = 0
    for rep in range(5):
        for age in AGES:
            for gender in (0, 1):
                a = age
                cv2.imwrite(str(root / f"{a}_{gender}_0_2017010{i:010d}.jpg.chip.jpg"),
                            learnable_face(rng, a, gender, size=24))
                i += 1
    env = {"ZOO_ARTIFACTS": str(base / "artifacts"), "ZOO_CACHE": str(base / "cache")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        from zoo.data.manifest import scan

        m = scan("utkface", root, progress=False)
        assert set(m.frame["split"]) == {"train", "val", "test"}
        yield {"base": base, "root": root, "manifest": m}


def _cfg(generator: str, **kw):
    from synth.config import SynthConfig

    tiny = {"ddpm": dict(model={"block_out_channels": [16, 32], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                                "norm_num_groups": 8, "attention_head_dim": 8},
                         train_timesteps=100, sample_steps=3, guidance=2.0),
            "gan": dict(model={"width": 8, "z_dim": 16})}[generator]
    return SynthConfig.from_dict({"generator": generator, "size": 16, "steps": 4, "batch_size": 8,
                                  "ckpt_every": 2, "log_every": 1, "warmup_steps": 2, **tiny, **kw})


# ---- labels ----------------------------------------------------------------------------------------------------

def test_label_classes_and_sampling():
    from synth.labels import AGE_BINS, N_CLASSES, age_bin, class_index, sample_labels

    assert N_CLASSES == 18
    assert class_index(np.array([0, 2, 3, 9.9, 10, 69, 70, 110]), np.array([0, 1, 0, 1, 0, 1, 0, 1])).tolist() == \
        [0, 1, 2, 3, 4, 15, 16, 17]
    rng = np.random.default_rng(0)
    age, gender, cls = sample_labels(36, "uniform", rng)
    assert np.bincount(cls, minlength=18).tolist() == [2] * 18
    lo, hi = np.array(AGE_BINS).T
    assert ((age >= lo[cls // 2]) & (age <= hi[cls // 2])).all() and (gender == cls % 2).all()
    assert (age_bin(age) == cls // 2).all()
    real_age, real_gender = np.array([25.0, 27, 27, 71, 94]), np.array([1.0, 1, 1, 0, 0])
    age, gender, cls = sample_labels(50, "match", rng, real_age, real_gender)
    assert (np.bincount(cls, minlength=18)[[7, 16]] == [30, 20]).all()  # 3/5 women 20-29, 2/5 men 70+
    assert set(age[cls == 16]) <= {71.0, 94.0} and set(age[cls == 7]) <= {25.0, 27.0}  # real within-bin ages
    with pytest.raises(ValueError, match="ages must be"):
        sample_labels(5, "skewed", rng)


# ---- training -------------------------------------------------------------------------------------------------

def _record_decodes(monkeypatch) -> list[str]:
    import zoo.data.cache as cache

    seen: list[str] = []
    real = cache.decode_image

    def spy(path, size):
        seen.append(Path(path).name)
        return real(path, size)

    monkeypatch.setattr(cache, "decode_image", spy)
    return seen


@pytest.mark.parametrize("generator", ["ddpm", "gan"])
def test_train_uses_train_split_only_and_resumes_after_interruption(tiny, monkeypatch, generator):
    from synth.checkpoint import find_checkpoint
    from synth.train import GeneratorTrainer

    for f in (Path(tiny["base"]) / "cache" / "images").glob("*"):
        f.unlink()  # decode from files again, so the spy sees every image the generator's data comes from
    seen = _record_decodes(monkeypatch)
    cfg = _cfg(generator, name=f"{generator}-resume")
    t = GeneratorTrainer(cfg, progress=False)
    frame = tiny["manifest"].frame
    train_names = {Path(p).name for p in frame.loc[frame["split"] == "train", "path"]}
    held_out = {Path(p).name for p in frame.loc[frame["split"] != "train", "path"]}
    assert held_out and len(t.data.images) == len(train_names)
    assert seen and set(seen) <= train_names and not set(seen) & held_out  # val/test files never decoded

    calls = {"n": 0}
    step_fn = t.backend.train_step

    def crash_on_third(x, y):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return step_fn(x, y)

    monkeypatch.setattr(t.backend, "train_step", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        t.run()
    ckpt = find_checkpoint(cfg.name)
    assert json.loads((ckpt / "generator.json").read_text())["step"] == 2
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert state["step"] == 2

    t2 = GeneratorTrainer(cfg, progress=False)
    summary = t2.run()
    assert t2.resumed_from == 2 and summary["step"] == 4
    assert [h["step"] for h in summary["history"]] == [1, 2, 3, 4]
    assert all(np.isfinite(h["loss"]) for h in summary["history"])
    assert "cache" in summary["checkpoint"]  # not shipped by default
    assert json.loads((Path(tiny["base"]) / "artifacts" / "synth" / cfg.name / "generator.json").read_text())["step"] == 4

    # The interrupted + resumed run ends exactly where an uninterrupted one does (RNG and optimiser restored).
    straight = GeneratorTrainer(_cfg(generator, name=f"{generator}-straight"), progress=False)
    straight.run()
    for name, m in t2.backend.modules.items():
        other = straight.backend.modules[name].state_dict()
        for k, v in m.state_dict().items():
            assert torch.allclose(v.float(), other[k].float(), atol=1e-6), (name, k)

    # Raising the step budget continues; changing what the weights learn is refused.
    longer = GeneratorTrainer(_cfg(generator, name=cfg.name, steps=5), progress=False)
    assert longer.run()["step"] == 5 and longer.resumed_from == 4
    with pytest.raises(ValueError, match="another config"):
        GeneratorTrainer(_cfg(generator, name=cfg.name, lr=1e-2), progress=False).run()


def test_cli_help_runs_as_module():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "synth", "sample", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--from-pipeline" in out.stdout and "--ages" in out.stdout


def test_cli_train_ship_and_configs(tiny, capsys):
    from synth.__main__ import main
    from synth.config import SynthConfig
    from zoo.config import expand_grid

    cfg_file = Path(tiny["base"]) / "tiny_gan.yaml"
    cfg_file.write_text(yaml.safe_dump(_cfg("gan").to_dict() | {"name": ""}))
    assert main(["train", "--config", str(cfg_file), "--steps", "2", "--id", "gan-cli", "--ship", "--quiet"]) == 0
    assert "gan-cli: step 2/2" in capsys.readouterr().out
    assert (Path(tiny["base"]) / "artifacts" / "synth" / "gan-cli" / "checkpoint" / "weights.safetensors").exists()
    summary = json.loads((Path(tiny["base"]) / "artifacts" / "synth" / "gan-cli" / "generator.json").read_text())
    assert summary["checkpoint"] == "artifacts/synth/gan-cli/checkpoint"  # committed records carry no local paths
    for name in ("synth_ddpm", "synth_gan", "synth_ddpm_gpu"):
        c = SynthConfig.from_yaml(REPO / "zoo" / "configs" / f"{name}.yaml")
        assert c.steps > 0 and c.size >= 32
    study = expand_grid(yaml.safe_load((REPO / "zoo" / "configs" / "synth_study.yaml").read_text()))
    sources = {c.source.split(":")[0] for c in study}
    assert sources == {"real", "synth", "mixed"}
    assert len({c.max_steps for c in study}) == 1 and study[0].max_steps  # equal step budget
    assert len({json.dumps({k: v for k, v in c.identity().items() if k not in ("source", "seed")}, sort_keys=True)
                for c in study}) == 1  # same model config, only the data source (and the replicate's seed) differs


# ---- sampling --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("generator", ["ddpm", "gan"])
def test_sample_writes_labelled_train_only_set(tiny, generator):
    from synth.labels import AGE_BINS, class_index
    from synth.sample import sample_generator, set_dir
    from synth.train import train_generator
    from zoo.data.cache import load_images
    from zoo.data.manifest import load_manifest

    gen_id = f"{generator}-sample"
    train_generator(_cfg(generator, name=gen_id, steps=2), progress=False)
    m = sample_generator(gen_id, n=20, ages="uniform", batch_size=8, device="cpu", progress=False)
    assert m.dataset == f"synth_{gen_id}-uniform"
    loaded = load_manifest(m.dataset)
    f = loaded.frame
    assert len(f) == 20 and (f["split"] == "train").all()
    imgs = load_images(loaded, 16, progress=False)
    assert imgs.shape == (20, 16, 16, 3) and imgs.dtype == np.uint8
    labels = pd.read_csv(set_dir(f"{gen_id}-uniform") / "labels.csv")
    assert {"path", "age", "gender", "split", "generator", "class"} <= set(labels.columns)
    png = cv2.imread(str(set_dir(f"{gen_id}-uniform") / labels["path"][0]))
    assert png.shape == (16, 16, 3)
    bins = class_index(labels["age"], labels["gender"]) // 2
    lo, hi = np.array(AGE_BINS).T
    assert ((labels["age"] >= lo[bins]) & (labels["age"] <= hi[bins])).all()
    assert (labels["class"] == [f"{('0-2', '3-9', '10-19', '20-29', '30-39', '40-49', '50-59', '60-69', '70+')[b]}/"
                                f"{'male' if g == 0 else 'female'}" for b, g in zip(bins, labels["gender"])]).all()
    assert (labels["generator"] == gen_id).all()
    prov = json.loads((set_dir(f"{gen_id}-uniform") / "provenance.json").read_text())
    assert prov["generator"]["id"] == gen_id and prov["generator"]["step"] == 2 and prov["commit"]
    assert prov["generator"]["weights_sha1"] and prov["real_data"]["dataset"] == "utkface"

    # Resumable and deterministic: a lost batch is regenerated with identical pixels.
    first = set_dir(f"{gen_id}-uniform") / labels["path"][0]
    before = cv2.imread(str(first))
    first.unlink()
    sample_generator(gen_id, n=20, ages="uniform", batch_size=8, device="cpu", progress=False)
    assert np.array_equal(cv2.imread(str(first)), before)

    # match: the real training split's class mix.
    mm = sample_generator(gen_id, n=12, ages="match", batch_size=8, device="cpu", progress=False)
    assert mm.dataset == f"synth_{gen_id}" and len(mm.frame) == 12

    from zoo.data.readers import list_readers

    assert "synth_csv" not in list_readers()  # the fallback csv reader never leaks into the global registry


def test_zoo_trains_on_synthetic_and_mixed_sources(tiny):
    from synth.sample import sample_generator
    from synth.train import train_generator
    from zoo.config import TrainConfig
    from zoo.train import prepare_data

    train_generator(_cfg("gan", name="gan-zoo", steps=1), progress=False)
    sample_generator("gan-zoo", n=16, ages="match", device="cpu", progress=False)
    cfg = TrainConfig(backbone="seed_cnn", img_size=16, source="mixed:0.5:gan-zoo")
    d = prepare_data(cfg, progress=False)
    assert len(d.train) > (tiny["manifest"].frame["split"] == "train").sum()
    assert prepare_data(TrainConfig(backbone="seed_cnn", img_size=16, source="synth:gan-zoo"), progress=False).train.min() \
        >= len(tiny["manifest"].frame)


# ---- local text-to-image pipeline --------------------------------------------------------------------------------

@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_local_pipeline_samples_offline(tiny, tmp_path, no_network, monkeypatch):
    from synth.pipeline import LOCAL_PIPELINES, load_pipeline, prompt_for
    from synth.sample import sample_pipeline
    from tinypipe import TinyTextToImagePipeline, build_tiny_pipeline  # tests/synth/tinypipe.py: the test's stand-in

    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(["portrait", "photo", "of", "a", "man", "woman", "boy", "girl", "baby", "teenage",
                                     "face", "close-up", "centered"] + [f"{a}-year-old" for a in range(100)]))
    pipe = build_tiny_pipeline(vocab_file.read_text().split(), size=16)
    pipe_dir = tmp_path / "my-pipeline"
    pipe.save_pretrained(pipe_dir)
    assert json.loads((pipe_dir / "model_index.json").read_text())["_class_name"] == "TinyTextToImagePipeline"
    with pytest.raises(ValueError, match="unknown pipeline class"):  # the product knows no such class
        load_pipeline(pipe_dir)
    monkeypatch.setitem(LOCAL_PIPELINES, "TinyTextToImagePipeline", TinyTextToImagePipeline)
    assert prompt_for(35, 1).startswith("portrait photo of a 35-year-old woman")
    assert "baby boy" in prompt_for(1, 0) and "teenage girl" in prompt_for(15, 1)
    m = sample_pipeline(pipe_dir, n=4, ages="uniform", size=16, data="utkface", batch_size=2, steps=2,
                        guidance=2.0, device="cpu", progress=False)
    assert len(m.frame) == 4 and (m.frame["split"] == "train").all()
    prov = json.loads((m.root / "provenance.json").read_text())
    assert prov["generator"]["kind"] == "pipeline" and prov["generator"]["pipeline"]["path"] == str(pipe_dir.resolve())
    img = cv2.imread(str(m.root / m.frame["path"].iloc[0]))
    assert img.shape == (16, 16, 3)


def test_pipeline_dir_errors(tmp_path, capsys, no_network):
    from synth.__main__ import main
    from synth.pipeline import load_pipeline, validate_pipeline_dir

    with pytest.raises(FileNotFoundError, match="no such local directory"):
        validate_pipeline_dir(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="hub id"):
        validate_pipeline_dir("someorg/some-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        validate_pipeline_dir(tmp_path / "empty")
    sd = tmp_path / "sd"
    sd.mkdir()
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                     "text_encoder": ["transformers", "CLIPTextModel"],
                                                     "unet": ["diffusers", "UNet2DConditionModel"]}))
    try:
        import transformers  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="transformers"):
            load_pipeline(sd)
    assert main(["sample", "--from-pipeline", str(tmp_path / "missing"), "--n", "2", "--quiet"]) == 2
    assert "no such local directory" in capsys.readouterr().err


# ---- fidelity --------------------------------------------------------------------------------------------------

def test_frechet_distance():
    from synth.fidelity import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    assert abs(frechet_distance(a, a)) < 1e-6
    assert frechet_distance(a, a + 3.0) == pytest.approx(9.0 * 6, rel=1e-6)
    assert frechet_distance(a[:5], rng.normal(size=(7, 6))) >= 0  # rank-deficient covariances


def test_fidelity_on_tiny_zoo_model(tiny):
    from synth.fidelity import fidelity
    from synth.sample import sample_generator
    from synth.train import train_generator
    from zoo.config import TrainConfig
    from zoo.train import train

    run = train(TrainConfig(name="judge", backbone="seed_cnn", backbone_kwargs={"width": 8, "hidden": 16},
                            img_size=16, epochs=1, batch_size=16, patience=5), progress=False)
    train_generator(_cfg("ddpm", name="ddpm-fid", steps=1), progress=False)
    sample_generator("ddpm-fid", n=18, ages="uniform", device="cpu", progress=False)
    r = fidelity("ddpm-fid-uniform", run["id"], progress=False)
    per_bin = r["synthetic"]["per_bin"]
    assert len(per_bin) == 9 and all(v["n"] == 2 and np.isfinite(v["mae"]) for v in per_bin.values())
    assert 0 <= r["synthetic"]["gender_agreement"] <= 1
    d = r["feature_distance"]
    assert np.isfinite(d["fd_synthetic_vs_real_test"]) and d["fd_synthetic_vs_real_test"] >= 0
    assert np.isfinite(d["fd_real_train_vs_real_test"])
    out = Path(tiny["base"]) / "artifacts" / "synth" / "ddpm-fid-uniform"
    assert json.loads((out / "fidelity.json").read_text())["model"] == run["id"]
    grid = cv2.imread(str(out / "grid.png"))
    assert grid is not None and (out / "grid.png").stat().st_size < 300_000
