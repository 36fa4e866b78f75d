"""Per-record transforms for the grain pipeline: decode and geometry augmentation.

Geometric augmentation is drawn once per record and applied identically to the input, every pass and the
mask. A horizontal flip mirrors the UV layout, so the x component of tangent-space normals changes sign.
"""

from __future__ import annotations

import grain
import numpy as np


def _spatial_keys(record: dict) -> list[str]:
    return [k for k, v in record.items() if np.ndim(v) == 3]


class Decode(grain.transforms.Map):
    """Integer-coded pixels → float32 in [0, 1] (by the dtype's range, so 8- and 16-bit PNGs both work)."""

    def map(self, record: dict) -> dict:
        out = {}
        for k, v in record.items():
            v = np.asarray(v)
            out[k] = (v.astype(np.float32) / np.iinfo(v.dtype).max) if v.dtype.kind in "ui" else v
        return out


def flip_horizontal(record: dict) -> dict:
    """Mirrors every spatial array left-right; the encoded normal's x becomes 1 - x inside the mask."""
    out = dict(record)
    for k in _spatial_keys(record):
        out[k] = record[k][:, ::-1]
    if "normal" in out:
        n = out["normal"].copy()
        mask = out["mask"][..., 0] if "mask" in out else 1.0
        n[..., 0] = (1.0 - n[..., 0]) * mask
        out["normal"] = n
    return out


def crop(record: dict, top: int, left: int, size: int) -> dict:
    """The same size×size window from every spatial array."""
    out = dict(record)
    for k in _spatial_keys(record):
        out[k] = np.ascontiguousarray(record[k][top:top + size, left:left + size])
    return out


def _check_crop(record: dict, size: int) -> tuple[int, int]:
    h, w = record["image"].shape[:2]
    if size > min(h, w):
        raise ValueError(f"crop size {size} exceeds the record size {h}x{w}")
    return h, w


class RandomCropFlip(grain.transforms.RandomMap):
    """Random size×size crop and (with probability 1/2 when enabled) a horizontal flip, shared by all keys."""

    def __init__(self, size: int, flip: bool = True):
        self.size, self.flip = int(size), bool(flip)

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        h, w = _check_crop(record, self.size)
        top, left = int(rng.integers(0, h - self.size + 1)), int(rng.integers(0, w - self.size + 1))
        out = crop(record, top, left, self.size)
        if self.flip and rng.random() < 0.5:
            out = flip_horizontal(out)
        return out


class CenterCrop(grain.transforms.Map):
    """Deterministic centre size×size crop (evaluation)."""

    def __init__(self, size: int):
        self.size = int(size)

    def map(self, record: dict) -> dict:
        h, w = _check_crop(record, self.size)
        return crop(record, (h - self.size) // 2, (w - self.size) // 2, self.size)
