"""Slice discovery: conjunctions of up to three image attributes and labels where a model's error is significantly
above its overall error. Pure pandas / numpy (no Streamlit): the page (dashboard/views/slices.py) caches it.

Input is one row per image (`dashboard.data.queries.slice_frame`). Every feature is binned into a few levels
(`FEATURES`): the labels (age group, gender, race), per-dataset quartiles of the measured image attributes
(brightness, contrast, blur, JPEG quality, face size, background, detector score), whether a face was found, and
the dataset. A slice is a conjunction of (feature = level) conditions over distinct features.

Why an exhaustive lattice and not `sliceline` (installed and tried on the shipped DB: best ensemble, UTKFace test,
the same binned features): Sliceline ranks by its own score, alpha·(relative error − 1) − (1 − alpha)·(relative
size − 1), and prunes the lattice by an upper bound of that score. It took 0.3–0.7 s per search (alpha 0.95 /
0.6) against 0.03–0.08 s for the full lattice here (same machine and load), returned near-duplicates side by side
("0–3 years" and "0–3 years ∧ face found", 339 images each), found no age slice at all with alpha 0.6, and reports
neither an interval nor how many candidates it evaluated, which a family-wise interval needs. The lattice is small
(≤ 12 features of ≤ 7 levels: ≤ 298 feature combinations, one `np.bincount` each over ~10k rows), so it is
enumerated in full, which gives every candidate's size, mean and variance exactly:

- Minimum support: a candidate has n ≥ `min_support` images with the metric defined, at least as many outside it,
  and at least as many outside it in each parent (the conjunction with one condition dropped): one that drops
  fewer images of its parent is that parent under another name. Conjunctions naming the very same images (pooled
  over datasets, "age group = unknown" is "dataset = celebahq") are one candidate, kept under the first name.
- Multiple testing: Bonferroni over the number m of distinct candidates tested, two-sided at family-wise level
  `alpha`: z = Φ⁻¹(1 − alpha / 2m) (shipped DB, UTKFace test, order 3: m = 3,644, z = 4.35). Chosen over a
  bootstrap with a family-wise (max-statistic) adjustment because it is closed-form (resampling 10k images 10³
  times for ~4k candidates costs seconds per page), valid under any dependence between overlapping slices, and
  errs on the safe side: nested candidates are positively correlated, so the true family-wise error is below
  alpha, which suits a screen meant not to cry wolf.
- Intervals: the slice's error (mean ± z·sd/√n for absolute age error, Wilson at z for misclassification), and the
  effect = slice error − overall error = (1 − n/N)·(slice − rest), whose standard error is (1 − n/N)·√(s²/n +
  s_rest²/(N − n)) (the slice is part of the overall set, so this is a two-sample difference with the rest). A slice
  is significant when the effect's lower bound is above 0.
- Redundancy: a conjunction is reported only if it is also significantly worse (same z) than each of its parents
  (the slice with one condition dropped), compared with the rest of that parent the same way. So "0–3 years ∧
  white" is not listed beside "0–3 years" unless being white adds error of its own, and a planted 2-way slice is not
  buried under its 3-way refinements.
- Ranking: by effect size (in the metric's units: years, or misclassified share), largest first.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist
from urllib.parse import unquote

import numpy as np
import pandas as pd

from dashboard.data.stats import mean_ci, wilson
from zoo.data.manifest import AGE_GROUPS

# UTKFace's infants (0–3) are where every headline model's gender fails (README, Results): the manifest's first age
# group (0–12) is split there so the search can name them; the other groups are the manifest's.
INFANT_MAX = 3
AGE_BANDS = ([(AGE_GROUPS[0][0], INFANT_MAX, f"{AGE_GROUPS[0][0]}-{INFANT_MAX}"),
              (INFANT_MAX + 1, AGE_GROUPS[0][1], f"{INFANT_MAX + 1}-{AGE_GROUPS[0][1]}")] + list(AGE_GROUPS[1:]))

# metric key -> (label, unit for effects)
METRICS = {
    "age_abs_error": ("absolute age error (years)", "years"),
    "gender_error": ("gender misclassification (share wrong)", "share"),
}
UNKNOWN = "unknown"
NO_FACE = "no face"


def _num(col: pd.Series) -> np.ndarray:
    """float array, NaN for missing (DuckDB hands nullable integers: `gender` is a TINYINT with NULLs)."""
    return pd.to_numeric(col, errors="coerce").astype("float64").to_numpy(dtype=float, na_value=np.nan)


def _age_band(f: pd.DataFrame) -> pd.Series:
    age = _num(f["age"])
    edges = [lo for lo, _, _ in AGE_BANDS[1:]]
    names = np.asarray([b[2] for b in AGE_BANDS], dtype=object)
    out = names[np.clip(np.searchsorted(np.asarray(edges, float), age, side="right"), 0, len(AGE_BANDS) - 1)]
    return pd.Series(np.where(np.isnan(age), UNKNOWN, out), index=f.index)


def _gender(f: pd.DataFrame) -> pd.Series:
    g = _num(f["gender"])
    return pd.Series(np.where(g == 0, "male", np.where(g == 1, "female", UNKNOWN)), index=f.index)


def _race(f: pd.DataFrame) -> pd.Series:
    return f["race"].astype(object).where(f["race"].notna(), UNKNOWN)


def _quartile(col: str, low: str, high: str, missing: str = UNKNOWN) -> Callable[[pd.DataFrame], pd.Series]:
    """Equal-count quarters within each dataset (datasets differ in every attribute; a pooled 'dark' would mostly
    name one dataset). Ties share a quarter (average rank), so a constant attribute is one level and drops out."""
    def bin_(f: pd.DataFrame) -> pd.Series:
        v = pd.Series(_num(f[col]), index=f.index)
        pct = v.groupby(f["dataset"]).rank(method="average", pct=True)
        q = np.ceil(pct.to_numpy(float) * 4).clip(1, 4)
        names = np.array([missing, f"Q1 {low}", "Q2", "Q3", f"Q4 {high}"], dtype=object)
        return pd.Series(names[np.nan_to_num(q, nan=0).astype(int)], index=f.index)
    return bin_


def _face_found(f: pd.DataFrame) -> pd.Series:
    v = f["face_found"]
    return pd.Series(np.where(v.isna(), UNKNOWN, np.where(v.fillna(False).astype(bool), "found",
                                                          "not found (fallback crop)")), index=f.index)


# feature name -> binning of the slice frame. Names are what the table and the Browser link show.
# `dataset` first: of conjunctions naming the same images, the first found is kept, and in a pooled search
# "dataset = celebahq" is the clear name of "age group = unknown" (CelebA-HQ has no ages).
FEATURES: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "dataset": lambda f: f["dataset"].astype(object),
    "age group": _age_band,
    "gender": _gender,
    "race": _race,
    "brightness": _quartile("brightness", "darkest", "brightest"),
    "contrast": _quartile("contrast", "flattest", "most contrast"),
    "blur": _quartile("blur", "blurriest", "sharpest"),  # Laplacian variance: low = blurry
    "JPEG quality": _quartile("jpeg_quality", "lowest", "highest", missing="not JPEG"),
    "face size": _quartile("face_size", "smallest", "largest", missing=NO_FACE),
    "background": _quartile("background", "plainest", "busiest"),
    "face score": _quartile("face_score", "weakest", "strongest", missing=NO_FACE),
    "face found": _face_found,
}


def errors(frame: pd.DataFrame, metric: str) -> pd.Series:
    """The per-image error of `metric` (NaN where it is undefined: no age label, no gender head...)."""
    if metric == "age_abs_error":
        return pd.Series(np.abs(_num(frame["age_pred"]) - _num(frame["age"])), index=frame.index)
    if metric == "gender_error":
        p, g = _num(frame["gender_prob"]), _num(frame["gender"])
        wrong = ((p >= 0.5) != (g == 1)).astype(float)
        return pd.Series(np.where(np.isnan(p) | np.isnan(g), np.nan, wrong), index=frame.index)
    raise ValueError(f"unknown slice metric {metric!r}; known: {', '.join(METRICS)}")


def binned(frame: pd.DataFrame) -> pd.DataFrame:
    """Every feature's level per image (strings), same index as `frame`."""
    return pd.DataFrame({name: fn(frame) for name, fn in FEATURES.items()}, index=frame.index)


