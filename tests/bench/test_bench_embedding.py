"""The embedding map's projection (bench.embedding): UMAP when it can, PCA otherwise, deterministic, neighbours kept.
The bench's `--embed` step end to end is in test_bench_run.py (it needs the tiny trained models there)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from bench import embedding as E


def _clusters(n_per: int, dims: int = 64, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k well separated blobs of features (directions differ: what the L2 normalisation keeps)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (k, dims)) * 4
    labels = np.repeat(np.arange(k), n_per)
    return centres[labels] + rng.normal(0, 0.3, (k * n_per, dims)), labels


def _separated(xy: np.ndarray, labels: np.ndarray) -> bool:
    """Every point's nearest neighbour on the map is of its own blob."""
    return all(labels[E.nearest(xy, i, 1)[0]] == labels[i] for i in range(len(xy)))


def test_few_images_fall_back_to_pca_and_keep_the_clusters():
    f, labels = _clusters(10)  # 30 < UMAP_MIN_IMAGES
    xy, method = E.project(f)
    assert method == "pca" and xy.shape == (30, 2) and xy.dtype == np.float32
    assert _separated(xy, labels)
    again, _ = E.project(f)
    assert np.array_equal(xy, again)  # a refit draws the same map
    with pytest.raises(ValueError, match="at least"):
        E.project(f, method="umap")


def test_pca_fallback_when_umap_is_not_importable(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` raises ImportError
    f, labels = _clusters(E.UMAP_MIN_IMAGES // 3 + 5)
    assert not E.umap_available()
    xy, method = E.project(f)
    assert method == "pca" and _separated(xy, labels)


def test_tiny_inputs():
    assert E.project(np.zeros((0, 8)))[0].shape == (0, 2)
    xy, method = E.project(np.ones((1, 8)))
    assert xy.shape == (1, 2) and method == "pca"
    with pytest.raises(ValueError, match="unknown projection"):
        E.project(np.ones((4, 8)), method="tsne")


def test_umap_keeps_neighbourhoods():
    pytest.importorskip("umap")
    f, labels = _clusters(50)  # 150 >= UMAP_MIN_IMAGES (first fit in a process compiles: ~20 s)
    xy, method = E.project(f)
    assert method == "umap" and xy.shape == (150, 2) and xy.dtype == np.float32 and np.isfinite(xy).all()
    assert _separated(xy, labels)


def test_nearest_is_by_distance_on_the_map():
    xy = np.array([[0, 0], [5, 5], [1, 0], [0, 2], [10, 10]], np.float32)
    assert E.nearest(xy, 0, 3).tolist() == [2, 3, 1]
    assert E.nearest(xy, 4, 10).tolist() == [1, 3, 2, 0]  # k capped, itself never listed
