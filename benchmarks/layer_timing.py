"""What the one-layer benchmarks (conv_kernels.py, conv_forms.py, norm_kernels.py) share: a layer's forward and
backward pass as one jitted call, how far two forms of a layer may differ, interleaved timing, and the argparse type
of their counts (the other scripts' too), and the check of a report's path before anything is measured."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from maginet_jax.errors import UserError


def forward_backward(f: Callable, compiler_options: dict | None = None) -> Callable:
    """jit((*args, dy) ↦ (f(*args), *the gradients of ⟨f(*args), dy⟩ with respect to args)): a train step's work
    for the layer `f`, compiled with XLA's `compiler_options`."""
    def run(*args):
        *primals, dy = args
        y, vjp = jax.vjp(f, *primals)
        return y, *vjp(dy)
    return jax.jit(run, compiler_options=compiler_options)


def relative_l2(a, b) -> float:
    """‖a − b‖ / ‖b‖, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def tolerance(dtype) -> float:
    """The relative L2 two forms of one layer may differ by: about a bfloat16 rounding, or float32's."""
    return 1e-2 if jnp.dtype(dtype) == jnp.bfloat16 else 1e-5


def median_ms(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """{name: median milliseconds} of `rounds` rounds of one call of each in turn, so the machine's noise hits all
    alike. Each call must return only once its work is done (`jax.block_until_ready`)."""
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            t = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t)
    return {name: 1e3 * float(np.median(v)) for name, v in times.items()}


def positive_ints(text: str) -> list[int]:
    """argparse type: comma-separated positive integers, else argparse's one-line error."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: want positive integers, comma-separated")
    return values


def positive_int(text: str) -> int:
    """argparse type: one positive integer."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: want a positive integer")
    return int(text)


def check_output_file(flag: str, path: str) -> None:
    """UserError unless a report can be written to `path` (the value of `flag`): a file, new or to be replaced, in
    a directory that exists and takes new files. Checked before the measuring, so a run's figures are not lost at
    its end; proved by making a temporary file there (os.access says yes to root for anything, /proc included)."""
    if not path.strip():
        raise UserError(f"{flag} is empty: name the report's file")
    if os.path.isdir(path):
        raise UserError(f"{flag}={path} is a directory: name the report's file")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UserError(f"{flag}={path}: {directory} is not an existing directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_test_", dir=directory)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UserError(f"{flag}={path}: cannot write in {directory} ({e.strerror})") from None
