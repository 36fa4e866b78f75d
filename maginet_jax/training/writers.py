"""Metric writers: TensorBoard event files, `metrics.jsonl` and the console.

clu's metric writers import TensorFlow, so they are used only when it is installed; otherwise a tensorboardX
writer with the same methods (`write_scalars`, `write_images`, `flush`, `close`) stands in. Every file goes
through `etils.epath`, so a workdir on gs:// (or any filesystem epath serves) holds them all.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from typing import Mapping

import numpy as np
from etils import epath

from maginet_jax.training.runs import run_path


class _EpathEventFile:
    """A TensorBoard event file on a non-local filesystem (tensorboardX writes local files itself): the records
    are kept and the whole file rewritten at each flush, as object stores such as GCS cannot append."""

    def __init__(self, path: str):
        self._path, self._buffer = epath.Path(path), io.BytesIO()

    def write(self, data: bytes) -> None:
        self._buffer.write(data)

    def flush(self) -> None:
        self._path.write_bytes(self._buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _EpathEventFiles:
    """tensorboardX's writer factory interface, for one URL scheme."""

    def open(self, path: str) -> _EpathEventFile:
        return _EpathEventFile(path)

    def directory_check(self, path: str) -> None:
        epath.Path(path).mkdir(parents=True, exist_ok=True)


class TensorboardXWriter:
    """clu MetricWriter look-alike on tensorboardX (no TensorFlow needed).

    `purge_step`: the first step this run writes. The new event file starts with TensorBoard's purge marker (a
    SessionLog START at that step), so TensorBoard drops what earlier files hold from that step on: the steps a
    crashed run logged after its last checkpoint, which the resumed run logs again (metrics.jsonl drops them too).
    """

    def __init__(self, logdir: str, purge_step: int | None = None):
        # Imported here, and with torch hidden: tensorboardX imports torch when it is installed (~2-3 s on a
        # CPU, every training start) only to accept torch tensors, and this writer passes numpy.
        hide_torch = "torch" not in sys.modules
        if hide_torch:
            sys.modules["torch"] = None  # `import torch` raises ImportError; tensorboardX then does without it
        try:
            import tensorboardX
            from tensorboardX import record_writer
        finally:
            if hide_torch:
                del sys.modules["torch"]
        if "://" in logdir:  # replaces tensorboardX's own gs:// writer, which needs google-cloud-storage
            record_writer.register_writer_factory(logdir.split("://")[0], _EpathEventFiles())
        self._w = tensorboardX.SummaryWriter(logdir, purge_step=purge_step)

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

    Opening at `resume_step` drops rows past it (all of them at 0: a run with no checkpoint starts over and
    writes its step-0 row again), so a run that crashed after its last checkpoint and resumed leaves one row
    per step, as an uninterrupted run would. The file is rewritten whole (through a temporary
    file, so a crash never leaves half of it): object stores cannot append, and it stays small.
    """

    def __init__(self, path: epath.Path, resume_step: int = 0):
        self._path = path
        self._rows = []
        if resume_step > 0 and path.exists():
            self._rows = [line for line in path.read_text().splitlines(keepends=True)
                          if line.strip() and json.loads(line)["step"] <= resume_step]
        self._save()

    def _save(self) -> None:
        tmp = self._path.parent / f".{self._path.name}.tmp"
        tmp.write_text("".join(self._rows))
        tmp.replace(self._path)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self._rows.append(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self._save()

    def write_images(self, step, images) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


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
    """TensorBoard (clu's writer if TensorFlow is installed) + metrics.jsonl on process 0; nothing elsewhere. Steps
    past `resume_step` that an earlier run logged are dropped from both (clu's writer cannot mark them for
    TensorBoard: with TensorFlow installed, its curves keep them)."""
    if not is_main:
        return MultiWriter([])
    logdir = str(run_path(workdir))
    if importlib.util.find_spec("tensorflow") is not None:
        from clu import metric_writers  # imports TensorFlow: only when it is installed
        tb = metric_writers.SummaryWriter(logdir)
    else:
        # A resumed run's first row is step resume_step + 1; a run that starts over writes its step 0 again.
        tb = TensorboardXWriter(logdir, purge_step=resume_step + 1 if resume_step else 0)
    return MultiWriter([tb, JsonlWriter(run_path(workdir) / "metrics.jsonl", resume_step)])


def read_metrics(workdir: str) -> list[dict]:
    """The rows of `<workdir>/metrics.jsonl`."""
    text = (run_path(workdir) / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]