@dataclass
class SliceReport:
    slices: pd.DataFrame  # reported slices, ranked: see `search`
    metric: str
    overall: float = float("nan")
    n: int = 0  # images with the metric defined
    n_tested: int = 0  # candidates with enough support: the Bonferroni m
    n_significant: int = 0  # before the redundancy filter
    z: float = float("nan")
    alpha: float = 0.05
    min_support: int = 0
    max_order: int = 0
    features: list = field(default_factory=list)  # features with ≥ 2 levels, the ones searched
    seconds: float = 0.0


COLUMNS = ["conditions", "description", "order", "n", "error", "error_lo", "error_hi", "overall", "effect",
           "effect_lo", "effect_hi"]


def describe(conditions) -> str:
    return " ∧ ".join(f"{k} = {v}" for k, v in conditions)


def _escape(text: str) -> str:  # only the separators: the link's own URL encoding does the rest
    return str(text).replace("%", "%25").replace(";", "%3B").replace("=", "%3D")


def spec(conditions) -> str:
    """A slice as one string (the Browser link's `slice` parameter): `feature=level;feature=level`."""
    return ";".join(f"{_escape(k)}={_escape(v)}" for k, v in conditions)


def parse_spec(text: str) -> tuple[tuple[str, str], ...]:
    """Inverse of `spec`; unknown features raise ValueError (one line naming them)."""
    out = []
    for part in (text or "").split(";"):
        if not part:
            continue
        k, _, v = part.partition("=")
        k, v = unquote(k), unquote(v)
        if k not in FEATURES:
            raise ValueError(f"unknown slice feature {k!r}; known: {', '.join(FEATURES)}")
        out.append((k, v))
    return tuple(out)


