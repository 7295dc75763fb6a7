"""Photos from users (files, uploads, camera shots) -> upright RGB arrays, with a clear error for anything unusable.

    photo = decode_photo(data)               # bytes -> RGB uint8, EXIF orientation applied; PhotoError on bad input
    photo = read_photo(path)                 # the same from a file, size-checked before reading it whole

Faces are then found and aligned by `zoo.faces`. Nothing here writes to disk: uploads are decoded from memory.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_PIXELS = 50_000_000  # larger photos are refused before decoding (decompression bombs, huge scans)
MAX_BYTES = 60 * 1024 * 1024


class PhotoError(ValueError):
    """An upload the app cannot use; `str(err)` is a message meant for the user."""


class NotAnImage(PhotoError):
    pass


class ImageTooLarge(PhotoError):
    pass


class CorruptImage(PhotoError):
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


def _to_rgb(im) -> tuple[np.ndarray, str]:
    """Any PIL mode -> RGB uint8; transparency is composited onto white, high bit depths are rescaled."""
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


def read_photo(path: str | Path, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> Photo:
    """`decode_photo` of a file; a file over `max_bytes` is refused without reading it."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise ImageTooLarge(f"{path.name} is {size / 2**20:.0f} MB; photos up to {max_bytes // 2**20} MB are "
                            "accepted.")
    return decode_photo(path.read_bytes(), max_pixels, max_bytes)


def decode_photo(data: bytes, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> Photo:
    """Decode a photo file held in memory into an upright RGB image.

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


def draw_faces(rgb: np.ndarray, faces: list, max_side: int = 900, labels: list[str] | None = None) -> np.ndarray:
    """A preview: each face's box and landmarks drawn and numbered (1 = largest, or `labels`), downscaled to
    max_side. `faces` are `zoo.faces.Face`s."""
    import cv2

    h, w = rgb.shape[:2]
    k = min(1.0, max_side / max(h, w))
    out = cv2.resize(rgb, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA) if k < 1 \
        else rgb.copy()
    thick = max(2, round(min(out.shape[:2]) / 150))
    for i, f in enumerate(faces):
        x, y, bw, bh = f.box
        p0, p1 = (round(x * k), round(y * k)), (round((x + bw) * k), round((y + bh) * k))
        cv2.rectangle(out, p0, p1, (255, 200, 0), thick)
        for px, py in f.landmarks:
            cv2.circle(out, (round(px * k), round(py * k)), thick, (0, 255, 120), -1)
        text = labels[i] if labels else str(i + 1)
        cv2.putText(out, text, (p0[0] + thick, max(p0[1] - 2 * thick, 10 * thick)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35 * thick, (255, 200, 0), thick)
    return out


def image_digest(rgb: np.ndarray) -> str:
    """A content key for caching predictions of a crop."""
    import hashlib

    return hashlib.sha1(rgb.tobytes() + str(rgb.shape).encode()).hexdigest()[:16]
