"""Direct PNG reader for a user's raw FFHQ-UV-Intrinsics copy (never shipped; CC BY-NC-ND 4.0).

Layout: `<root>/Data/<ID>/{ambient_occlusion, diffuse, normal, specular, translucency, light_normalized}.png`;
optionally FFHQ-UV's lit textures `<uv_maps_dir>/<ID>.png` (same IDs). Which file is the network input is
`input_file`: "uv_map" (FFHQ-UV's texture, the default) or one of the pass files, e.g. "diffuse".
The face mask is texture validity: texels where the albedo is not black.
The split is by subject ID hash, so it is stable when subjects are added.
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np
from PIL import Image

# Our pass name → file stem in FFHQ-UV-Intrinsics.
PASS_FILES = {"albedo": "light_normalized", "ambient_occlusion": "ambient_occlusion", "normal": "normal",
              "specular": "specular", "translucency": "translucency", "raw_diffuse": "diffuse"}
CHANNELS = {"albedo": 3, "ambient_occlusion": 1, "normal": 3, "specular": 1, "translucency": 1,
            "raw_diffuse": 3, "image": 3}


def is_test_subject(subject_id: str, test_fraction: float) -> bool:
    """Deterministic hash split: a subject's side never changes, whatever else is in the dataset."""
    h = int(hashlib.sha256(subject_id.encode()).hexdigest()[:8], 16)
    return h / 2**32 < test_fraction


def decode(im: Image.Image, channels: int, size: int) -> np.ndarray:
    """An opened, loaded image as an HWC uint8/uint16 array with `channels` channels at size×size
    (box-filtered if needed)."""
    if im.mode in ("I;16", "I;16B", "I"):  # 16-bit grey
        arr = np.asarray(im, np.uint16)[..., None]
    else:
        arr = np.asarray(im.convert("RGB" if channels == 3 else "L"))
        arr = arr[..., None] if arr.ndim == 2 else arr
    if arr.shape[2] != channels:
        arr = np.repeat(arr[..., :1], channels, axis=2) if arr.shape[2] == 1 else arr[..., :channels]
    if arr.shape[:2] != (size, size):
        chans = [np.asarray(Image.fromarray(arr[..., c]).resize((size, size), Image.BOX)) for c in range(channels)]
        arr = np.stack(chans, axis=-1).astype(arr.dtype)
    return arr


def read_png(path: str, channels: int, size: int) -> np.ndarray:
    """`decode` of the file at `path`."""
    with Image.open(path) as im:
        im.load()
        return decode(im, channels, size)


class FFHQUVIntrinsicsSource:
    """Random access to one split of a raw FFHQ-UV-Intrinsics copy, records like `SyntheticSource`'s."""

    def __init__(self, root: str, *, split: str, resolution: int, passes: Sequence[str] = ("albedo",),
                 input_file: str = "uv_map", uv_maps_dir: str = "", test_fraction: float = 0.05):
        data_dir = os.path.join(root, "Data")
        if not os.path.isdir(data_dir):
            raise ValueError(f"{root!r} is not an FFHQ-UV-Intrinsics copy: it has no Data/ directory")
        if input_file != "uv_map" and input_file not in PASS_FILES.values():
            raise ValueError(f"data.input_file {input_file!r} is not 'uv_map' or one of {sorted(PASS_FILES.values())}")
        self._uv_dir = uv_maps_dir or os.path.join(root, "uv-maps")
        if input_file == "uv_map" and not os.path.isdir(self._uv_dir):
            raise ValueError(f"FFHQ-UV textures not found at {self._uv_dir!r}: set data.uv_maps_dir, or "
                             f"data.input_file=diffuse to learn from the raw diffuse pass")
        ids = sorted(d for d in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, d)))
        self._ids = [i for i in ids if is_test_subject(i, test_fraction) == (split == "test")]
        if not self._ids:
            raise ValueError(f"no {split} subjects under {data_dir!r}")
        self._data_dir, self._res, self._passes, self._input = data_dir, int(resolution), tuple(passes), input_file
        self._split = split

    def __len__(self) -> int:
        return len(self._ids)

    def _path(self, subject: str, stem: str) -> str:
        if stem == "uv_map":
            return os.path.join(self._uv_dir, f"{subject}.png")
        return os.path.join(self._data_dir, subject, f"{stem}.png")

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        subject = self._ids[index]
        rec = {"image": read_png(self._path(subject, self._input), 3, self._res)}
        for p in set(self._passes) | {"albedo"}:
            rec[p] = read_png(self._path(subject, PASS_FILES[p]), CHANNELS[p], self._res)
        valid = np.any(rec["albedo"] > 0, axis=-1, keepdims=True)
        rec["mask"] = np.where(valid, 255, 0).astype(np.uint8)
        if "albedo" not in self._passes:
            del rec["albedo"]
        return rec

    def __repr__(self) -> str:
        return (f"FFHQUVIntrinsicsSource(data_dir={self._data_dir!r}, split={self._split!r}, n={len(self)}, "
                f"resolution={self._res}, input={self._input!r}, passes={self._passes})")
