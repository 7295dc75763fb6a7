"""The embedding map: a 2-D projection of a model's penultimate features over the images of one dataset, stored by
`bench run --embed` in the `embeddings` table (bench/SCHEMA.md) and drawn by the dashboard's Embedding map page.

Features (`Predictor.embed`: what the heads read, plain view; ensembles concatenate their members' L2-normalised
blocks) are L2-normalised per image, so distances are cosine-like, reduced by PCA to at most PCA_DIMS dimensions
(denoises and makes UMAP's neighbour search cheap), then projected by UMAP (`umap-learn`: neighbourhoods kept, so
images close on the map look alike to the model). PCA to 2 dimensions is the fallback when `umap` is not importable
or there are fewer than UMAP_MIN_IMAGES images (a UMAP of a few dozen points says little, and its first fit in a
process spends ~20-100 s compiling). Both are deterministic (fixed seed): a refit of the same features draws the same
map. Coordinates are float32 (the schema's FLOAT): the map is for looking at.
"""
from __future__ import annotations

import warnings

import numpy as np

UMAP_MIN_IMAGES = 100
UMAP_NEIGHBORS = 15  # umap-learn's default: local structure without fragmenting a few-thousand-image set
UMAP_MIN_DIST = 0.1
PCA_DIMS = 50
SEED = 0
METHODS = ("umap", "pca")


def umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def _normalise(features: np.ndarray) -> np.ndarray:
    f = np.asarray(features, np.float64).reshape(len(features), -1)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def _pca(f: np.ndarray, dims: int) -> np.ndarray:
    """The first `dims` principal components of `f` (rows), sign fixed so a refit is identical."""
    from sklearn.decomposition import PCA

    dims = max(1, min(dims, f.shape[0], f.shape[1]))
    z = PCA(n_components=dims, random_state=SEED).fit_transform(f)  # "auto": randomized when large
    flip = np.sign(z[np.abs(z).argmax(axis=0), np.arange(z.shape[1])])  # largest entry of each axis positive
    return z * np.where(flip == 0, 1.0, flip)


def project(features: np.ndarray, method: str | None = None) -> tuple[np.ndarray, str]:
    """float [N, D] features -> (float32 [N, 2] map coordinates, the method used: `umap` or `pca`).

    `method` None picks UMAP when it can (see the module doc); asking for `umap` when it cannot run raises
    ValueError. One image sits at the origin; two lie on the x axis."""
    if method not in (None, *METHODS):
        raise ValueError(f"unknown projection {method!r}; choose from {', '.join(METHODS)}")
    n = len(features)
    if n < 2:  # nothing to spread out: the origin
        if method == "umap":
            raise ValueError(f"UMAP needs umap-learn and at least {UMAP_MIN_IMAGES} images (got {n})")
        return np.zeros((n, 2), np.float32), "pca"
    f = _normalise(features)
    can_umap = n >= UMAP_MIN_IMAGES and umap_available()
    if method == "umap" and not can_umap:
        raise ValueError(f"UMAP needs umap-learn and at least {UMAP_MIN_IMAGES} images (got {n})")
    if method is None:
        method = "umap" if can_umap else "pca"
    if method == "pca":
        z = _pca(f, 2)
        xy = np.zeros((n, 2))
        xy[:, :z.shape[1]] = z
        return xy.astype(np.float32), "pca"
    import umap

    z = _pca(f, PCA_DIMS) if f.shape[1] > PCA_DIMS else f
    with warnings.catch_warnings():  # "n_jobs overridden to 1 by setting random_state": the price of a fixed map
        warnings.simplefilter("ignore", UserWarning)
        xy = umap.UMAP(n_neighbors=min(UMAP_NEIGHBORS, n - 1), min_dist=UMAP_MIN_DIST, n_components=2,
                       random_state=SEED).fit_transform(z)
    return np.asarray(xy, np.float32), "umap"


def nearest(xy: np.ndarray, i: int, k: int = 8) -> np.ndarray:
    """Indices of the k points nearest to point `i` on the map (Euclidean, itself excluded), nearest first."""
    xy = np.asarray(xy, np.float64)
    d = np.hypot(xy[:, 0] - xy[i, 0], xy[:, 1] - xy[i, 1])
    d[i] = np.inf
    k = min(k, len(xy) - 1)
    if k <= 0:
        return np.zeros(0, np.int64)
    idx = np.argpartition(d, k - 1)[:k]
    return idx[np.argsort(d[idx], kind="stable")]
