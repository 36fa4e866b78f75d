"""From a record source to batches: the source `data.source` names, decode, crop and flip, grain DataLoader.

A source is random access over records: dicts of integer-coded HWC arrays, as PNGs decode to ("image", the
requested passes and "mask"). Pixels stay integer-coded until `Decode`, so worker processes ship a quarter of
the bytes. Geometric augmentation is drawn once per record and applied identically to the input, every pass
and the mask; a horizontal flip mirrors the UV layout, so the x component of tangent-space normals changes
sign.
"""

from __future__ import annotations

import os
from typing import Sequence

import grain
import numpy as np

from data_pipeline import ffhq_tfds
from data_pipeline.ffhq_uv_intrinsics import FFHQUVIntrinsicsSource
from data_pipeline.synthetic import SyntheticSource

SOURCES = ("synthetic", "ffhq_uv_intrinsics", "ffhq_uv_intrinsics_raw")


def make_source(data_config, split: str, num_records: int, passes: Sequence[str]):
    """The record source that `data_config.source` names, for `split`.

    `num_records` sizes the synthetic dataset; a dataset on disk has the size it has. `ffhq_uv_intrinsics`
    reads the prepared TFDS dataset, preparing it from `data.root` first if needed (see
    `data_pipeline.build_ffhq_uv_intrinsics`); `ffhq_uv_intrinsics_raw` reads the PNGs directly. Raises
    ValueError for an unknown source, or a missing or malformed `data_config.root`.
    """
    d = data_config
    if d.source == "synthetic":
        return SyntheticSource(num_records=num_records, resolution=d.resolution, split=split, seed=d.seed,
                               passes=passes)
    if d.source not in SOURCES:
        raise ValueError(f"unknown data.source {d.source!r}; expected one of {SOURCES}")
    if not d.root:
        raise ValueError(f"data.source={d.source} needs data.root: the directory holding Data/<ID>/")
    if not os.path.isdir(d.root):
        raise ValueError(f"data.root {d.root!r} does not exist or is not a directory")
    if d.source == "ffhq_uv_intrinsics_raw":
        return FFHQUVIntrinsicsSource(d.root, split=split, resolution=d.resolution, passes=passes,
                                      input_file=d.input_file, uv_maps_dir=d.uv_maps_dir,
                                      test_fraction=d.test_fraction)
    builder = ffhq_tfds.prepare(d.root, tfds_dir=d.tfds_dir, resolution=d.resolution, input_file=d.input_file,
                                pass_files=d.pass_files, uv_maps_dir=d.uv_maps_dir,
                                test_fraction=d.test_fraction, lenient=d.lenient)
    return ffhq_tfds.PreparedSource(builder.as_data_source(split=split), passes)


def make_loader(source, *, batch_size: int, crop_size: int, train: bool, seed: int, worker_count: int = 0,
                flip: bool = True, worker_buffer_size: int = 2,
                shard_options: grain.sharding.ShardOptions | None = None, read_threads: int = 16,
                read_buffer_size: int = 500) -> grain.DataLoader:
    """A DataLoader over this process's share of `source`, yielding dicts of (batch_size, ...) arrays.

    `batch_size` is per process. Training shuffles with `seed`, repeats forever, augments and drops the last
    partial batch; evaluation reads one ordered pass, centre-cropped, and keeps the last partial batch (the
    caller pads it). Every process (or `shard_options` shard) sees a disjoint, contiguous block of records.
    `read_threads` / `read_buffer_size` bound how far each worker reads ahead: grain's defaults suit file I/O,
    but a CPU-bound source such as the synthetic generator then competes with the train step for cores.
    """
    sampler = grain.samplers.IndexSampler(
        num_records=len(source),
        shard_options=shard_options or grain.sharding.ShardByJaxProcess(drop_remainder=True),
        shuffle=train,
        num_epochs=None if train else 1,
        seed=seed,
    )
    augment = RandomCropFlip(crop_size, flip) if train else CenterCrop(crop_size)
    ops = [Decode(), augment, grain.transforms.Batch(batch_size, drop_remainder=train)]
    return grain.DataLoader(data_source=source, sampler=sampler, operations=ops, worker_count=worker_count,
                            worker_buffer_size=worker_buffer_size,
                            read_options=grain.ReadOptions(num_threads=read_threads,
                                                           prefetch_buffer_size=read_buffer_size))


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
