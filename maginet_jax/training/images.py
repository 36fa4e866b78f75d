"""Image grids for TensorBoard and the PNG samples under `<workdir>/samples/`."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0,1] floats → uint8; 1-channel maps become grey RGB so grids can mix passes."""
    x = np.asarray(x, np.float32)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def grid(columns: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Rows = examples, columns = the given (N, H, W, C) batches (e.g. input | prediction | target)."""
    cols = [to_uint8(c) for c in columns]
    n, h, w, _ = cols[0].shape
    out = np.full((n * (h + pad) + pad, len(cols) * (w + pad) + pad, 3), 255, np.uint8)
    for j, c in enumerate(cols):
        for i in range(n):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = c[i]
    return out


def contact_sheet(tiles: list[tuple[str, np.ndarray]], *, columns: int = 4, tile: int = 256,
                  label_height: int = 16) -> np.ndarray:
    """Labelled tiles, `columns` per row: each (label, HWC [0,1] image) is resized to tile×tile under its label."""
    rows = -(-len(tiles) // columns)
    cell_h, cell_w = tile + label_height, tile
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (label, image) in enumerate(tiles):
        x, y = (i % columns) * cell_w, (i // columns) * cell_h
        sheet.paste(Image.fromarray(to_uint8(image)).resize((tile, tile), Image.BILINEAR), (x, y + label_height))
        draw.text((x + 3, y + 2), label, fill=(0, 0, 0))
    return np.asarray(sheet)
