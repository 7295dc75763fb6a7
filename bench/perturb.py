"""Image perturbations for robustness benchmarking: a registry of pure functions uint8 HxWx3 → uint8 HxWx3.

Each perturbation has K ≥ 3 severities (1 = mild … K = strong); `apply(name, img, severity)` looks up the severity's
parameter. Parameters are relative to the image side where size matters (blur sigma, downscale factor), so the
same severity means the same degradation whatever resolution it is applied at. All functions are deterministic
(the noise background uses a fixed seed per severity), so a re-run reproduces the exact same pixels.

    brightness  darker lighting: linear-light exposure × 0.5 / 0.3 / 0.15
    gamma       brighter, washed-out lighting: gamma curve with γ = 0.7 / 0.5 / 0.3
    blur        Gaussian blur, sigma = 1 / 2 / 4 % of the image side
    jpeg        re-encoded at JPEG quality 30 / 15 / 5
    downscale   down by 2 / 4 / 8, then back up (lost resolution)
    background  outside the central face ellipse: heavy blur / flat grey / uniform noise (increasing departure
                from the original background)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np

from zoo.plugins import Registry

PerturbFn = Callable[[np.ndarray, Any], np.ndarray]


@dataclass(frozen=True)
class Perturbation:
    name: str
    fn: PerturbFn
    severities: tuple  # parameter for severity 1..K

    def __call__(self, img: np.ndarray, severity: int) -> np.ndarray:
        if severity == 0:
            return img
        if not 1 <= severity <= len(self.severities):
            raise ValueError(f"{self.name}: severity must be 1..{len(self.severities)}, got {severity}")
        out = self.fn(np.ascontiguousarray(img), self.severities[severity - 1])
        assert out.shape == img.shape and out.dtype == np.uint8, self.name
        return out


PERTURBATIONS = Registry("perturbation")  # name -> Perturbation, with meta `severities`
get_perturbation = PERTURBATIONS.get


def register_perturbation(name: str, severities: tuple) -> Callable[[PerturbFn], PerturbFn]:
    """Decorator: `fn(img, parameter) -> img`, with one parameter per severity 1..K (K >= 3)."""
    if len(severities) < 3:
        raise ValueError(f"{name}: a perturbation needs at least 3 severities")
    if name == "none":
        raise ValueError("perturbation 'none' is reserved for the clean images")
    PERTURBATIONS.register(name)  # a taken name fails here, at the decorator line

    def deco(fn: PerturbFn) -> PerturbFn:
        PERTURBATIONS.register(name, Perturbation(name, fn, tuple(severities)), severities=tuple(severities))
        return fn

    return deco


def list_perturbations() -> list[str]:
    """In registration order: the `default` suite's order."""
    return list(PERTURBATIONS)


def apply(name: str, img: np.ndarray, severity: int) -> np.ndarray:
    """One image (HxWx3) or a batch (BxHxWx3) perturbed at `severity` (0 or `none`: unchanged)."""
    if name == "none" or severity == 0:
        return img
    p = get_perturbation(name)
    if img.ndim == 4:
        return np.stack([p(x, severity) for x in img]) if len(img) else img.copy()
    return p(img, severity)


def resolve_suite(spec: str | None) -> list[tuple[str, int]]:
    """`none` → clean only; `default` → every registered perturbation at severities 1..3; `a,b` → those at all
    their severities. The clean condition ('none', 0) always comes first."""
    conds = [("none", 0)]
    spec = (spec or "none").strip()
    if spec == "none":
        return conds
    names = list(PERTURBATIONS) if spec == "default" else [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if n == "none":
            continue
        p = get_perturbation(n)
        k = 3 if spec == "default" else len(p.severities)
        conds += [(n, s) for s in range(1, k + 1)]
    return conds


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared with bench.attributes
# ---------------------------------------------------------------------------------------------------------------

def face_ellipse_mask(h: int, w: int, soft: float = 0.0) -> np.ndarray:
    """float32 [h, w] in [0, 1]: 1 inside the central face ellipse of an aligned face crop (UTKFace-style: face
    centred, ~75 % of the width, ~90 % of the height), 0 outside; `soft` feathers the edge (fraction of the side)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ry, rx = 0.45 * h, 0.37 * w
    d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)  # 1 on the ellipse
    if soft <= 0:
        return (d <= 1).astype(np.float32)
    band = soft * min(h, w) / min(rx, ry)
    return np.clip((1 + band / 2 - d) / band, 0, 1).astype(np.float32)


def luma(img: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an RGB uint8 image, float32."""
    return img[..., 0] * np.float32(0.299) + img[..., 1] * np.float32(0.587) + img[..., 2] * np.float32(0.114)


_TO_LINEAR = ((np.arange(256) / 255.0) ** 2.2).astype(np.float32)  # approximate sRGB decoding


def _lut(img: np.ndarray, table: np.ndarray) -> np.ndarray:
    return cv2.LUT(img, np.clip(np.rint(table), 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------------------------
# The perturbations
# ---------------------------------------------------------------------------------------------------------------

@register_perturbation("brightness", severities=(0.5, 0.3, 0.15))
def brightness(img: np.ndarray, exposure: float) -> np.ndarray:
    # Scale in linear light (what a shorter exposure / dimmer light does), then re-encode to display gamma.
    return _lut(img, 255.0 * (_TO_LINEAR * exposure) ** (1 / 2.2))


@register_perturbation("gamma", severities=(0.7, 0.5, 0.3))
def gamma(img: np.ndarray, g: float) -> np.ndarray:
    return _lut(img, 255.0 * (np.arange(256) / 255.0) ** g)


@register_perturbation("blur", severities=(0.01, 0.02, 0.04))
def blur(img: np.ndarray, sigma_frac: float) -> np.ndarray:
    sigma = sigma_frac * min(img.shape[:2])
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT101)


@register_perturbation("jpeg", severities=(30, 15, 5))
def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


@register_perturbation("downscale", severities=(2, 4, 8))
def downscale(img: np.ndarray, factor: int) -> np.ndarray:
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, round(w / factor)), max(1, round(h / factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


@register_perturbation("background", severities=("blur", "grey", "noise"))
def background(img: np.ndarray, mode: str) -> np.ndarray:
    h, w = img.shape[:2]
    if mode == "blur":
        s = 0.08 * min(h, w)
        fill = cv2.GaussianBlur(img, (0, 0), sigmaX=s, sigmaY=s).astype(np.float32)
    elif mode == "grey":
        fill = np.full(img.shape, 128, np.float32)
    elif mode == "noise":
        fill = np.random.default_rng(3).integers(0, 256, img.shape).astype(np.float32)
    else:
        raise ValueError(f"unknown background mode {mode!r}")
    m = face_ellipse_mask(h, w, soft=0.04)[..., None]
    return np.clip(np.rint(img * m + fill * (1 - m)), 0, 255).astype(np.uint8)
