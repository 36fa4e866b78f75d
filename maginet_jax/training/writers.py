"""Metric writers: TensorBoard event files, `metrics.jsonl` and the console.

clu's metric writers import TensorFlow, so they are used only when it is installed; otherwise a tensorboardX
writer with the same methods (`write_scalars`, `write_images`, `flush`, `close`) stands in.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Mapping

import numpy as np


class TensorboardXWriter:
    """clu MetricWriter look-alike on tensorboardX (no TensorFlow needed)."""

    def __init__(self, logdir: str):
        # Imported here: tensorboardX imports torch when it is installed (~3 s), a cost every CLI start (a
        # one-line config error included) would otherwise pay before anything is written.
        import tensorboardX
        self._w = tensorboardX.SummaryWriter(logdir)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for k, v in scalars.items():
            self._w.add_scalar(k, float(v), step)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """`images` maps names to (N, H, W, C) uint8 or [0,1] float arrays."""
        for k, v in images.items():
            self._w.add_images(k, np.asarray(v), step, dataformats="NHWC")

    def flush(self) -> None:
        self._w.flush()

    def close(self) -> None:
        self._w.close()


class JsonlWriter:
    """One JSON object per logged step: {"step": N, "<group>/<name>": value, ...}.

    Opening at `resume_step` drops rows past it, so a run that crashed after its last checkpoint and resumed
    leaves one row per step, as an uninterrupted run would.
    """

    def __init__(self, path: str, resume_step: int = 0):
        self._path = path
        if os.path.exists(path):
            with open(path) as f:
                rows = [line for line in f if line.strip() and json.loads(line)["step"] <= resume_step]
            with open(path, "w") as f:
                f.writelines(rows)
        self._f = open(path, "a")

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self._f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self._f.flush()

    def write_images(self, step, images) -> None:
        pass

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class MultiWriter:
    """Fans every call out to several writers."""

    def __init__(self, writers):
        self._writers = list(writers)

    def __getattr__(self, name):
        def call(*args, **kwargs):
            for w in self._writers:
                getattr(w, name)(*args, **kwargs)
        return call


def create_writer(workdir: str, *, resume_step: int, is_main: bool) -> MultiWriter:
    """TensorBoard (clu's writer if TensorFlow is installed) + metrics.jsonl on process 0; nothing elsewhere."""
    if not is_main:
        return MultiWriter([])
    if importlib.util.find_spec("tensorflow") is not None:
        from clu import metric_writers  # imports TensorFlow: only when it is installed
        tb = metric_writers.SummaryWriter(workdir)
    else:
        tb = TensorboardXWriter(workdir)
    return MultiWriter([tb, JsonlWriter(os.path.join(workdir, "metrics.jsonl"), resume_step)])


def read_metrics(workdir: str) -> list[dict]:
    """The rows of `<workdir>/metrics.jsonl`."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
