"""What each registered perturbation (bench/perturb.py) does to a face, at each severity: the Robustness page's
example grid. One real test image when one is readable (a square centre crop at the bench's perturbation size), else
a drawn face-like image, so the grid shows on any machine."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SIZE = 128  # = bench.run.PERTURB_SIZE (importing bench.run loads torch): the resolution the bench perturbs at


def square(img: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Centre square of an RGB image, resized to size x size (the bench's geometry, zoo.data.cache.square_resize)."""
    h, w = img.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    img = img[y:y + s, x:x + s]
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if s > size else cv2.INTER_LINEAR)


def read_image(path: str | Path, size: int = SIZE) -> np.ndarray | None:
    """RGB uint8 [size, size, 3] of an image file, or None when it does not decode."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None or min(img.shape[:2]) < 8:
        return None
    return square(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), size)


def drawn_face(size: int = SIZE) -> np.ndarray:
    """A face-like RGB image (skin-toned oval, hair, eyes, brows, nose, mouth on a textured background): enough
    structure for blur, JPEG or the background replacement to show what they do, when no real image is readable."""
    s = size / 128
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    bg = np.stack([90 + 80 * xx, 120 + 60 * yy, 150 + 40 * (1 - xx)], -1)
    bg += 18 * np.sin(xx * 40)[..., None] * np.cos(yy * 30)[..., None]  # texture, so a background change is visible
    img = np.clip(bg, 0, 255).astype(np.uint8)
    c = (size // 2, int(size * 0.52))

    def p(v: float) -> int:
        return round(v * s)

    cv2.ellipse(img, (c[0], c[1] - p(10)), (p(46), p(54)), 0, 180, 360, (60, 40, 30), -1, cv2.LINE_AA)  # hair
    cv2.ellipse(img, c, (p(40), p(52)), 0, 0, 360, (224, 172, 140), -1, cv2.LINE_AA)  # face
    cv2.ellipse(img, (c[0], c[1] - p(40)), (p(40), p(16)), 0, 180, 360, (60, 40, 30), -1, cv2.LINE_AA)  # fringe
    for dx in (-17, 17):
        cv2.ellipse(img, (c[0] + p(dx), c[1] - p(10)), (p(8), p(4)), 0, 0, 360, (250, 250, 250), -1, cv2.LINE_AA)
        cv2.circle(img, (c[0] + p(dx), c[1] - p(10)), p(3), (50, 35, 25), -1, cv2.LINE_AA)
        cv2.line(img, (c[0] + p(dx) - p(9), c[1] - p(20)), (c[0] + p(dx) + p(9), c[1] - p(21)), (70, 45, 30), p(2),
                 cv2.LINE_AA)
    cv2.line(img, (c[0], c[1] - p(6)), (c[0] - p(4), c[1] + p(10)), (180, 120, 100), max(1, p(2)), cv2.LINE_AA)
    cv2.ellipse(img, (c[0], c[1] + p(24)), (p(13), p(5)), 0, 0, 180, (170, 60, 70), max(1, p(3)), cv2.LINE_AA)
    return img


def example_image(paths, size: int = SIZE) -> tuple[np.ndarray, str | None]:
    """The first of `paths` that decodes, as (image, path); (drawn_face(), None) when none does."""
    for path in paths:
        if path is None:
            continue
        img = read_image(path, size)
        if img is not None:
            return img, str(path)
    return drawn_face(size), None


def grid(img: np.ndarray) -> list[dict]:
    """Every registered perturbation at severity 0 (clean) to its strongest: dicts of perturbation, severity,
    parameter (None at 0) and image, in registration order."""
    from bench.perturb import PERTURBATIONS, apply

    out = []
    for name in PERTURBATIONS:
        params = PERTURBATIONS.get(name).severities
        for sev in range(len(params) + 1):
            out.append({"perturbation": name, "severity": sev, "parameter": params[sev - 1] if sev else None,
                        "image": apply(name, img, sev)})
    return out


def png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()
