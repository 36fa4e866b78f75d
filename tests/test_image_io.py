"""Reading image files (`image_io.decode`, `read_image`) and the FFHQ-UV-Intrinsics readers built on them: bit
depths, transparency, orientation, and the formats Pillow reads at other scales."""

import io
import struct
import zlib

import numpy as np
import png
import pytest
from PIL import Image

from data_pipeline import ffhq_tfds, ffhq_uv_intrinsics
from maginet_jax import image_io
from maginet_jax.errors import UserError


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _pypng(rows, **kwargs) -> bytes:
    out = io.BytesIO()
    png.Writer(len(rows[0]) // (1 if kwargs["greyscale"] else 3), len(rows), **kwargs).write(out, rows)
    return out.getvalue()


def _pillow(im: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **kwargs)
    return out.getvalue()


def test_16_bit_colour_keeps_every_bit(tmp_path):
    """Pillow reads 16-bit RGB PNGs at 8 bits: the normals of a prepared dataset lost their low byte."""
    x = np.random.default_rng(0).uniform(0.0, 1.0, (16, 16, 3))
    codes = np.round(x * 65535).astype(np.uint16)
    path = _write(tmp_path / "normal.png", image_io.png16_bytes(x))
    assert np.array_equal(image_io.decode(open(path, "rb").read()), codes)
    assert np.array_equal(ffhq_uv_intrinsics.read_png(path, 3, 16), codes)
    assert np.array_equal(ffhq_tfds.read_checked(path, "000000", 3, 16, np.uint16), codes)
    assert np.abs(image_io.read_image(path) - codes / 65535.0).max() < 1e-7


def test_significant_bits_are_not_a_scale(tmp_path):
    """pypng's asDirect rescales to an sBIT chunk's depth (12 bits here): divided by 65535, a white came out 0.06."""
    path = _write(tmp_path / "sbit.png", _pypng([[4095, 2048, 0] * 2] * 2, greyscale=False, bitdepth=12))
    image = image_io.read_image(path)
    assert np.allclose(image[0, 0], [1.0, 2048 / 4095, 0.0], atol=1e-4)


def test_16_bit_grey_with_a_transparent_colour(tmp_path):
    """tRNS on a 16-bit grey PNG: that grey is background (black); the image is still 3 channels."""
    path = _write(tmp_path / "trns.png", _pypng([[0, 30000], [65535, 0]], greyscale=True, bitdepth=16,
                                               transparent=65535))
    image = image_io.read_image(path)
    assert image.shape == (2, 2, 3)
    assert np.allclose(image[..., 0], [[0.0, 30000 / 65535], [0.0, 0.0]], atol=1e-7)


def test_alpha_is_background(tmp_path):
    """An RGBA texture's transparent pixels are outside it: black, so `texture_mask` leaves them out; partial
    alpha scales the colour (premultiplied, composited on black)."""
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = [[255, 0], [51, 255]]
    path = _write(tmp_path / "rgba.png", _pillow(Image.fromarray(rgba), "PNG"))
    image = image_io.read_image(path)
    assert np.allclose(image[..., 0] * 255, [[200, 0], [40, 200]], atol=0.01)
    assert image_io.texture_mask(image)[..., 0].tolist() == [[1, 0], [1, 1]]
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([250, 250, 250, 10, 200, 30])
    path = _write(tmp_path / "palette.png", _pillow(palette, "PNG", transparency=0))
    assert (image_io.read_image(path)[0] * 255).round().tolist() == [[0, 0, 0], [10, 200, 30]]


def test_exif_orientation_turns_a_photo_upright(tmp_path):
    """A phone stores a portrait photo on its side with Orientation=6 (turn 90° clockwise to view)."""
    stored = np.random.default_rng(1).integers(0, 256, (20, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _write(tmp_path / "photo.png", _pillow(Image.fromarray(stored), "PNG", exif=exif))
    assert np.array_equal(image_io.decode(open(path, "rb").read()), np.rot90(stored, k=-1))


@pytest.mark.parametrize("maxval,value", [(65535, 25500), (1023, 511)])
def test_pgm_keeps_its_scale(tmp_path, maxval, value):
    """Pillow reads 16-bit PGMs as 32-bit codes at 16-bit scale; dividing by the image's own maximum made every
    such image full white."""
    data = f"P5 4 4 {maxval}\n".encode() + np.full(16, value, ">u2").tobytes()
    image = image_io.read_image(_write(tmp_path / "grey.pgm", data))
    assert np.allclose(image, value / maxval, atol=1e-4)


def test_float_tiff_spans_zero_to_one(tmp_path):
    path = _write(tmp_path / "f.tif", _pillow(Image.fromarray(np.full((4, 4), 0.25, np.float32)), "TIFF"))
    assert np.allclose(image_io.read_image(path), 0.25, atol=1e-4)


def test_float_tiff_with_nan_is_refused(tmp_path):
    """NaN pixels were cast to some code without a word (to 0 here)."""
    pixels = np.full((4, 4), 0.25, np.float32)
    pixels[1, 2] = np.nan
    path = _write(tmp_path / "nan.tif", _pillow(Image.fromarray(pixels), "TIFF"))
    with pytest.raises(UserError, match="its float pixels include NaN or infinity"):
        image_io.read_image(path)


def test_colour_to_one_channel_is_pillows_luma(tmp_path):
    """A 1-channel pass stored in colour reads as ITU-R 601 luma, as Pillow's convert("L") (to a code)."""
    rgb = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path = _write(tmp_path / "specular.png", _pillow(Image.fromarray(rgb), "PNG"))
    ours = ffhq_uv_intrinsics.read_png(path, 1, 8)[..., 0].astype(int)
    assert np.abs(ours - np.asarray(Image.fromarray(rgb).convert("L"), int)).max() <= 1


def _png_header(width: int, height: int, depth: int, idat: bytes) -> bytes:
    """A colour PNG of the size and depth its header claims, whatever its pixel data holds."""
    header = struct.pack(">IIBBBBB", width, height, depth, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + image_io._chunk(b"IHDR", header) + image_io._chunk(b"IDAT", idat) + image_io._chunk(
        b"IEND", b"")


@pytest.mark.parametrize("data,reason", [
    (b"", ""), (b"not an image", ""), (image_io.png16_bytes(np.zeros((4, 4, 3)))[:60], ""),
    # were tracebacks (zlib.error, PIL.Image.DecompressionBombError, numpy's "need at least one array")
    (_png_header(4, 4, 16, b"garbage-not-zlib"), "its compressed pixel data is corrupt"),
    (_png_header(40000, 40000, 16, zlib.compress(b"\0")), "it claims 40000x40000 pixels, more than"),
    (_png_header(40000, 40000, 8, zlib.compress(b"\0")), "exceeds limit"),
    (_png_header(0, 0, 16, zlib.compress(b"")), "it is 0x0 pixels"),
], ids=["empty", "text", "truncated-png16", "corrupt-idat-png16", "bomb-png16", "bomb-png8", "empty-png16"])
def test_unreadable_is_one_error(tmp_path, data, reason):
    path = _write(tmp_path / "bad.png", data)
    with pytest.raises(UserError, match=r"^cannot read '.*bad\.png': ") as e:
        image_io.read_image(path)
    assert "\n" not in str(e.value) and reason in str(e.value)
    with pytest.raises(ffhq_tfds.BadSubjectData, match="corrupt or truncated"):
        ffhq_tfds.read_checked(path, "000000", 3, 4)