def members(frame: pd.DataFrame, conditions, metric: str | None = None) -> list[tuple[str, str]]:
    """(dataset, image_id) of the frame's images in the slice, binned exactly as the search bins them: with
    `metric`, among the images it counts (the metric defined; quartiles are taken over those), so the Browser shows
    the n images the table reports."""
    if frame is None or not len(frame):
        return []
    if metric:
        frame = frame.loc[errors(frame, metric).notna().to_numpy()]
    mask = np.ones(len(frame), bool)
    for k, v in conditions:
        mask &= (FEATURES[k](frame).to_numpy(object) == v)
    sub = frame.loc[mask, ["dataset", "image_id"]]
    return list(zip(sub["dataset"], sub["image_id"]))


def _excess(n, s, ss, nt, st, sst, z):
    """Effect of a slice (n, Σe, Σe²) inside a superset (nt, Σ, Σ²) on the superset's mean: (1 − n/nt)·(mean −
    mean of the rest), with its ± z interval. Arrays broadcast."""
    with np.errstate(invalid="ignore", divide="ignore"):
        nr = nt - n
        m, mr = s / n, (st - s) / nr
        v = np.maximum(ss / n - m * m, 0) * n / np.maximum(n - 1, 1)
        vr = np.maximum((sst - ss) / nr - mr * mr, 0) * nr / np.maximum(nr - 1, 1)
        f = 1 - n / nt
        d = f * (m - mr)
        h = z * f * np.sqrt(v / n + vr / nr)
    return d, d - h, d + h


def _parents(t: np.ndarray) -> list[np.ndarray]:
    """The parents of every cell of a combination's tensor, one per feature (axis), broadcastable to its shape: the
    sum over that axis (every image has exactly one level of each feature). None for a single feature: its parent
    is everything, handled as the overall set."""
    return [t.sum(axis=j, keepdims=True) for j in range(t.ndim)] if t.ndim > 1 else []


