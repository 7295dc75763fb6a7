"""Shared fixtures: an isolated output environment and tiny real JPEGs for dataset fixture trees."""
from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]  # the repository root, for tests that run its CLIs or read artifacts/

# Ctrl-C as in a terminal, for this process and the CLIs it starts, even when the suite runs as a background job
# whose shell left SIGINT ignored (an ignored signal stays ignored across exec; a handler does not).
signal.signal(signal.SIGINT, signal.default_int_handler)


def learnable_face(rng: np.random.Generator, age: int, gender: int, size: int = 40) -> np.ndarray:
    """A synthetic 'face' whose brightness follows age and whose hue follows gender, so tiny models can learn."""
    img = rng.integers(0, 40, (size, size, 3)).astype(np.float32) + age * 2.0
    img[..., 2 * gender] += 60
    cv2.circle(img, (size // 2, size // 2), size // 3, (200, 180, 160), -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_jpeg(path: Path | str, size: tuple[int, int] = (32, 32), color: tuple[int, int, int] | None = None,
              quality: int = 90) -> Path:
    """Write a small real JPEG (size = (width, height)) at `path`, creating parent folders.

    The pixels are a base colour (given, or derived from the file name) plus noise seeded by the full path, so two
    files never share content hashes unless copied byte for byte. Encoded in memory, so any file name works
    (spaces, upper-case or doubled extensions)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = int(hashlib.sha1(str(path).encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.array(color if color is not None else rng.integers(30, 220, 3), dtype=np.int16)
    img = np.clip(base + rng.integers(-25, 26, (h, w, 3)), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    path.write_bytes(buf.tobytes())
    return path


@pytest.fixture(name="make_jpeg")
def make_jpeg_fixture():
    """The `make_jpeg(path, size=(w, h), color=None)` helper, as a fixture."""
    return make_jpeg


@pytest.fixture
def tmp_env(tmp_path, monkeypatch):
    """ZOO_ARTIFACTS and ZOO_CACHE redirected into tmp_path, so nothing is written into the checkout."""
    env = SimpleNamespace(artifacts=tmp_path / "artifacts", cache=tmp_path / "cache", base=tmp_path)
    monkeypatch.setenv("ZOO_ARTIFACTS", str(env.artifacts))
    monkeypatch.setenv("ZOO_CACHE", str(env.cache))
    return env


@contextmanager
def db_writer(db: Path | str) -> Iterator[None]:
    """Another process holding the DuckDB file open for writing (as a bench merge does) for the `with` body: it
    commits a bench_runs row first, so the file's version changes and readers cannot use their cached results."""
    writer = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, time\n"
        f"c = duckdb.connect({str(db)!r})\n"
        "c.execute(\"INSERT INTO bench_runs (run_id) VALUES ('writer')\"); c.execute('CHECKPOINT')\n"
        "print('ready', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        yield
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()


@pytest.fixture
def dashboard_env(monkeypatch):
    """`point_at(artifacts_folder)`: the dashboard (AppTest) reads that folder's DB and registry, with a cache inside
    it and no shared data."""
    def point_at(folder: Path) -> None:
        monkeypatch.setenv("ZOO_ARTIFACTS", str(folder))
        monkeypatch.setenv("ZOO_CACHE", str(folder / "cache"))
        monkeypatch.delenv("ZOO_BENCH_DB", raising=False)
        monkeypatch.setenv("ZOO_SHARED_DATA", str(folder / "no-shared-data"))
    return point_at


def write_judged_synth_set(artifacts: Path, model: str, name: str = "gan-demo") -> Path:
    """A synthetic set's fidelity report and sample grid under `artifacts`/synth/`name`, as `python -m synth fidelity`
    writes them (judged by `model`), for the dashboard's Data studies page."""
    import json

    from synth.fidelity import label_fidelity, write_grid

    rng = np.random.default_rng(0)
    age, gender = rng.integers(1, 90, 60).astype(float), rng.integers(0, 2, 60)
    folder = artifacts / "synth" / name
    rec = {"name": name, "generator": name, "model": model,
           "synthetic": label_fidelity(age + rng.normal(0, 8, 60), rng.random(60), age, gender),
           "real_test": label_fidelity(age + rng.normal(0, 4, 60), gender * 0.9 + 0.05, age, gender),
           "feature_distance": {"fd_synthetic_vs_real_test": 41.5, "fd_real_train_vs_real_test": 3.2},
           "grid": write_grid(folder / "grid.png", rng.integers(0, 255, (60, 32, 32, 3), np.uint8), age, gender)}
    (folder / "fidelity.json").write_text(json.dumps(rec))
    return folder
