"""dashboard/photo.py: bad uploads get clear errors; faces are found, chosen and cropped; orientation and colour
modes are normalised. Test photos are built here from scikit-image's bundled astronaut portrait (no download)."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dashboard import photo as P

pytestmark = pytest.mark.skipif(P.detector_name() is None, reason="no face detector installed (OpenCV Haar, dlib "
                                                                  "or scikit-image)")


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """An upright portrait with one frontal face (240 x 230 px)."""
    from skimage.data import astronaut

    return np.ascontiguousarray(astronaut()[20:260, 110:340])


def encode(arr: np.ndarray, fmt: str = "JPEG", mode: str | None = None, **kw) -> bytes:
    im = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but carries one tiny IDAT: cheap to build, huge if decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------------------- bad uploads
@pytest.mark.parametrize("data", [b"", b"hello, I am a text file\n" * 10, b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj"])
def test_not_an_image(data):
    with pytest.raises(P.NotAnImage) as e:
        P.decode_upload(data)
    msg = str(e.value)
    assert "JPEG" in msg or "empty" in msg
    assert "Traceback" not in msg


def test_100_megapixel_image_is_refused_before_decoding():
    data = png_header_only(10_000, 10_000)  # 100 MP claimed, a few dozen bytes
    assert len(data) < 200
    with pytest.raises(P.ImageTooLarge, match=r"10000 x 10000 px \(100 megapixels\).*limit is 50 MP"):
        P.decode_upload(data)
    # 400 MP: Pillow's own decompression-bomb guard fires first; same error type for the user.
    with pytest.raises(P.ImageTooLarge):
        P.decode_upload(png_header_only(20_000, 20_000))
    # Just under the limit with the same trick: accepted by the size check, then fails as corrupt (no pixels).
    with pytest.raises(P.CorruptImage):
        P.decode_upload(png_header_only(7000, 7000))


def test_oversized_file_is_refused():
    with pytest.raises(P.ImageTooLarge, match="MB"):
        P.decode_upload(b"\xff\xd8" + b"\x00" * 1024, max_bytes=512)


def test_truncated_jpeg_is_corrupt(face):
    data = encode(face)
    with pytest.raises(P.CorruptImage, match="damaged or truncated"):
        P.decode_upload(data[: len(data) // 3])


# ---------------------------------------------------------------------------------------------------- faces
def test_one_face_is_found_and_cropped_like_utkface(face):
    pic = P.decode_upload(encode(face))
    assert pic.format == "JPEG" and pic.orientation == 1 and pic.converted == ""
    faces = P.detect_faces(pic.rgb)
    assert len(faces) == 1
    f = faces[0]
    assert 60 <= f.w <= 160 and 40 <= f.x + f.w / 2 <= 190  # around the face, not the whole frame
    crop = P.face_crop(pic.rgb, f)
    assert crop.shape == (P.CROP_SIZE, P.CROP_SIZE, 3) and crop.dtype == np.uint8
    assert P.face_crop(pic.rgb, f, margin=1.5).shape == crop.shape
    assert P.detect_faces(crop), "the crop still shows a detectable face"


def test_face_near_the_border_is_padded(face):
    wide = np.ascontiguousarray(face[:, 40:])  # the face touches the left edge
    faces = P.detect_faces(wide)
    assert faces
    crop = P.face_crop(wide, faces[0], margin=1.6)
    assert crop.shape == (P.CROP_SIZE, P.CROP_SIZE, 3)


def test_no_face(face):
    rng = np.random.default_rng(0)
    for img in (np.full((300, 400, 3), 128, np.uint8), rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)):
        pic = P.decode_upload(encode(img, "PNG"))
        faces = P.detect_faces(pic.rgb)
        assert faces == []
        with pytest.raises(P.NoFaceFound, match="whole image"):
            P.require_face(faces)
        whole = P.whole_image_crop(pic.rgb)
        assert whole.shape == (P.CROP_SIZE, P.CROP_SIZE, 3)
    assert P.require_face(P.detect_faces(face))  # passes faces through


def test_several_faces_largest_first(face):
    small = np.ascontiguousarray(face[::2, ::2])
    canvas = np.full((260, 520, 3), 200, np.uint8)
    canvas[10:250, 10:240] = face
    canvas[60:180, 330:445] = small
    faces = P.detect_faces(canvas)
    assert len(faces) == 2
    assert faces[0].area > faces[1].area
    assert faces[0].x < 240 <= faces[1].x  # largest = the left, full-size one
    a, b = (P.face_crop(canvas, f) for f in faces)
    assert a.shape == b.shape == (P.CROP_SIZE, P.CROP_SIZE, 3) and not np.array_equal(a, b)
    preview = P.draw_faces(canvas, faces)
    assert preview.shape == canvas.shape and not np.array_equal(preview, canvas)


# -------------------------------------------------------------------------------------------- colour modes
def test_rgba_is_composited_onto_white(face):
    rgba = np.dstack([face, np.full(face.shape[:2], 255, np.uint8)])
    rgba[:30, :, 3] = 0  # a transparent band at the top
    pic = P.decode_upload(encode(rgba, "PNG"))
    assert pic.mode == "RGBA" and "transparency" in pic.converted
    assert pic.rgb.shape == face.shape
    assert (pic.rgb[:30] == 255).all()  # transparent -> white
    assert np.array_equal(pic.rgb[40:], face[40:])  # opaque pixels untouched
    assert len(P.detect_faces(pic.rgb)) == 1


def test_grayscale_8_and_16_bit(face):
    gray = np.asarray(Image.fromarray(face).convert("L"))
    pic = P.decode_upload(encode(gray, "PNG"))
    assert pic.mode == "L" and pic.rgb.shape == face.shape
    assert np.array_equal(pic.rgb[..., 0], gray) and np.array_equal(pic.rgb[..., 0], pic.rgb[..., 2])
    assert len(P.detect_faces(pic.rgb)) == 1
    g16 = gray.astype(np.uint16) * 257
    buf = io.BytesIO()
    Image.fromarray(g16).save(buf, "PNG")
    pic16 = P.decode_upload(buf.getvalue())
    assert pic16.rgb.dtype == np.uint8 and np.abs(pic16.rgb[..., 1].astype(int) - gray).max() <= 1


def test_cmyk_and_palette(face):
    cmyk = io.BytesIO()
    Image.fromarray(face).convert("CMYK").save(cmyk, "JPEG", quality=95)
    pic = P.decode_upload(cmyk.getvalue())
    assert pic.mode == "CMYK" and pic.rgb.shape == face.shape
    pal = io.BytesIO()
    Image.fromarray(face).convert("P").save(pal, "GIF")
    assert P.decode_upload(pal.getvalue()).rgb.shape == face.shape


@pytest.mark.parametrize("orientation,stored", [(6, lambda a: np.rot90(a, 1)), (3, lambda a: np.rot90(a, 2)),
                                                (8, lambda a: np.rot90(a, -1))])
def test_exif_orientation_is_applied(face, orientation, stored):
    """A phone photo stores sensor pixels plus an EXIF tag saying how to turn them; the app must show it upright."""
    raw = np.ascontiguousarray(stored(face))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(raw, "JPEG", quality=95, exif=exif.tobytes())
    pic = P.decode_upload(data)
    assert pic.orientation == orientation
    assert pic.rgb.shape == face.shape  # width / height swapped back for 90° turns
    diff = np.abs(pic.rgb.astype(int) - face.astype(int)).mean()
    assert diff < 6, f"not upright (mean abs diff {diff:.1f})"
    assert len(P.detect_faces(pic.rgb)) == 1
    # Without applying the tag the face would lie on its side: no frontal detection there.
    if orientation in (6, 8):
        assert not P.detect_faces(raw)
