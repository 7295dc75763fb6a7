"""Config identity, sweeps, augmentation presets, imbalance strategies and backbones."""
import numpy as np
import pytest
import torch

from conftest import REPO
from zoo.augment import AUGMENTS, AugmentPreset, augment_batch
from zoo.backbones import create_backbone, list_backbones
from zoo.balance import AGE_BALANCE, balance
from zoo.config import LATER_FIELDS, TrainConfig, expand_grid
from zoo.runs import RunRecord


def test_run_id_is_config_plus_data_hash():
    a = TrainConfig(name="x")
    assert a.run_id("d1") == TrainConfig(name="renamed").run_id("d1")  # the label is not identity
    assert a.run_id("d1") != a.run_id("d2")
    assert a.run_id("d1") != TrainConfig(lr=1e-4).run_id("d1")
    assert a.run_id("d1").startswith("resnet18-dldl-")


def test_fields_added_later_keep_registered_run_ids():
    from dataclasses import MISSING, fields

    defaults = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default
                for f in fields(TrainConfig)}
    assert all(defaults[k] == off for k, off in LATER_FIELDS.items())
    old = TrainConfig().identity()  # a config from before the later fields existed has none of them
    assert not set(LATER_FIELDS) & set(old)
    assert TrainConfig.from_dict(old).run_id("d") == TrainConfig().run_id("d")
    assert TrainConfig(ema_decay=0.99).identity()["ema_decay"] == 0.99
    assert TrainConfig(ema_decay=0.99).run_id("d") != TrainConfig().run_id("d")
    on = TrainConfig(tasks=["attr:x"], targets={"x": "A | B"}, head_losses={"attr:x": {"name": "focal"}},
                     group_balance={"column": "gender", "strategy": "undersample"})
    assert {"targets", "head_losses", "group_balance"} <= set(on.identity())


def test_every_shipped_run_id_is_reproduced_by_its_config():
    """`python -m zoo train` on a shipped config must find the finished run, not retrain it under a new id."""
    singles = [r for r in RunRecord.load_all(REPO / "artifacts" / "runs") if r.kind == "single"]
    if not singles:
        pytest.skip("no registered run in this checkout")
    moved = [r.id for r in singles if TrainConfig.from_dict(r.config).run_id(r.data["hash"]) != r.id]
    assert not moved


def test_config_rejects_unknown_keys_and_expands_sweeps():
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({"learning_rate": 1})
    spec = {"base": {"backbone": "seed_cnn"}, "runs": [{"name": "a"}],
            "grid": {"augment": ["none", "strong"], "train_fraction": [0.1, 1.0]}}
    cfgs = expand_grid(spec)
    assert len(cfgs) == 5 and all(c.backbone == "seed_cnn" for c in cfgs)
    assert {(c.augment, c.train_fraction) for c in cfgs[1:]} == {("none", 0.1), ("none", 1.0), ("strong", 0.1),
                                                                 ("strong", 1.0)}
    assert TrainConfig.from_dict(yaml_roundtrip(cfgs[1])) == cfgs[1]
    assert [c.name for c in expand_grid({"base": {}, "runs": [{"name": "a"}, {"name": "b"}]})] == ["a", "b"]


def yaml_roundtrip(cfg):
    import yaml

    return yaml.safe_load(cfg.to_yaml())


def test_augment_none_is_identity_and_flip_is_exact():
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(augment_batch(x, "none"), x)
    flipped = augment_batch(x, AugmentPreset(flip=1.0))
    assert torch.allclose(flipped, x.flip(-1))
    for name in AUGMENTS:
        y = augment_batch(x.clone(), name)
        assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    strong = augment_batch(x.clone(), "strong", generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(strong, x)


def test_age_balance_strategies_upweight_rare_ages():
    age = np.array([25.0] * 90 + [80.0] * 10)
    gender = np.array([0.0] * 50 + [1.0] * 50)
    for name in ("inv_freq", "sqrt_inv", "lds"):
        b = balance(age, gender, name)
        assert np.isclose(b.weights.mean(), 1) and b.weights[-1] > b.weights[0], name
    s = balance(age, gender, "balanced_sampler")
    assert np.isclose(s.probs.sum(), 1) and np.isclose(s.probs[age == 80].sum(), 0.5)
    assert set(AGE_BALANCE) >= {"none", "inv_freq", "sqrt_inv", "lds", "balanced_sampler"}


def test_gender_balance():
    age = np.full(10, 30.0)
    gender = np.array([0.0] * 8 + [1.0] * 2)
    u = balance(age, gender, gender_strategy="undersample")
    assert (gender[u.keep] == 0).sum() == (gender[u.keep] == 1).sum() == 2
    r = balance(age, gender, gender_strategy="reweight")
    assert np.isclose(r.gender_weights[gender == 0].sum(), r.gender_weights[gender == 1].sum())
    with pytest.raises(ValueError):
        balance(age, gender, gender_strategy="oversample")


@pytest.mark.parametrize("name", [n for n in list_backbones() if n not in ("vgg16_bn", "resnet50",
                                                                            "efficientnet_b2")])
def test_backbones_build_without_download(name):
    model, dim, mean, std = create_backbone(name)
    with torch.no_grad():
        model.eval()
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, dim)


