"""Every user mistake on the command line is one line on stderr, exit 2, no traceback and no folder left behind; every
shipped config still validates (without changing any run's identity)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO  # noqa: E402

# name -> file content, written into the test's temp folder (never under artifacts/)
FILES = {
    "bad.yaml": "backbone: seed_cnn\nlr: -0.1\nimg_size: 0\n",
    "empty.yaml": "",
    "empty_map.yaml": "{}\n",
    "invalid.yaml": "backbone: [resnet18\nlr: 0.1\n",
    "scalar.yaml": "resnet18\n",
    "list.yaml": "- backbone: resnet18\n",
    "ok.yaml": "backbone: seed_cnn\nimg_size: 32\n",
    "neg_epochs.yaml": "backbone: seed_cnn\nepochs: -1\n",
    "nosuch_backbone.yaml": "backbone: nosuch\n",
    "grid_bad.yaml": "base: {backbone: seed_cnn}\nruns:\n- {name: a, lr: 0}\n- {name: b, augment: wild}\n",
}

# (program, argv with {tmp} for the temp folder, text the one error line must contain)
CASES = [
    ("zoo", ["train", "--config", "{tmp}/bad.yaml"], "img_size must be >= 16 (got 0); lr must be > 0 (got -0.1)"),
    ("zoo", ["train", "--config", "{tmp}/empty.yaml"], "empty.yaml: it is empty"),
    ("zoo", ["train", "--config", "{tmp}/empty_map.yaml"], "it is empty"),
    ("zoo", ["train", "--config", "{tmp}/invalid.yaml"], "invalid YAML in"),
    ("zoo", ["train", "--config", "{tmp}/scalar.yaml"], "scalar.yaml: a config is a mapping"),
    ("zoo", ["train", "--config", "{tmp}/list.yaml"], "a config is a mapping"),
    ("zoo", ["train", "--config", "{tmp}/missing.yaml"], "missing.yaml"),
    ("zoo", ["train", "--config", "{tmp}/ok.yaml", "--set", "lr"], "--set expects KEY=VALUE, got 'lr'"),
    ("zoo", ["train", "--config", "{tmp}/ok.yaml", "--set", "batch_size=abc"], "batch_size must be an integer"),
    ("zoo", ["train", "--config", "{tmp}/ok.yaml", "--set", "no_such_key=1"], "unknown config keys"),
    ("zoo", ["train", "--config", "{tmp}/ok.yaml", "--set", "dataset=nosuch"], "dataset 'nosuch' is neither"),
    ("zoo", ["train", "--config", "{tmp}/ok.yaml", "--set", "pretrained={tmp}/none.safetensors"],
     "no checkpoint file"),
    ("zoo", ["train", "--config", "{tmp}/neg_epochs.yaml"], "epochs must be >= 1 (got -1)"),
    ("zoo", ["train", "--config", "{tmp}/nosuch_backbone.yaml"], "backbone must be one of"),
    ("zoo", ["grid", "{tmp}/invalid.yaml"], "invalid YAML in"),
    ("zoo", ["grid", "{tmp}/grid_bad.yaml"], "runs[0] a: lr must be > 0 (got 0); runs[1] b: augment must be one of"),
    ("zoo", ["list", "--sort", "nosuch"], "--sort: no column 'nosuch'; columns: id, test_mae"),
    ("zoo", ["data", "cache", "--dataset", "utkface", "--size", "0"], "--size must be >= 16"),
    ("zoo", ["ensemble", "--members", "nosuch-1,nosuch-2"], "no model 'nosuch-1'"),
    ("zoo", ["adapt", "nosuch", "--to", "utkface"], "no model 'nosuch'"),
    ("zoo", ["evaluate", "nosuch"], "no model 'nosuch'"),
    ("synth", ["sample", "--generator", "nosuch", "--n", "2"], "no checkpoint for generator 'nosuch'"),
    ("synth", ["sample", "--n", "2"], "pass exactly one of"),
    ("synth", ["fidelity", "--generator", "nosuch", "--model", "x"], "no synthetic set 'nosuch'"),
    ("synth", ["train", "--config", "{tmp}/invalid.yaml"], "invalid YAML in"),
    ("synth", ["train", "--config", "{tmp}/scalar.yaml"], "invalid synth config"),
    ("synth", ["train", "--set", "size=abc"], "size must be an integer"),
]


def _files(tmp: Path) -> None:
    for name, text in FILES.items():
        (tmp / name).write_text(text)


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.mark.parametrize("prog,argv,expect", CASES, ids=[f"{p} {' '.join(a)}" for p, a, _ in CASES])
def test_cli_error_is_one_line_exit_2_and_leaves_nothing(prog, argv, expect, tmp_env, capsys, monkeypatch):
    _files(tmp_env.base)
    argv = [a.replace("{tmp}", str(tmp_env.base)) for a in argv]
    # a registry with two runs, so `list` gets as far as sorting
    monkeypatch.setattr("zoo.registry.runs_table", lambda: pd.DataFrame({"id": ["a", "b"], "test_mae": [5.0, 4.0]}))
    if prog == "zoo":
        from zoo.cli import main
    else:
        from synth.__main__ import main
    before = _tree(tmp_env.base)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert expect in lines[0], lines[0]
    assert _tree(tmp_env.base) == before  # no run folder, no cache, no checkpoint folder


@pytest.mark.parametrize("argv", [["-m", "zoo", "train", "--config", "{tmp}/bad.yaml"],
                                  ["-m", "synth", "train", "--config", "{tmp}/invalid.yaml"]])
def test_cli_error_has_no_traceback_at_process_level(argv, tmp_env):
    _files(tmp_env.base)
    env = {**os.environ, "ZOO_ARTIFACTS": str(tmp_env.artifacts), "ZOO_CACHE": str(tmp_env.cache),
           "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, *[a.replace("{tmp}", str(tmp_env.base)) for a in argv]], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
    assert not tmp_env.artifacts.exists()


def test_every_shipped_config_and_run_config_validates_unchanged():
    """Validation accepts everything that trained before, and never changes a value (so no run id moves)."""
    from zoo.config import TrainConfig, expand_grid, read_yaml

    n = 0
    for path in sorted((REPO / "zoo" / "configs").glob("*.yaml")):
        spec = read_yaml(path)
        if "generator" in spec:  # synth generator configs
            from synth.config import SynthConfig

            SynthConfig.from_yaml(path)
        elif {"runs", "grid"} & set(spec):
            assert expand_grid(spec, source=path)
        else:
            cfg = TrainConfig.from_yaml(path)
            assert {k: v for k, v in asdict(cfg).items() if k in spec} == spec, path
        n += 1
    runs = REPO / "artifacts" / "runs"
    for path in sorted(runs.glob("*/config.yaml")):
        d = read_yaml(path)
        cfg = TrainConfig.from_yaml(path)
        assert {k: v for k, v in asdict(cfg).items() if k in d} == d, path
        n += 1
    for path in sorted(runs.glob("*/run.json")):
        r = json.loads(path.read_text())
        if r["kind"] == "single":
            assert TrainConfig.from_dict(r["config"]).identity() == r["config"], path
            n += 1
    assert n > 10


def test_config_problems_are_gathered_and_typed():
    from zoo.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict({"lr": -0.1, "img_size": 0, "epochs": 2.5, "tasks": ["age", "age"], "dropout": 1,
                               "freeze": "stages:x", "source": "mixed:0:g", "optimizer": "adam", "channels_last": 1,
                               "max_steps": 0, "ema_decay": 1.0, "train_fraction": 0})
    msg = str(e.value)
    assert "\n" not in msg and len(e.value.problems) == 12, msg
    # YAML 1.1 reads 1e-3 as a string: a float field takes it as the number it is
    assert TrainConfig.from_dict({"lr": "1e-3"}).lr == 0.001
    with pytest.raises(ConfigError, match="no packaged ImageNet weights for backbone 'resnet18'"):
        TrainConfig.from_dict({"backbone": "resnet18", "pretrained": "imagenet"})
    TrainConfig().validate()  # the defaults are valid
