"""From a record source to batches: the source `data.source` names, decode, crop and flip, grain DataLoader.

A source is random access over records: dicts of integer-coded HWC arrays, as PNGs decode to ("image", the
requested passes and "mask"). Pixels stay integer-coded until `Decode`, so worker processes ship a quarter of
the bytes. Geometric augmentation is drawn once per record and applied identically to the input, every pass
and the mask; a horizontal flip mirrors the UV layout, so the x component of tangent-space normals changes
sign.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from typing import Sequence

import grain
import jax
import numpy as np
from etils import epath

from data_pipeline import ffhq_tfds
from data_pipeline.ffhq_uv_intrinsics import FFHQUVIntrinsicsSource
from data_pipeline.synthetic import SyntheticSource

SOURCES = ("synthetic", "ffhq_uv_intrinsics", "ffhq_uv_intrinsics_raw")


def _start_worker() -> None:
    """Run in each grain worker process as it unpickles its `Decode` (grain's DataLoader takes no worker
    initialiser). Not at import: a worker spawned for `python -m maginet_jax.train` imports this module while
    multiprocessing bootstraps, before `parent_process()` is known, and so was left as it was.

    - Ctrl-C and SIGTERM go to the whole process group (a terminal; a batch system's warning signal). The main
      process decides when to stop (it saves a checkpoint first); a worker killed by them made the main
      process's next batch a traceback instead. grain stops its workers itself (an event, then SIGKILL).
    - The kernel kills the worker when the main process dies. grain's workers are daemons, which end with a main
      process that exits, not with one that is killed (SIGKILL, out of memory): such orphans were found alive
      half an hour later.
    """
    parent = multiprocessing.parent_process()
    if parent is None:  # a copy unpickled in the main process
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent.pid:  # the parent died before the request was made
            os._exit(1)


def _decode_in_worker() -> "Decode":
    _start_worker()
    return Decode()


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
    if not epath.Path(d.root).is_dir():
        raise ValueError(f"data.root {d.root!r} does not exist or is not a directory")
    if d.source == "ffhq_uv_intrinsics_raw":
        return FFHQUVIntrinsicsSource(d.root, split=split, resolution=d.resolution, passes=passes,
                                      input_file=d.input_file, uv_maps_dir=d.uv_maps_dir,
                                      test_fraction=d.test_fraction, pass_files=d.pass_files)
    builder = ffhq_tfds.prepare(d.root, tfds_dir=d.tfds_dir, resolution=d.resolution, input_file=d.input_file,
                                pass_files=d.pass_files, uv_maps_dir=d.uv_maps_dir,
                                test_fraction=d.test_fraction, lenient=d.lenient)
    return ffhq_tfds.PreparedSource(builder.as_data_source(split=split), passes, str(builder.data_dir))


class GlobalBatchSampler:
    """Training order that does not depend on the number of processes: one shuffled, endlessly repeated order
    of all records (grain's IndexSampler with one shard), cut into global batches of `batch_size ×
    num_processes`; process p reads the p-th contiguous `batch_size` slice of each. The global batch, its order
    and each record's augmentation (seeded by its global position) are those of a one-process run, so a
    2-process run trains on exactly the batches a 1-process run does (with worker_count=0; grain workers
    batch round-robin, which depends on their count)."""

    def __init__(self, num_records: int, *, batch_size: int, seed: int, process_index: int, process_count: int):
        self._order = grain.samplers.IndexSampler(
            num_records=num_records, shard_options=grain.sharding.ShardOptions(0, 1, drop_remainder=True),
            shuffle=True, num_epochs=None, seed=seed)
        self._batch, self._p, self._n = batch_size, process_index, process_count
        # The DataLoader asks for element i of shard p as sampler[i * shard_count + p].
        self._shard_options = grain.sharding.ShardOptions(process_index, process_count, drop_remainder=True)

    def __len__(self) -> int:
        return sys.maxsize

    def __repr__(self) -> str:  # grain compares it with the checkpointed iterator's
        return (f"GlobalBatchSampler({self._order!r}, batch_size={self._batch}, process_index={self._p}, "
                f"process_count={self._n})")

    def __getitem__(self, index: int):
        local = index // self._n
        batch, within = divmod(local, self._batch)
        return self._order[(batch * self._n + self._p) * self._batch + within]


def make_loader(source, *, batch_size: int, crop_size: int, train: bool, seed: int, worker_count: int = 0,
                flip: bool = True, worker_buffer_size: int = 2,
                shard_options: grain.sharding.ShardOptions | None = None, read_threads: int = 16,
                read_buffer_size: int = 32) -> grain.DataLoader:
    """A DataLoader over this process's share of `source`, yielding dicts of (batch_size, ...) arrays.

    `batch_size` is per process. Training shuffles with `seed`, repeats forever, augments and drops the last
    partial batch; each process reads its slice of every global batch (`GlobalBatchSampler`). Evaluation
    reads one ordered pass, centre-cropped, each process (or `shard_options` shard) a contiguous block of
    records, and keeps the last partial batch (the caller pads it; shards differ by at most one record).
    `read_threads` / `read_buffer_size` bound how far each worker reads ahead (records): grain's 500 suits small
    records, but at 1024² with every pass it held gigabytes per worker; and a CPU-bound source such as the synthetic
    generator competes with the train step for cores.
    """
    if train:
        p, n = ((shard_options.shard_index, shard_options.shard_count) if shard_options
                else (jax.process_index(), jax.process_count()))
        sampler = GlobalBatchSampler(len(source), batch_size=batch_size, seed=seed, process_index=p,
                                     process_count=n)
        augment = RandomCropFlip(crop_size, flip)
    else:
        sampler = grain.samplers.IndexSampler(
            num_records=len(source), shuffle=False, num_epochs=1,
            shard_options=shard_options or grain.sharding.ShardByJaxProcess(drop_remainder=False))
        augment = CenterCrop(crop_size)
    ops = [Decode(), augment, grain.transforms.Batch(batch_size, drop_remainder=train)]
    return grain.DataLoader(data_source=source, sampler=sampler, operations=ops, worker_count=worker_count,
                            worker_buffer_size=worker_buffer_size,
                            read_options=grain.ReadOptions(num_threads=read_threads,
                                                           prefetch_buffer_size=read_buffer_size))


def training_loader(config, batch_size: int) -> grain.DataLoader:
    """The training split as `config.data` configures it (source, workers, read-ahead, flips), shuffled with
    `config.seed`, `batch_size` records a batch from this process: what the training loop reads."""
    d = config.data
    source = make_source(d, "train", d.num_train_examples, ("albedo", *config.get("passes", ())))
    return make_loader(source, batch_size=batch_size, crop_size=d.crop_size, train=True, seed=config.seed,
                       worker_count=d.worker_count, flip=d.flip, worker_buffer_size=d.worker_buffer_size,
                       read_threads=d.read_threads, read_buffer_size=d.read_buffer_size)


def _spatial_keys(record: dict) -> list[str]:
    return [k for k, v in record.items() if np.ndim(v) == 3]


class Decode(grain.transforms.Map):
    """Integer-coded pixels → float32 in [0, 1] (by the dtype's range, so 8- and 16-bit PNGs both work). Every
    loader's first operation: unpickled in a worker, it sets the worker up (`_start_worker`)."""

    def __reduce__(self):
        return _decode_in_worker, ()

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
