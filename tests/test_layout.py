"""The package layering: `zoo` is the base (never imports `bench`, `synth` or `dashboard`), and the console entry
points `pip install -e .` creates resolve to the CLIs' `main` functions."""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys

import pytest

from zoo.paths import REPO

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

UPPER = ("bench", "synth", "dashboard")


def _imports(path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


def test_zoo_never_imports_the_packages_built_on_it():
    bad = {f"{p.relative_to(REPO)}: {m}" for p in (REPO / "zoo").rglob("*.py") for m in _imports(p)
           if m.split(".")[0] in UPPER}
    assert not bad, sorted(bad)


def test_importing_every_zoo_registry_and_the_inference_api_loads_no_bench_module():
    code = ("import sys, zoo, zoo.cli, zoo.device, zoo.peers, zoo.pipeline, zoo.plugins as p; p.registries(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('bench', 'synth', 'dashboard')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_console_entry_points_resolve_to_callables():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"agezoo", "agezoo-bench", "agezoo-synth"}
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name
