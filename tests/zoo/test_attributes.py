"""Attribute tasks (issue 20): composite targets, masked per-head losses, group balancing, the soft-biometric seed's
CNN, and tiny end-to-end trainings on generated CelebA-HQ-style (attributes) and UTKFace-style (ages) datasets."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from zoo.attributes import attribute_labels, attribute_matrix, binary_attributes, parse_target

KNOWN = ["Blond_Hair", "Eyeglasses", "Smiling", "5_o_Clock_Shadow"]


# ---- composite targets ---------------------------------------------------------------------------------------------
def _truth(expr: str, rows: dict[str, list]) -> np.ndarray:
    return parse_target(expr, KNOWN).evaluate(rows)


def test_target_precedence_parentheses_and_not():
    a, b, c = [0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0, 1, 1], [0, 1, 0, 1, 0, 1, 0, 1]
    rows = {"Blond_Hair": a, "Eyeglasses": b, "Smiling": c}
    A, B, C = (np.array(v, bool) for v in (a, b, c))
    # & binds tighter than |, ! tighter than &
    assert (_truth("Blond_Hair | Eyeglasses & Smiling", rows) == (A | (B & C))).all()
    assert (_truth("(Blond_Hair | Eyeglasses) & Smiling", rows) == ((A | B) & C)).all()
    assert (_truth("!Blond_Hair & Eyeglasses", rows) == (~A & B)).all()
    assert (_truth("!(Blond_Hair & Eyeglasses)", rows) == ~(A & B)).all()
    assert (_truth("!!Smiling", rows) == C).all()
    assert (_truth(" Blond_Hair|Eyeglasses ", rows) == (A | B)).all()
    t = parse_target("Eyeglasses | 5_o_Clock_Shadow & Eyeglasses", KNOWN)
    assert t.names == ("Eyeglasses", "5_o_Clock_Shadow")  # digits start CelebA names; each operand once


def test_target_is_nan_where_any_operand_is_unknown():
    rows = {"Blond_Hair": [1, np.nan, 0, 1], "Eyeglasses": [0, 1, np.nan, np.nan]}
    out = _truth("Blond_Hair | Eyeglasses", rows)
    assert out.dtype == float and out[0] == 1
    assert np.isnan(out[1:]).all()  # strict: even `1 | unknown` is unknown, never a guessed label


@pytest.mark.parametrize("expr, problem", [
    ("", "it is empty"), ("Blond_Hair |", "it ends where"), ("(Blond_Hair", "never closed"),
    ("Blond_Hair Eyeglasses", "unexpected 'Eyeglasses'"), ("Blond_Hair + Eyeglasses", "unexpected character '+'"),
    ("| Blond_Hair", "'|' where an attribute name"), ("Blond_Hair)", "unexpected ')'"), ("!", "it ends where")])
def test_bad_target_expressions_say_what_is_wrong(expr, problem):
    with pytest.raises(ValueError) as e:
        parse_target(expr, KNOWN)
    msg = str(e.value)
    assert problem in msg and repr(expr) in msg and "\n" not in msg and "| (or)" in msg


def test_unknown_attribute_names_list_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown attribute 'Blonde_Hair'; known: 5_o_Clock_Shadow, Blond_Hair, "
                                         r"Eyeglasses, Smiling"):
        parse_target("Blonde_Hair | Eyeglasses", KNOWN)
    with pytest.raises(ValueError, match="unknown attributes 'x', 'y'"):
        parse_target("x & y", KNOWN)
    assert parse_target("x & y", None).names == ("x", "y")  # syntax only (config validation)


def _frame(extras: list[dict | None]) -> pd.DataFrame:
    return pd.DataFrame({"extras": [json.dumps(e) if e is not None else None for e in extras]})


def test_labels_from_manifest_extras():
    f = _frame([{"Blond_Hair": 1, "Eyeglasses": 0, "note": "x"}, {"Blond_Hair": 0, "Eyeglasses": 0, "note": "y"},
                {"Blond_Hair": 0, "Eyeglasses": 1}, {"Eyeglasses": 1}, None])
    assert binary_attributes(f) == ["Blond_Hair", "Eyeglasses"]  # text extras are not attributes
    targets = {"blond_or_glasses": "Blond_Hair | Eyeglasses"}
    np.testing.assert_array_equal(attribute_labels(f, "blond_or_glasses", targets), [1, 0, 1, np.nan, np.nan])
    np.testing.assert_array_equal(attribute_labels(f, "Eyeglasses"), [0, 0, 1, 1, np.nan])
    with pytest.raises(ValueError, match="unknown attribute 'note'.*known: Blond_Hair, Eyeglasses"):
        attribute_labels(f, "note")
    # several datasets: one without the attributes (UTKFace) gets NaN; a name none has is an error
    utk = pd.DataFrame({"extras": [None, None]})
    celeb, ages = attribute_matrix([f, utk], ["Eyeglasses", "blond_or_glasses"], targets)
    assert celeb.shape == (5, 2) and np.isnan(ages).all() and ages.shape == (2, 2)
    with pytest.raises(ValueError, match="unknown attribute 'Smiling'"):
        attribute_matrix([f, utk], ["Smiling"], targets)
    with pytest.raises(ValueError, match="have the names of attributes"):
        attribute_matrix([f], ["Eyeglasses"], {"Eyeglasses": "Blond_Hair"})


# ---- config ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg, problem", [
    ({"tasks": ["age", "attr:"]}, "tasks must be a non-empty list of distinct age, gender, race or attr:NAME"),
    ({"tasks": ["attr:x"], "targets": {"x": "A &"}}, "targets: x: invalid target expression 'A &'"),
    ({"targets": {"a b": "A"}}, "targets: 'a b' is not a target name"),
    ({"tasks": ["attr:x"], "head_losses": {"attr:y": {"name": "bce"}}}, "'attr:y' is not an attribute task"),
    ({"tasks": ["attr:x"], "head_losses": {"attr:x": {"name": "focal", "beta": 1}}},
     "attr:x: focal does not take beta (it takes alpha, gamma, label_smoothing)"),
    ({"tasks": ["attr:x"], "head_losses": {"attr:x": {"name": "focal", "label_smoothing": 1.5}}},
     "label_smoothing must be in [0, 1)"),
    ({"tasks": ["attr:x"], "head_losses": {"attr:x": {"name": "hinge"}}}, "unknown binary loss 'hinge'"),
    ({"gender_loss_kwargs": {"gama": 2}}, "gender_loss_kwargs: bce does not take gama"),
    ({"group_balance": {"column": "gender", "strategy": "oversample"}}, "strategy must be one of undersample, weights"),
    ({"group_balance": {"column": "gender", "strategy": "weights", "weights": {"women": 1}}},
     "map its groups male, female to numbers >= 0"),
    ({"group_balance": {"column": "gender", "strategy": "weights"}}, "missing: weights"),
    ({"tasks": ["attr:x"], "loss_weights": {"attr:y": 1.0}}, "loss_weights must map age, attr:x, gender, race"),
])
def test_config_checks_attribute_fields(cfg, problem):
    from zoo.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict(cfg)
    assert problem in str(e.value) and "\n" not in str(e.value)


def test_config_accepts_the_seed_recipe():
    from zoo.config import TrainConfig

    cfg = TrainConfig.from_dict({
        "dataset": "celebahq", "tasks": ["attr:blond_or_glasses"], "targets": {"blond_or_glasses": "Blond_Hair | "
                                                                                                    "Eyeglasses"},
        "head_losses": {"attr:blond_or_glasses": {"name": "focal", "gamma": 5, "alpha": 0.25, "label_smoothing": 0.1}},
        "group_balance": {"column": "gender", "strategy": "weights", "weights": {"female": 1.0, "male": 0.1}},
        "loss_weights": {"attr:blond_or_glasses": 2.0}, "backbone": "softbio_cnn", "img_size": 80})
    assert cfg.identity()["targets"] == {"blond_or_glasses": "Blond_Hair | Eyeglasses"}


# ---- losses ------------------------------------------------------------------------------------------------------
def test_label_smoothing_pulls_targets_to_the_middle():
    from zoo.gender import create_binary_loss

    logit, y = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 1.0])
    got = create_binary_loss("bce", label_smoothing=0.2)(logit, y)
    ref = F.binary_cross_entropy_with_logits(logit, torch.tensor([0.9, 0.1, 0.9]))
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    ls = create_binary_loss("weighted_bce", pos_weight=3.0, label_smoothing=0.2)(logit, y)
    per = F.binary_cross_entropy_with_logits(logit, torch.tensor([0.9, 0.1, 0.9]), reduction="none")
    assert ls.item() == pytest.approx((per * torch.tensor([3.0, 1.0, 3.0])).mean().item(), rel=1e-6)
    # focal: the focusing term and alpha follow the hard label, the cross-entropy the smoothed one
    p = torch.sigmoid(logit)
    pt = torch.where(y == 1, p, 1 - p)
    alpha = torch.where(y == 1, 0.25, 0.75)
    want = (alpha * (1 - pt) ** 5 * per).mean()
    assert create_binary_loss("focal", gamma=5, label_smoothing=0.2)(logit, y).item() == pytest.approx(want.item(),
                                                                                                         rel=1e-5)
    assert create_binary_loss("focal", label_smoothing=0.0)(logit, y).item() == pytest.approx(
        create_binary_loss("focal")(logit, y).item())


def _planted_data(n: int = 12, size: int = 32):
    """A TrainData whose first 4 images have ages only, the next 4 attributes only (attr b partly), last 4 none."""
    from zoo.train import TrainData

    rng = np.random.default_rng(0)
    nan = np.nan
    age = np.array([20.0, 35, 50, 8] + [nan] * 8)
    attrs = np.array([[nan, nan]] * 4 + [[1, 0], [0, nan], [1, 1], [0, nan]] + [[nan, nan]] * 4)
    return TrainData(images=rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8), age=age,
                     gender=np.full(n, nan), race=np.full(n, -1), train=np.arange(n), val=np.arange(n),
                     test=np.arange(n), data_hash="planted", young=np.full(n, nan), attrs=attrs,
                     groups=np.array([0.0, 1] * 6))


def test_masked_losses_on_planted_data(tmp_path):
    """The loss is the hand-computed loss of the labelled images only; an image without any label gets no gradient;
    per-sample group weights weigh every head."""
    from zoo.config import TrainConfig
    from zoo.train import Trainer

    cfg = TrainConfig(backbone="seed_cnn", backbone_kwargs={"width": 8, "hidden": 16}, formulation="l1", img_size=32,
                      tasks=["age", "attr:a", "attr:b"], loss_weights={"age": 0.5, "attr:b": 2.0},
                      head_losses={"attr:b": {"name": "focal", "gamma": 2.0, "alpha": 0.25}}, batch_size=12,
                      epochs=1, device="cpu")
    data = _planted_data()
    tr = Trainer(cfg, data=data, root=tmp_path, progress=False)
    assert tr.model.attributes == ("a", "b") and tr.select == "mae"
    tr.model.eval()  # BatchNorm off the batch statistics: images independent, so their gradients are too
    x = torch.rand(12, 3, 32, 32, requires_grad=True)
    d = {"x": x, "age": torch.from_numpy(data.age).float(), "gender": torch.full((12,), float("nan")),
         "race": torch.full((12,), -1), "w": torch.ones(12), "gw": torch.ones(12),
         "attr": torch.from_numpy(data.attrs).float()}
    loss = tr._loss(d)
    with torch.no_grad():
        out = tr.model(x)
        ka, kb = slice(4, 8), [4, 6]
        age = tr.model.age.loss(out["age"][:4], d["age"][:4], torch.ones(4))
        bce = F.binary_cross_entropy_with_logits(out["attr"][ka, 0], d["attr"][ka, 0])
        z, y = out["attr"][kb, 1], d["attr"][kb, 1]
        p = torch.sigmoid(z)
        pt = torch.where(y == 1, p, 1 - p)
        focal = (torch.where(y == 1, 0.25, 0.75) * (1 - pt) ** 2 * -torch.log(pt)).mean()
    assert loss.item() == pytest.approx((0.5 * age + bce + 2.0 * focal).item(), rel=1e-5)
    loss.backward()
    per_image = x.grad.abs().flatten(1).sum(1)
    assert (per_image[8:] == 0).all() and (per_image[:8] > 0).all()
    # group weights (sw) weigh each head's mean: all weight on image 4 -> attr a's loss is its own
    sw = torch.zeros(12)
    sw[4] = 1.0
    cfg2 = TrainConfig(**{**cfg.__dict__, "tasks": ["attr:a"], "head_losses": {}, "loss_weights": {}})
    tr2 = Trainer(cfg2, data=data, root=tmp_path, progress=False)
    tr2.model.eval()
    d2 = {**d, "x": x.detach(), "attr": d["attr"][:, :1], "sw": sw}
    with torch.no_grad():
        own = F.binary_cross_entropy_with_logits(tr2.model(x.detach())["attr"][4, 0], d["attr"][4, 0])
        assert tr2._loss(d2).item() == pytest.approx(own.item(), rel=1e-5)


# ---- group balancing -----------------------------------------------------------------------------------------------
def test_group_balance_strategies():
    from zoo.balance import balance, group_balance

    race = np.array([0.0] * 6 + [1.0] * 3 + [2.0] * 2 + [np.nan] * 2)
    keep, w = group_balance(race, {"column": "race", "strategy": "undersample"}, seed=1)
    kept = race[keep]
    assert [(kept == g).sum() for g in (0, 1, 2)] == [2, 2, 2] and np.isnan(kept).sum() == 2 and (w == 1).all()
    assert (keep == group_balance(race, {"column": "race", "strategy": "undersample"}, seed=1)[0]).all()
    gender = np.array([1.0, 1, 1, 0, 0, np.nan])
    b = balance(np.zeros(6), gender, groups=gender,
                group_spec={"column": "gender", "strategy": "weights", "weights": {"female": 1.0, "male": 0.1}})
    np.testing.assert_allclose(b.sample_weights, [1, 1, 1, 0.1, 0.1, 1])
    assert (b.keep == np.arange(6)).all() and (b.gender_weights == 1).all()
    attr = np.array([1.0, 0, 0, 0])
    _, w = group_balance(attr, {"column": "Blond_Hair", "strategy": "weights", "weights": {1: 3.0}})
    np.testing.assert_allclose(w, [3, 1, 1, 1])  # an attribute's groups are 0 / 1; groups not in the table: 1
    # gender undersampling is the group strategy on gender (same draws as before it existed)
    g = np.array([0.0] * 7 + [1.0] * 3 + [np.nan])
    u = balance(np.zeros(11), g, gender_strategy="undersample", seed=3)
    rng = np.random.default_rng(3)
    want = np.sort(np.r_[rng.choice(np.arange(7), 3, replace=False), rng.choice(np.arange(7, 10), 3, replace=False),
                         10])
    assert (u.keep == want).all()
    # the seed's recipe: undersample the majority gender, then weight women 1.0, men 0.1
    both = balance(np.zeros(11), g, gender_strategy="undersample", seed=3, groups=g,
                   group_spec={"column": "gender", "strategy": "weights", "weights": {"female": 1.0, "male": 0.1}})
    assert (both.keep == want).all()
    np.testing.assert_allclose(both.sample_weights, np.where(g[want] == 1, 1.0, np.where(g[want] == 0, 0.1, 1.0)))


# ---- the seed's CNN ------------------------------------------------------------------------------------------------
def test_softbio_cnn_is_the_seed_architecture_at_80px():
    from torch import nn

    from zoo.backbones import create_backbone

    model, dim, _, _ = create_backbone("softbio_cnn")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128] and sum(isinstance(m, nn.MaxPool2d)
                                                                    for m in model.modules()) == 3
    dense = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(dense) == 1 and dense[0].out_features == 512 == dim and dense[0].in_features == 128 * 10 * 10
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.5]
    model.eval()
    with torch.no_grad():
        x = torch.rand(2, 3, 80, 80)
        maps = model.features[:-2](x)
        assert maps.shape == (2, 128, 10, 10)  # 80 -> 40 -> 20 -> 10: the pooling to the grid is the identity there
        assert torch.equal(model.features(x), maps.flatten(1))
        assert model(x).shape == (2, 512) and model(torch.rand(1, 3, 64, 64)).shape == (1, 512)


# ---- end to end --------------------------------------------------------------------------------------------------
NAMES = ["Blond_Hair", "Eyeglasses", "Smiling"] + [f"Attr{i}" for i in range(35)] + ["Male", "Young"]


def _face(rng, blond: int, glasses: int, female: int, age: int = 30, size: int = 40) -> np.ndarray:
    img = rng.integers(0, 40, (size, size, 3)).astype(np.float32) + age * 2.0
    img[..., 2 * female] += 60
    cv2.circle(img, (size // 2, size // 2), size // 3, (200, 180, 160), -1)
    if blond:  # a bright yellow band on top (BGR)
        img[: size // 5] = (40, 230, 240)
    if glasses:  # a dark bar across the eyes
        img[size // 2 - 3: size // 2 + 2, 6:-6] = 5
    return np.clip(img, 0, 255).astype(np.uint8)


def _celebahq_tree(root: Path, n: int = 90, seed: int = 0) -> Path:
    from zoo.data.adapters.celebahq import ATTRIBUTE_FILE

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        blond, glasses, male = int(rng.random() < 0.3), int(rng.random() < 0.3), int(rng.integers(0, 2))
        cv2.imwrite(str(root / "images" / f"{i}.jpg"), _face(rng, blond, glasses, 1 - male))
        vals = [blond, glasses] + [int(v) for v in rng.integers(0, 2, 36)] + [male, 1]
        rows.append(f"{i}.jpg " + " ".join("1" if v else "-1" for v in vals))
    (root / ATTRIBUTE_FILE).write_text(f"{n}\n{' '.join(NAMES)}\n" + "\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def zoo_env(tmp_path_factory):
    """A CelebA-HQ-style and a UTKFace-style dataset, scanned, with ZOO_ARTIFACTS / ZOO_CACHE in a temp dir."""
    base = tmp_path_factory.mktemp("attr")
    utk = base / "utk"
    utk.mkdir()
    rng = np.random.default_rng(1)
    for i in range(60):
        age, gender, race = int(rng.integers(1, 90)), int(rng.integers(0, 2)), int(rng.integers(0, 5))
        cv2.imwrite(str(utk / f"{age}_{gender}_{race}_2017010{i:010d}.jpg.chip.jpg"), _face(rng, 0, 0, gender, age))
    env = {"ZOO_ARTIFACTS": str(base / "artifacts"), "ZOO_CACHE": str(base / "cache")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        from zoo.data.manifest import scan

        scan("utkface", utk, progress=False)
        scan("celebahq", _celebahq_tree(base / "celeb"), progress=False, framing="aligned")
        yield {"base": base, "env": env}


TARGETS = {"blond_or_glasses": "Blond_Hair | Eyeglasses"}


def _cfg(**kw):
    from zoo.config import TrainConfig

    base = dict(name="attr", dataset="celebahq", tasks=["attr:blond_or_glasses"], targets=TARGETS,
                backbone="seed_cnn", backbone_kwargs={"width": 8, "hidden": 32}, img_size=32, epochs=3,
                batch_size=16, lr=3e-3, warmup_epochs=0.5, dropout=0.3, patience=50, device="cpu")
    return TrainConfig(**{**base, **kw})


def test_attribute_run_selects_its_epoch_on_val_auc_when_asked(zoo_env):
    from zoo.train import train

    r = train(_cfg(select="attr_auc", seed=5), progress=False)
    hist = pd.read_csv(Path(zoo_env["env"]["ZOO_ARTIFACTS"]) / "runs" / r["id"] / "history.csv")
    assert np.allclose(hist["val_attr_auc"], hist["val_attr:blond_or_glasses:auc"])  # one head: its AUC
    assert r["best_epoch"] == int(hist.loc[hist["val_attr_auc"].idxmax(), "epoch"])


def test_attribute_only_run_chooses_thresholds_and_predicts(zoo_env):
    from zoo.data.manifest import load_manifest
    from zoo.pipeline import Pipeline
    from zoo.registry import load
    from zoo.train import train

    r = train(_cfg(head_losses={"attr:blond_or_glasses": {"name": "focal", "gamma": 5, "alpha": 0.25}},
                   group_balance={"column": "gender", "strategy": "weights", "weights": {"female": 1.0,
                                                                                        "male": 0.1}}),
              progress=False)
    run_dir = Path(zoo_env["env"]["ZOO_ARTIFACTS"]) / "runs" / r["id"]
    hist = pd.read_csv(run_dir / "history.csv")
    assert np.isfinite(hist["val_attr_bacc"]).all() and r["best_epoch"] >= 1  # selected on attribute bal. acc
    rep = json.loads((run_dir / "run.json").read_text())["metrics"]["attributes"]["blond_or_glasses"]
    assert 0 < rep["threshold"] < 1
    m = load_manifest("celebahq").frame
    n_val, n_test = (m["split"] == "val").sum(), (m["split"] == "test").sum()
    assert rep["val"]["n"] == n_val and rep["test"]["n"] == n_test
    assert {"accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc"} <= set(rep["test"])
    p = load(r["id"])
    assert p.attributes == ("blond_or_glasses",) and p.targets == TARGETS
    imgs = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    out = p.predict(imgs)
    prob = out["attr:blond_or_glasses"]
    assert prob.shape == (5,) and ((0 <= prob) & (prob <= 1)).all() and np.isnan(out["age"]).all()
    for kw in ({"mc_dropout": 4}, {"tta": "flip+crop"}):  # probabilities averaged over passes / views
        q = p.predict(imgs, **kw)["attr:blond_or_glasses"]
        assert q.shape == (5,) and ((0 <= q) & (q <= 1)).all()
    flip = p.predict(imgs, tta="flip")["attr:blond_or_glasses"]
    one, mirrored = p.predict(imgs)["attr:blond_or_glasses"], p.predict(imgs[:, :, ::-1])["attr:blond_or_glasses"]
    np.testing.assert_allclose(flip, (one + mirrored) / 2, atol=1e-5)
    row = Pipeline([p]).predict_rgb(np.full((60, 60, 3), 128, np.uint8), "grey")[0]
    assert 0 <= row.predictions[r["id"]]["attr:blond_or_glasses"] <= 1


def test_age_from_utkface_and_attributes_from_celebahq_in_one_model(zoo_env):
    from zoo.inference import EnsemblePredictor
    from zoo.registry import load
    from zoo.train import Trainer, prepare_data, train

    cfg = _cfg(dataset="utkface", datasets=[{"name": "celebahq"}], tasks=["age", "attr:Eyeglasses",
                                                                           "attr:blond_or_glasses"], max_steps=12)
    data = prepare_data(cfg, progress=False)
    utk, celeb = data.test, data.other_tests["celebahq"]
    assert np.isnan(data.attrs[utk]).all() and np.isfinite(data.attrs[celeb]).all()
    assert np.isfinite(data.age[utk]).all() and np.isnan(data.age[celeb]).all()
    assert Trainer(cfg, data=data, progress=False).select == "mae"
    r = train(cfg, progress=False)
    assert np.isfinite(r["metrics"]["test"]["mae"])
    rep = r["metrics"]["attributes"]
    assert set(rep) == {"Eyeglasses", "blond_or_glasses"}
    assert rep["Eyeglasses"]["val"]["n"] == len(data.other_vals["celebahq"]) and rep["Eyeglasses"]["test"]["n"] == \
        len(celeb)  # thresholds from CelebA-HQ's val split, though UTKFace is the primary dataset
    p = load(r["id"])
    assert p.attributes == ("Eyeglasses", "blond_or_glasses")
    out = p.predict(np.zeros((2, 32, 32, 3), np.uint8))
    assert np.isfinite(out["age"]).all() and {"attr:Eyeglasses", "attr:blond_or_glasses"} <= set(out)
    # an ensemble averages the members that have an attribute
    single = train(_cfg(epochs=1), progress=False)["id"]
    ens = EnsemblePredictor([p, load(single)])
    assert ens.attributes == ("Eyeglasses", "blond_or_glasses")
    e_out = ens.predict(np.zeros((2, 32, 32, 3), np.uint8))
    np.testing.assert_allclose(e_out["attr:Eyeglasses"], out["attr:Eyeglasses"], atol=1e-6)
    both = [m.predict(np.zeros((2, 32, 32, 3), np.uint8))["attr:blond_or_glasses"] for m in ens.members]
    np.testing.assert_allclose(e_out["attr:blond_or_glasses"], np.mean(both, 0), atol=1e-6)


def test_unknown_attribute_fails_before_any_image_is_decoded(zoo_env, monkeypatch):
    import zoo.train as train_mod

    def no_decoding(*a, **k):
        raise AssertionError("images were decoded before the attribute names were checked")

    monkeypatch.setattr(train_mod, "load_images", no_decoding)
    with pytest.raises(ValueError, match=r"celebahq: unknown attribute 'Eyeglass'.*known: .*Eyeglasses"):
        train_mod.prepare_data(_cfg(tasks=["attr:Eyeglass"]), progress=False)
    with pytest.raises(ValueError, match=r"target 'Blond \| Eyeglasses': unknown attribute 'Blond'"):
        train_mod.prepare_data(_cfg(targets={"blond_or_glasses": "Blond | Eyeglasses"}), progress=False)
    with pytest.raises(ValueError, match="utkface: unknown attribute 'Eyeglasses'"):
        train_mod.prepare_data(_cfg(dataset="utkface", tasks=["age", "attr:Eyeglasses"]), progress=False)


def test_frozen_imagenet_lite_backbone_trains_attribute_heads_only(zoo_env):
    """Transfer with `freeze: linear_probe` on an attribute-only task: the backbone (and its BatchNorm statistics)
    stay as they are, the attribute head learns."""
    from zoo.train import Trainer

    t = Trainer(_cfg(backbone="efficientnet_lite0", backbone_kwargs={}, freeze="linear_probe", epochs=1),
                progress=False, root=zoo_env["base"] / "scratch")
    before = {k: v.clone() for k, v in t.model.backbone.state_dict().items()}
    head = t.model.attr.weight.detach().clone()
    assert math.isfinite(t.train_epoch()["train_loss"])
    after = t.model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.endswith("num_batches_tracked"))
    assert not torch.equal(head, t.model.attr.weight)


def test_an_ensemble_of_attribute_models_registers_its_thresholds(zoo_env):
    from zoo.ensemble import make_ensemble
    from zoo.inference import EnsemblePredictor
    from zoo.registry import load
    from zoo.train import train

    ids = [train(_cfg(epochs=1, seed=s), progress=False)["id"] for s in (1, 2)]
    e = make_ensemble(ids, progress=False)
    rep = e["metrics"]["attributes"]["blond_or_glasses"]
    assert 0 < rep["threshold"] < 1 and rep["test"]["n"] > 0 and 0 <= rep["test"]["accuracy"] <= 1
    assert load(e["id"]).attributes == ("blond_or_glasses",)
    other = load(train(_cfg(epochs=1, seed=3, targets={"blond_or_glasses": "Blond_Hair & Eyeglasses"}),
                       progress=False)["id"])
    with pytest.raises(ValueError, match="define target 'blond_or_glasses' differently"):
        EnsemblePredictor([load(ids[0]), other])
