"""A profile of a window of a training run: `config.profile_first_step` and the `profile_num_steps - 1` steps after
it, recorded by `jax.profiler` with everything the loop does in them (reading the batches, logging, evaluating,
checkpointing), which `benchmarks/step_profile.py`'s profile of the train step alone leaves out.

Each process writes `<workdir>/profile/plugins/profile/<time>/<host>.xplane.pb` (TensorBoard's profile plugin and
xprof read it) and `<host>.trace.json.gz` (Chrome's trace format, which ui.perfetto.dev opens: nothing to install).
"""

from __future__ import annotations

import jax
from absl import logging

from maginet_jax.training import runs


class StepWindow:
    """Starts the profiler before the window's first step reads its batch and stops it once the devices have
    finished its last step (or the step the run stops at). A run resumed past the window's start records none."""

    def __init__(self, config, workdir: str):
        self.first = config.profile_first_step
        self.last = self.first + config.profile_num_steps - 1
        self.directory = runs.run_path(workdir) / "profile"
        self.active = False

    def before(self, step: int) -> None:
        """Called before step `step` reads its batch."""
        if self.first and step == self.first:
            jax.profiler.start_trace(str(self.directory))
            self.active = True

    def after(self, step: int, state, *, stopping: bool) -> None:
        """Called when step `step` is dispatched, logged and saved; `stopping` when the run ends with it."""
        if self.active and (step >= self.last or stopping):
            jax.block_until_ready(state)  # the steps run asynchronously: wait for the window's last one
            self.close()
            logging.info("profile of steps %d-%d written under %s", self.first, step, self.directory)

    def close(self) -> None:
        """Stops the profiler if it runs (a run that fails inside the window keeps what was recorded)."""
        if self.active:
            self.active = False
            jax.profiler.stop_trace()
