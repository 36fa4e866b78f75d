"""Random-access sources for grain: each record is a dict of integer-coded HWC arrays, as PNGs decode to.

Records hold the lit input ("image"), the requested intrinsic passes and the face "mask". Pixel data stays
integer-coded until `transforms.Decode` so that worker processes ship a quarter of the bytes.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from data_pipeline import shading, synthetic

SPLITS = ("train", "test")


def quantize(x: np.ndarray, dtype=np.uint8) -> np.ndarray:
    """Float in [0,1] → rounded integer code of `dtype` (uint8 like 8-bit PNGs, uint16 for normals)."""
    top = np.iinfo(dtype).max
    return np.round(np.clip(x, 0.0, 1.0) * top).astype(dtype)


class SyntheticSource:
    """The embedded synthetic intrinsic-face dataset, generated on access, deterministic in (seed, split, index).

    `passes` selects which of `shading.PASS_NAMES` each record carries besides "image" and "mask"; normals are
    coded in 16 bits (a 1-bit error in 8-bit normals is already a 0.5° tilt).
    """

    def __init__(self, *, num_records: int, resolution: int, split: str = "train", seed: int = 0,
                 passes: Sequence[str] = ("albedo",)):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        unknown = sorted(set(passes) - set(shading.PASS_NAMES))
        if unknown:
            raise ValueError(f"unknown passes {unknown}; expected names from {shading.PASS_NAMES}")
        if num_records < 1:
            raise ValueError(f"num_records must be positive, got {num_records}")
        self._n, self._res, self._split, self._seed = int(num_records), int(resolution), split, int(seed)
        self._keys = ("image", "mask", *passes)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self._n:
            raise IndexError(f"record {index} out of range for {self._n} records")
        sample = synthetic.generate(self._seed, int(index), self._res, self._split)
        return {k: quantize(sample[k], np.uint16 if k == "normal" else np.uint8) for k in self._keys}

    def __repr__(self) -> str:
        return (f"SyntheticSource(split={self._split!r}, num_records={self._n}, resolution={self._res}, "
                f"seed={self._seed}, keys={self._keys})")


SOURCES = ("synthetic", "ffhq_uv_intrinsics", "ffhq_uv_intrinsics_raw")


class PreparedSource:
    """One split of the prepared (TFDS array_record) FFHQ-UV-Intrinsics, records like `SyntheticSource`'s."""

    def __init__(self, data_source, passes: Sequence[str]):
        self._ds, self._keys = data_source, ("image", "mask", *passes)

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        record = self._ds[index]
        return {k: record[k] for k in self._keys}

    def __repr__(self) -> str:
        return f"PreparedSource({self._ds!r}, keys={self._keys})"


def make_source(data_config, split: str, num_records: int, passes: Sequence[str]):
    """The record source that `data_config.source` names, for `split`.

    `num_records` sizes the synthetic dataset; a dataset on disk has the size it has. `ffhq_uv_intrinsics`
    reads the prepared TFDS dataset, preparing it from `data.root` first if needed (see
    `data_pipeline.build_ffhq_uv_intrinsics`); `ffhq_uv_intrinsics_raw` reads the PNGs directly. Raises
    ValueError for an unknown source, or a missing or malformed `data_config.root`.
    """
    if data_config.source == "synthetic":
        return SyntheticSource(num_records=num_records, resolution=data_config.resolution, split=split,
                               seed=data_config.seed, passes=passes)
    if data_config.source not in SOURCES:
        raise ValueError(f"unknown data.source {data_config.source!r}; expected one of {SOURCES}")
    if not data_config.root:
        raise ValueError(f"data.source={data_config.source} needs data.root: the directory holding Data/<ID>/")
    if not os.path.isdir(data_config.root):
        raise ValueError(f"data.root {data_config.root!r} does not exist or is not a directory")
    if data_config.source == "ffhq_uv_intrinsics_raw":
        from data_pipeline.ffhq_uv_intrinsics import FFHQUVIntrinsicsSource
        return FFHQUVIntrinsicsSource(data_config.root, split=split, resolution=data_config.resolution,
                                      passes=passes, input_file=data_config.input_file,
                                      uv_maps_dir=data_config.uv_maps_dir, test_fraction=data_config.test_fraction)
    from data_pipeline.ffhq_tfds import prepare
    builder = prepare(data_config.root, tfds_dir=data_config.tfds_dir, resolution=data_config.resolution,
                      input_file=data_config.input_file, pass_files=data_config.pass_files,
                      uv_maps_dir=data_config.uv_maps_dir, test_fraction=data_config.test_fraction,
                      lenient=data_config.lenient)
    return PreparedSource(builder.as_data_source(split=split), passes)
