r"""Trains a MAGINet stage.

    python -m maginet_jax.train --config=configs/albedo.py:demo --workdir=runs/albedo_demo \
        [--config.key=value ...]

Running again with the same --workdir resumes from its latest checkpoint. Bad input (an unknown config key,
an image size the network cannot take, an unwritable workdir, a missing data root) stops the run before
anything is written, with one error line and exit status 1.
"""

from __future__ import annotations

import logging as pylogging
import os
import re
import sys
import tempfile

from absl import app, flags, logging
from ml_collections import config_flags

from maginet_jax.errors import UserError, check_choices

CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file, e.g. configs/albedo.py:demo.",
                                          lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-host: TPU pods, SLURM/GPU clusters); "
    "the cluster is auto-detected, or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.")
_LIBRARY_LOGS = flags.DEFINE_bool("library_logs", False, "Show INFO logs of orbax, grain, jax etc. too.")
flags.mark_flags_as_required(["config", "workdir"])


def validate_config(config) -> None:
    """Checks what would otherwise fail deep inside a run (or silently do the wrong thing)."""
    from data_pipeline import sources
    from maginet_jax import stages
    from maginet_jax.training import optim

    d = config.data
    if d.crop_size > d.resolution:
        raise UserError(f"data.crop_size {d.crop_size} exceeds data.resolution {d.resolution}")
    check_choices({"optim.schedule": (config.optim.schedule, optim.SCHEDULES),
                   "data.source": (d.source, sources.SOURCES),
                   "model.dtype": (config.model.dtype, ("float32", "bfloat16", "float16"))})
    for key in ("num_train_steps", "batch_size", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
                "eval.batch_size", "eval.num_examples", "data.num_train_examples", "max_checkpoints_to_keep"):
        value = config
        for part in key.split("."):
            value = value[part]
        if value < 1:
            raise UserError(f"{key} must be >= 1, got {value}")
    if d.source == "synthetic" and d.root:
        raise UserError(f"data.root is set but data.source='synthetic' reads no files; "
                        f"did you mean --config.data.source=ffhq_uv_intrinsics?")
    for split, n in (("train", d.num_train_examples), ("test", config.eval.num_examples)):
        try:
            sources.make_source(d, split, n, ("albedo",))
        except ValueError as e:
            raise UserError(str(e)) from None
    optim.make_schedule(config.optim, config.num_train_steps)
    stages.validate(config)
    if config.losses.get("vgg", 0) > 0 and config.perceptual.vgg_backbone == "vgg19":  # a bad file fails now
        from maginet_jax.perceptual import weights as pretrained
        pretrained.torchvision_vgg19_weights(config.perceptual.vgg19_weights)


def validate_batch_sizes(config, num_processes: int, data_shards: int) -> None:
    """Global batches must split evenly over processes and over the mesh's data axis."""
    for key, size in (("batch_size", config.batch_size), ("eval.batch_size", config.eval.batch_size)):
        if size % num_processes or size % data_shards:
            raise UserError(f"{key}={size} must be divisible by the {num_processes} processes and by the "
                            f"{data_shards} shards of the mesh's data axis")


def prepare_workdir(workdir: str) -> None:
    """Creates `workdir` and proves it writable, or raises UserError; touches nothing already there."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test"):
            pass
    except OSError as e:
        raise UserError(f"cannot write to workdir {workdir!r}: {e.strerror or e}") from None


def run(config, workdir: str, distributed: bool = False) -> None:
    """Validates everything cheap first, then trains; raises UserError for bad input."""
    validate_config(config)
    import jax  # after validation: a typo should not wait for the backend to start

    if distributed:
        jax.distributed.initialize()

    from maginet_jax.training import loop, sharding
    validate_batch_sizes(config, jax.process_count(), sharding.data_size(sharding.make_mesh(config.mesh)))
    prepare_workdir(workdir)
    loop.train_and_evaluate(config, workdir)


class _OwnInfoOnly(pylogging.Filter):
    """Keeps our INFO lines and everyone's warnings: orbax alone logs ~40 INFO lines per checkpoint."""

    def filter(self, record) -> bool:
        path = record.pathname.replace(os.sep, "/")
        return record.levelno >= pylogging.WARNING or "/maginet_jax/" in path or "/data_pipeline/" in path


def _one_line(e: BaseException) -> str:
    """The gist of a flag/config error: the innermost 'Error: message' of an embedded traceback, unquoted."""
    text = str(e).replace("\\n", "\n").replace("\\'", "'")
    inner = re.findall(r"^\w*(?:Error|Exception): (.+)$", text, flags=re.M)
    text = inner[-1] if inner and "Traceback" in text else text
    text = " ".join(text.split())
    errno = re.search(r"\[Errno \d+\] .*$", text)  # a config file that cannot be read
    text = f"cannot load the config file: {errno.group(0)}" if errno else text
    while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # KeyError reprs nest quotes
        text = text[1:-1]
    if re.fullmatch(r"[\w.]+", text):  # a bare KeyError from a config override
        return f"unknown config key '{text}'"
    return re.sub(r"^'?([\w.]+)'? Did you mean", r"unknown config key '\1'; did you mean", text)


def parse_flags(argv: list[str], prog: str = "maginet_jax.train") -> list[str]:
    """absl flag parsing, with a bad flag or config override reported as one line (not a traceback)."""
    try:
        argv = flags.FLAGS(argv)
        hasattr(CONFIG.value, "keys")  # config_flags defers some load errors (a missing file) to first use
    except Exception as e:  # config_flags raises KeyError/AttributeError/ValueError/IOError
        sys.exit(f"{prog}: error: {_one_line(e)}")
    return argv


def main(argv) -> None:
    if not _LIBRARY_LOGS.value:
        # ABSLHandler passes records straight to its python_handler, so the filter goes there.
        logging.get_absl_handler().python_handler.addFilter(_OwnInfoOnly())
    if len(argv) > 1:
        sys.exit(f"maginet_jax.train: error: unexpected arguments {argv[1:]}")
    try:
        run(CONFIG.value, WORKDIR.value, _DISTRIBUTED.value)
    except UserError as e:
        sys.exit(f"maginet_jax.train: error: {e}")


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    app.run(main, flags_parser=parse_flags)
