"""grain DataLoaders: source → decode → augment → batch, sharded by JAX process, with worker processes."""

from __future__ import annotations

import grain

from data_pipeline import transforms


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
    augment = transforms.RandomCropFlip(crop_size, flip) if train else transforms.CenterCrop(crop_size)
    ops = [transforms.Decode(), augment, grain.transforms.Batch(batch_size, drop_remainder=train)]
    return grain.DataLoader(data_source=source, sampler=sampler, operations=ops, worker_count=worker_count,
                            worker_buffer_size=worker_buffer_size,
                            read_options=grain.ReadOptions(num_threads=read_threads,
                                                           prefetch_buffer_size=read_buffer_size))
