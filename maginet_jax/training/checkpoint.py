"""orbax checkpoints of the train state together with the grain iterator state.

Layout: `<workdir>/checkpoints/<step>/{state,loader}`. Restoring both puts a resumed run on exactly the
batches and random numbers an uninterrupted run would have seen.
"""

from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp

from maginet_jax.errors import UserError


class Checkpointer:
    """Saves and restores (train state, data iterator) pairs under `directory`."""

    def __init__(self, directory: str, *, max_to_keep: int, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._mngr = ocp.CheckpointManager(os.path.abspath(directory), options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step (an interrupted save is not listed), or None."""
        return self._mngr.latest_step()

    def save(self, step: int, state, data_iter) -> None:
        """Starts saving (asynchronously when enabled; arrays are copied to host before this returns)."""
        self._mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      loader=grain.checkpoint.CheckpointSave(data_iter)))

    def restore(self, step: int, like_state, data_iter):
        """Restores the state with `like_state`'s shapes, dtypes and shardings; moves `data_iter` in place."""
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like_state)
        try:
            restored = self._mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), loader=grain.checkpoint.CheckpointRestore(data_iter)))
        except (ValueError, KeyError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"checkpoint {step} in {self._mngr.directory} does not fit this config "
                            f"(another model or data setup?): {first}") from e
        return restored.state

    def reached_preemption(self, step: int) -> bool:
        """True on every host once the cluster announced a preemption (TPU/GKE); False without the service."""
        return self._mngr.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.close()
