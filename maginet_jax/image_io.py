"""Image files for prediction: reading any format Pillow knows (16-bit PNGs with pypng), writing 8-/16-bit PNGs;
which of an image's pixels are its texture (not the black background).

Pillow cannot write 16-bit RGB, which normals need (an 8-bit code step is already a 0.45° tilt), so those
PNGs are written here directly: non-interlaced, filter type 0, zlib-compressed, as the PNG spec allows.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import png
from etils import epath
from PIL import Image, UnidentifiedImageError

from maginet_jax.errors import UserError


BLACK = 2.0 / 255.0  # tolerates the rounding noise of a black background


def texture_mask(image: np.ndarray) -> np.ndarray:
    """(H, W, 1) float 0/1: an image's non-black pixels (a UV texture's valid region, a reference photo's face)."""
    return (image.max(axis=-1, keepdims=True) > BLACK).astype(np.float32)


def _read_png16(path: str) -> np.ndarray | None:
    """A 16-bit grey or RGB PNG as (H, W, C) uint16 codes (Pillow would truncate RGB ones to 8 bits), else None."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR" or head[24] != 16 or head[25] not in (0, 2):
        return None
    width, height, rows, info = png.Reader(filename=path).asDirect()
    return np.vstack([np.asarray(row, np.uint16) for row in rows]).reshape(height, width, info["planes"])


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1]; grey, palette and 16-bit files are converted. UserError otherwise."""
    try:
        codes = _read_png16(path)
        if codes is not None:
            codes = codes.astype(np.float32) / 65535.0
            return np.repeat(codes, 3, axis=-1) if codes.shape[-1] == 1 else codes[..., :3]
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                grey = np.asarray(im, np.float32) / (65535.0 if im.mode != "I" else max(float(np.max(im)), 1.0))
                return np.repeat(grey[..., None], 3, axis=-1)
            return np.asarray(im.convert("RGB"), np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, png.Error) as e:
        reason = "not an image Pillow can read" if isinstance(e, UnidentifiedImageError) else str(e) or type(e).__name__
        raise UserError(f"cannot read {path!r}: {reason}") from None


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
