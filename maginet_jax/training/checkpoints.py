"""The training loop's orbax checkpoints: the train state and the data iterator's position at a step, which of
them are kept, and a resume's restore."""

from __future__ import annotations

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint._src.metadata import array_metadata_store  # (as orbax's default handler)
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from maginet_jax.errors import UserError, root_cause_line
from maginet_jax.training import runs
from maginet_jax.training.state import TrainState


# Orbax writes a replicated array from all of its replicas in parallel (its default unless JAX_PLATFORMS names a
# GPU), each slicing its part out with an eager op. For the many small arrays of these networks (biases, norm
# scales, their Adam moments) that costs more than it saves: a :smoke AlbedoNet's checkpoint on 8 CPU devices took
# 1.5-2.0 s to save instead of 0.8-0.95 (7.5 s instead of 0.9 for a process's first save, which compiles each
# slice). Arrays whose slice per replica would be under 1 MiB are written by one replica; the large kernels at
# paper scale, in parallel.
def checkpoint_manager(directory, *, max_to_keep: int | None = None, keep_every: int = 0, keep_best: int = 0,
                       async_saves: bool = False) -> ocp.CheckpointManager:
    """The loop's checkpoints in `directory`: items "state" (the train state, written with the replica-parallel
    threshold above) and "loader" (the data iterator's position). Kept: the latest `max_to_keep` (None: all),
    and beside them those whose step is a multiple of `keep_every` and the `keep_best` saved with the highest
    `PSNR_METRIC` (see `save_checkpoint`)."""
    array_handler = ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=1 << 20,
                                                   array_metadata_store=array_metadata_store.Store())
    registry = ocp.type_handlers.create_type_handler_registry((jax.Array, array_handler))
    policies = [preservation.LatestN(max_to_keep)]
    if keep_every:
        policies.append(preservation.EveryNSteps(keep_every))
    psnr = None
    if keep_best:
        psnr = lambda metrics: metrics[PSNR_METRIC]  # noqa: E731
        policies.append(preservation.BestN(get_metric_fn=psnr, n=keep_best, keep_checkpoints_without_metrics=False))
    # best_fn as well: without it orbax neither writes a checkpoint's metrics nor reads them back, and a resumed
    # run would rank only its own checkpoints.
    return ocp.CheckpointManager(directory, item_handlers={
        "state": ocp.PyTreeCheckpointHandler(type_handler_registry=registry),
        "loader": grain.checkpoint.CheckpointHandler()}, options=ocp.CheckpointManagerOptions(
            preservation_policy=preservation.AnyPreservationPolicy(policies), best_fn=psnr, best_mode="max",
            create=True, enable_async_checkpointing=async_saves))


PSNR_METRIC = "eval/psnr"  # every stage reports it (the albedo's, or the mean over the passes)


def save_checkpoint(checkpoints: ocp.CheckpointManager, step: int, state: TrainState, data_iter,
                    scalars: dict | None = None) -> None:
    """Saves `state` and `data_iter`'s position as checkpoint `step` (in the background with async saves), with
    the eval PSNR among `scalars` (the step's log row) when the step was evaluated, which ranks it for
    `keep_best_checkpoints`."""
    psnr = (scalars or {}).get(PSNR_METRIC)
    checkpoints.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                                   loader=grain.checkpoint.CheckpointSave(data_iter)),
                     metrics=None if psnr is None else {PSNR_METRIC: float(psnr)})


def restore_checkpoint(checkpoints: ocp.CheckpointManager, step: int, like: TrainState, data_iter) -> TrainState:
    """The state saved at `step`, shaped, typed and sharded like `like`; moves `data_iter` to where it was."""
    describe = (f"checkpoint {step} in {checkpoints.directory} does not fit this config (another model or data "
                f"setup?)")
    runs.check_saved_shapes(checkpoints.directory / str(step) / "state", like, describe)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
    try:
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
        restored = checkpoints.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(abstract, restore_args=restore_args),
            loader=grain.checkpoint.CheckpointRestore(data_iter)))
    except Exception as e:  # the shapes fit (above): a file cut short, missing or damaged (orbax: bare Exception)
        raise UserError(f"cannot read checkpoint {step} in {checkpoints.directory} (a file cut short, missing or "
                        f"damaged?): {root_cause_line(e)}") from None
    return restored.state
