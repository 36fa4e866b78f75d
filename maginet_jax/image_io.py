"""Image files: reading any format Pillow knows (16-bit PNGs with pypng) as codes or floats, the one decoder for
prediction, relighting and the FFHQ-UV-Intrinsics readers; writing 8-/16-bit PNGs; which of an image's pixels are
its texture (not the black background).

Pillow cannot write 16-bit RGB, which normals need (an 8-bit code step is already a 0.45° tilt), so those
PNGs are written here directly: non-interlaced, filter type 0, zlib-compressed, as the PNG spec allows.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib

import numpy as np
import png
from etils import epath
from PIL import Image, ImageOps, UnidentifiedImageError

from maginet_jax.errors import UserError


BLACK = 2.0 / 255.0  # tolerates the rounding noise of a black background


def texture_mask(image: np.ndarray) -> np.ndarray:
    """(H, W, 1) float 0/1: an image's non-black pixels (a UV texture's valid region, a reference photo's face)."""
    return (image.max(axis=-1, keepdims=True) > BLACK).astype(np.float32)


_PNG = b"\x89PNG\r\n\x1a\n"
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_GREY_MODES = ("1", "L", "LA", "La")


def _png16_codes(data: bytes) -> tuple[np.ndarray, bool]:
    """A 16-bit PNG's pixels as (H, W, planes) uint16 codes and whether the last plane is alpha. pypng's `read`,
    not `asDirect`: the latter rescales to an sBIT chunk's depth, and adds alpha for tRNS, which is applied here."""
    width, height, rows, info = png.Reader(bytes=data).read()
    codes = np.vstack([np.asarray(row, np.uint16) for row in rows]).reshape(height, width, info["planes"])
    transparent = info.get("transparent")
    if transparent is not None:  # tRNS: the one colour that is transparent
        keep = np.any(codes != np.asarray(transparent, np.uint16).reshape(-1), axis=-1, keepdims=True)
        codes = np.concatenate([codes, np.where(keep, 65535, 0).astype(np.uint16)], axis=-1)
    return codes, info["alpha"] or transparent is not None


def _check_size(width: int, height: int) -> None:
    """ValueError for an image of no pixels, or of more than Pillow's decompression-bomb limit."""
    if width * height == 0:
        raise ValueError(f"it is {width}x{height} pixels")
    if width * height > 2 * Image.MAX_IMAGE_PIXELS:
        raise ValueError(f"it claims {width}x{height} pixels, more than {2 * Image.MAX_IMAGE_PIXELS} (Pillow's "
                         "limit against decompression bombs)")


def _pillow_codes(data: bytes) -> tuple[np.ndarray, bool]:
    """Any other image as (H, W, C) uint8 or uint16 codes, turned upright by its EXIF orientation (phone photos),
    and whether the last plane is alpha. Pillow reads 16-bit PGMs as 32-bit ("I") codes at 16-bit scale."""
    with warnings.catch_warnings():  # over half the bomb limit Pillow warns on stderr; the callers bound sizes
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            im = ImageOps.exif_transpose(opened)
    if im.mode.startswith("I;16") or im.mode == "I":
        return np.clip(np.asarray(im, np.int64), 0, 65535).astype(np.uint16)[..., None], False
    if im.mode == "F":  # float images (TIFF) are taken to span [0, 1]
        values = np.asarray(im, np.float64)
        if not np.isfinite(values).all():  # a cast would turn NaN into some code without a word
            raise ValueError("its float pixels include NaN or infinity")
        return np.round(np.clip(values, 0.0, 1.0) * 65535.0).astype(np.uint16)[..., None], False
    alpha = im.mode in _ALPHA_MODES or "transparency" in im.info
    grey = im.mode in _GREY_MODES
    codes = np.asarray(im.convert(("LA" if alpha else "L") if grey else ("RGBA" if alpha else "RGB")))
    return (codes[..., None] if codes.ndim == 2 else codes), alpha


def decode(data: bytes) -> np.ndarray:
    """An image file's pixels as (H, W, 1 | 3) codes: uint16 (full 16-bit scale) from 16-bit and float files,
    uint8 otherwise. Transparent pixels are black: alpha is multiplied in, so they count as background (as a UV
    texture's black). Raises ValueError or OSError (Pillow's) for what is not a readable image."""
    try:
        if data[:8] == _PNG and data[12:16] == b"IHDR" and len(data) > 24 and data[24] == 16:
            _check_size(*struct.unpack(">II", data[16:24]))  # pypng would allocate whatever the header claims
            codes, alpha = _png16_codes(data)
        else:
            codes, alpha = _pillow_codes(data)
    except png.Error as e:
        raise ValueError(str(e) or type(e).__name__) from None
    except zlib.error as e:  # pypng's inflate of a corrupt IDAT
        raise ValueError(f"its compressed pixel data is corrupt ({e})") from None
    except Image.DecompressionBombError as e:  # not an OSError: Pillow's message names the size and the limit
        raise ValueError(str(e)) from None
    if not alpha:
        return codes
    top = float(np.iinfo(codes.dtype).max)
    colour, a = codes[..., :-1].astype(np.float64), codes[..., -1:].astype(np.float64)
    return np.round(colour * a / top).astype(codes.dtype)


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] (see `decode`; grey is repeated). UserError if it cannot be read."""
    try:
        codes = decode(epath.Path(path).read_bytes())
    except (OSError, ValueError, SyntaxError) as e:
        reason = "not an image Pillow can read" if isinstance(e, UnidentifiedImageError) else str(e) or type(e).__name__
        raise UserError(f"cannot read {path!r}: {reason}") from None
    image = codes.astype(np.float32) / float(np.iinfo(codes.dtype).max)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png16_bytes(x: np.ndarray) -> bytes:
    """A 16-bit grey (H, W, 1) or RGB (H, W, 3) PNG of `x` in [0, 1]."""
    h, w, c = x.shape
    color_type = {1: 0, 3: 2}[c]
    codes = np.round(np.clip(x, 0.0, 1.0) * 65535.0).astype(">u2")
    rows = np.concatenate([np.zeros((h, 1), np.uint8), codes.view(np.uint8).reshape(h, w * c * 2)], axis=1)
    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + _chunk(b"IEND", b""))


def file_identity(path: str) -> tuple:
    """What names one file, for the CLIs' checks that no output is an input: its device and inode when it exists
    (a hard link is the same file, and writing truncates through it), else its resolved path (a symbolic link or
    another spelling of a path to be written counts)."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    return ("inode", st.st_dev, st.st_ino)


def check_not_directories(paths) -> None:
    """UserError for the first file to write whose name a directory holds: checked before any is written, where
    writing it would fail after the ones before it."""
    for path in paths:
        if epath.Path(path).is_dir():
            raise UserError(f"cannot write {str(path)!r}: it is a directory")


def write_png(path, x: np.ndarray, bits: int = 8) -> None:
    """Writes `x` (H, W, 1|3), uint8 codes or floats in [0, 1], as an 8- or 16-bit grey/RGB PNG to `path` (a
    str or epath.Path, local or not, e.g. gs://), creating its directory."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if bits == 16:
        path.write_bytes(png16_bytes(x))
        return
    codes = x if x.dtype == np.uint8 else np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    data = io.BytesIO()
    Image.fromarray(codes[..., 0] if codes.shape[-1] == 1 else codes).save(data, format="PNG")
    path.write_bytes(data.getvalue())