def test_unknown_backbone_and_missing_checkpoint_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("resnet9000")
    with pytest.raises(FileNotFoundError):
        create_backbone("resnet18", pretrained=str(tmp_path / "nope.safetensors"))


def test_a_run_can_start_from_another_runs_checkpoint(tmp_path):
    """Warm start from a zoo checkpoint (prefixed `backbone.`, fp16): the backbone gets its weights; a checkpoint of
    another architecture is refused loudly instead of silently loading nothing."""
    from safetensors.torch import save_file

    from zoo.config import TrainConfig
    from zoo.model import AgeGenderModel

    src = AgeGenderModel(TrainConfig(backbone="seed_cnn", formulation="l1", backbone_kwargs={"width": 8}))
    ckpt = tmp_path / "best.safetensors"
    save_file({k: v.half() for k, v in src.state_dict().items()}, str(ckpt))
    model, *_ = create_backbone("seed_cnn", pretrained=str(ckpt), width=8)
    for k, v in model.state_dict().items():
        assert torch.equal(v.half(), src.backbone.state_dict()[k].half()), k
    with pytest.raises(ValueError, match="belongs to this backbone"):
        create_backbone("resnet18", pretrained=str(ckpt))


def test_warm_start_continues_the_heads_that_fit(tmp_path):
    """Progressive resizing continues the whole network: heads of the same shape come from the checkpoint, a head
    of another formulation (another shape) keeps its fresh init."""
    from safetensors.torch import save_file

    from zoo.config import TrainConfig
    from zoo.model import AgeGenderModel

    kw = {"backbone": "seed_cnn", "backbone_kwargs": {"width": 8}}
    src = AgeGenderModel(TrainConfig(formulation="l1", **kw)).state_dict()
    ckpt = tmp_path / "best.safetensors"
    save_file({k: v.half() for k, v in src.items()}, str(ckpt))
    same = AgeGenderModel(TrainConfig(formulation="l1", pretrained=str(ckpt), img_size=96, **kw)).state_dict()
    for k in ("age.head.weight", "age.head.bias", "gender.weight", "gender.bias"):
        assert torch.equal(same[k].half(), src[k].half()), k
    torch.manual_seed(0)
    other = AgeGenderModel(TrainConfig(formulation="dldl", pretrained=str(ckpt), **kw)).state_dict()
    torch.manual_seed(0)
    fresh = AgeGenderModel(TrainConfig(formulation="dldl", **kw)).state_dict()
    assert torch.equal(other["gender.weight"].half(), src["gender.weight"].half())
    assert torch.equal(other["age.head.weight"], fresh["age.head.weight"])  # 101 bins vs 1 output: not loaded


def test_greedy_ensemble_selection_keeps_complementary_models_and_drops_a_bad_one():
    import numpy as np

    from zoo.ensemble import greedy_select

    rng = np.random.default_rng(0)
    target = rng.uniform(1, 90, 500)
    noise = rng.normal(0, 4, (3, 500))
    preds = {"a": target + noise[0], "b": target + noise[1], "c": target + noise[2],
             "bad": target + 15 + noise[0], "copy_a": target + noise[0]}
    chosen = greedy_select(preds, target)
    assert set(chosen) == {"a", "b", "c"} or set(chosen) == {"copy_a", "b", "c"}
    mean = np.mean([preds[k] for k in chosen], 0)
    assert np.abs(mean - target).mean() < min(np.abs(preds[k] - target).mean() for k in chosen)
    assert greedy_select({"only": target + 1}, target) == ["only"]


@pytest.mark.parametrize("backbone", ["seed_cnn", "mobilenetv3_small_100"])
def test_a_network_loads_its_checkpoint_exactly_with_or_without_the_meta_device(backbone, monkeypatch):
    """zoo.registry builds a loaded network on the meta device (no random init) and falls back to the CPU build when
    the network has a tensor the checkpoint lacks: both give the checkpoint's network, on real tensors."""
    from zoo import registry
    from zoo.config import TrainConfig
    from zoo.model import AgeGenderModel

    cfg = TrainConfig(backbone=backbone, formulation="dldl", tasks=["age", "gender"])
    src = AgeGenderModel(cfg, load_pretrained=False).eval()
    state = {k: v.clone() for k, v in src.state_dict().items()}
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = src.heads(src.features(x))

    def check(net):
        assert not any(t.is_meta for t in [*net.parameters(), *net.buffers()])
        assert all(p.requires_grad for p in net.parameters())
        with torch.no_grad():
            got = net.eval().heads(net.features(x))
        assert all(torch.equal(got[k], want[k]) for k in want)

    check(registry._network_holding(cfg, state))
    init = AgeGenderModel.__init__

    def with_extra_buffer(self, *a, **kw):  # a tensor no checkpoint holds
        init(self, *a, **kw)
        self.register_buffer("scratch", torch.ones(1), persistent=False)

    monkeypatch.setattr(AgeGenderModel, "__init__", with_extra_buffer)
    net = registry._network_holding(cfg, state)
    check(net)
    assert torch.equal(net.scratch, torch.ones(1))  # built on the CPU: its own buffers are real, not meta