def search(frame: pd.DataFrame, metric: str = "age_abs_error", min_support: int = 30, max_order: int = 3,
           alpha: float = 0.05, top: int | None = None) -> SliceReport:
    """Slices of `frame` (one row per image, `queries.slice_frame`) where `metric` is significantly above its
    overall value: Bonferroni-adjusted intervals over every candidate with ≥ `min_support` images, conjunctions of
    up to `max_order` features, each significantly worse than its parents; ranked by effect (see the module
    docstring). `slices` columns: conditions (tuple of (feature, level)), description, order, n, error, error_lo,
    error_hi (the slice's error and its adjusted interval), overall, effect, effect_lo, effect_hi."""
    if metric not in METRICS:
        raise ValueError(f"unknown slice metric {metric!r}; known: {', '.join(METRICS)}")
    if int(min_support) < 1 or int(max_order) < 1:
        raise ValueError(f"min_support and max_order must be ≥ 1 (got {min_support}, {max_order})")
    t0 = time.perf_counter()
    rep = SliceReport(pd.DataFrame(columns=COLUMNS), metric, alpha=alpha, min_support=int(min_support),
                      max_order=int(max_order))
    if frame is None or not len(frame):
        return rep
    e = errors(frame, metric)
    keep = e.notna().to_numpy()
    if not keep.any():
        return rep
    f = frame.loc[keep]
    err = e.to_numpy(float)[keep]
    N = len(err)
    S, SS = err.sum(), (err * err).sum()
    rep.n, rep.overall = N, S / N
    levels, codes = {}, {}
    for name, fn in FEATURES.items():
        cat = pd.Categorical(fn(f))
        if len(cat.categories) >= 2:  # a constant feature (one dataset, JPEG quality 75 everywhere) slices nothing
            levels[name], codes[name] = list(cat.categories), cat.codes.astype(np.int64)
    rep.features = list(levels)

    # Dense tensors per feature combination, one bincount each: count, Σe, Σe² and a fingerprint of the image set
    # (Σ of a random weight per image), so that conjunctions naming the same images (pooled over datasets,
    # "age unknown" = "race unknown" = "dataset celebahq") are one candidate.
    fp_w = np.random.default_rng(0).random(N)
    cells = {}
    for k in range(1, min(int(max_order), len(levels)) + 1):
        for combo in itertools.combinations(levels, k):
            shape = tuple(len(levels[c]) for c in combo)
            key = np.ravel_multi_index(tuple(codes[c] for c in combo), shape)
            size = int(np.prod(shape))
            cells[combo] = tuple(np.bincount(key, weights=w, minlength=size).reshape(shape)
                                 for w in (None, err, err * err, fp_w))

    cand, fps = {}, []
    for combo, (n, s, ss, fp) in cells.items():
        # Candidates: ≥ min_support images in the slice and outside it, and in each parent outside it (a
        # conjunction that drops fewer images of its parent is that parent; the rest's variance needs them too).
        ok = (n >= min_support) & (N - n >= min_support)
        for pn in _parents(n):
            ok &= pn - n >= min_support
        cand[combo] = ok
        fps.append(fp[ok])
    m = len(np.unique(np.concatenate(fps))) if fps else 0  # distinct image sets tested
    if m == 0:
        rep.seconds = time.perf_counter() - t0
        return rep
    z = NormalDist().inv_cdf(1 - alpha / (2 * m))
    rep.n_tested, rep.z = m, z

    sig, parts = [], []
    for combo, (n, s, ss, fp) in cells.items():
        d, lo, hi = _excess(n, s, ss, N, S, SS, z)
        ok = cand[combo] & (lo > 0)
        sig.append(fp[ok])
        # ... and significantly worse than each parent, compared with the rest of that parent
        for pn, ps, pss in zip(_parents(n), _parents(s), _parents(ss)):
            ok &= _excess(n, s, ss, pn, ps, pss, z)[1] > 0
        idx = np.nonzero(ok)
        if len(idx[0]):
            parts.append(pd.DataFrame({"combo": [combo] * len(idx[0]), "idx": list(zip(*idx)), "order": len(combo),
                                       "n": n[idx], "s": s[idx], "ss": ss[idx], "fp": fp[idx], "effect": d[idx],
                                       "effect_lo": lo[idx], "effect_hi": hi[idx]}))
    rep.n_significant = len(np.unique(np.concatenate(sig)))
    cand = (pd.concat(parts, ignore_index=True) if parts else
            pd.DataFrame(columns=["combo", "idx", "order", "n", "s", "ss", "fp", "effect", "effect_lo", "effect_hi"]))
    cand = cand.drop_duplicates("fp", keep="first")  # same images: keep the first found, of the lowest order
    out = pd.DataFrame({
        "conditions": [tuple((c, levels[c][i]) for c, i in zip(r.combo, r.idx)) for r in cand.itertuples()],
        "order": cand["order"].to_numpy(int), "n": cand["n"].to_numpy(np.int64),
        "error": (cand["s"] / cand["n"]).to_numpy(float)})
    out.insert(1, "description", [describe(c) for c in out["conditions"]])
    if metric == "gender_error":
        lo, hi = wilson(cand["s"].to_numpy(), cand["n"].to_numpy(), z=z)
    else:
        nn = cand["n"].to_numpy(float)
        sd = np.sqrt(np.maximum(cand["ss"].to_numpy() / nn - out["error"].to_numpy() ** 2, 0) * nn
                     / np.maximum(nn - 1, 1))
        lo, hi = mean_ci(out["error"].to_numpy(), sd, nn, z=z)
    out["error_lo"], out["error_hi"], out["overall"] = lo, hi, rep.overall
    for c in ("effect", "effect_lo", "effect_hi"):
        out[c] = cand[c].to_numpy(float)
    out = out.sort_values(["effect", "order", "n"], ascending=[False, True, False], kind="stable")
    out = out.reset_index(drop=True)[COLUMNS]
    rep.slices = out.head(top) if top else out
    rep.seconds = time.perf_counter() - t0
    return rep
