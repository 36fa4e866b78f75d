"""The training process among others: joining a cluster (`initialize_distributed`) and stopping together on a
signal or a preemption notice (`StopSignals`)."""

from __future__ import annotations

import os
import signal
import threading

import jax
from absl import logging

from maginet_jax.errors import UserError, first_line


def initialize_distributed(auto: bool, coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
    """jax.distributed.initialize(): detected (`auto`), from the three explicit settings, or not at all (one
    process). Must run before anything touches a jax backend, config validation included; UserError if the
    settings are incomplete or the processes cannot connect."""
    explicit = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
                "--process_id": process_id}
    given = [k for k, v in explicit.items() if v is not None]
    if given and len(given) < 3:
        raise UserError(f"{' and '.join(given)} also need{'s' if len(given) == 1 else ''} "
                        f"{' and '.join(k for k in explicit if k not in given)}")
    if not given and not auto:
        return
    if given and not 0 <= process_id < num_processes:
        raise UserError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except (ValueError, RuntimeError) as e:  # e.g. no cluster detected, coordinator unreachable
        raise UserError(f"jax.distributed.initialize failed: {first_line(e)}") from None
    logging.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count())


class StopSignals:
    """SIGTERM (how a TPU VM is preempted) and SIGINT (Ctrl-C) ask the loop to checkpoint and stop after the
    current step; a second Ctrl-C stops at once. With several processes, all must stop at the same step: JAX's
    preemption service (started by jax.distributed) catches SIGTERM and makes `reached_preemption` agree, so
    only SIGINT is caught here, and passed on to it as SIGTERM; `received` stays None there (a process that
    stopped by itself would leave the others waiting for it at their next collective). Handlers live in the main
    thread only."""

    def __init__(self, multiprocess: bool):
        self.received, self._multiprocess, self._previous, self._forwarded = None, multiprocess, {}, False

    def _handle(self, signum, frame) -> None:
        if self._multiprocess:
            if self._forwarded:
                signal.default_int_handler(signum, frame)
            self._forwarded = True
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if self.received is not None and signum == signal.SIGINT:
            signal.default_int_handler(signum, frame)
        self.received = signal.Signals(signum).name

    def install(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT,) if self._multiprocess else (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
