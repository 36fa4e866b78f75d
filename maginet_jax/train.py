r"""Trains a MAGINet stage.

    python -m maginet_jax.train --config=configs/albedo.py:demo --workdir=runs/albedo_demo \
        [--config.key=value ...]

Running again with the same --workdir resumes from its latest checkpoint. Bad input (an unknown config key,
an image size the network cannot take, an unwritable workdir or one holding something else than a run, a missing
data root, a checkpoint of another model or one cut short, an `init.from_workdir` that is not a run of this stage
and architecture) stops the run before anything is written, with one error line and exit status 1.
A training batch that fails to load mid-run (a file gone bad) stops it with one error line too, after saving the
steps trained since the last checkpoint (in a one-process run; a multi-process one resumes from its last).

Read top to bottom: the stages (`STAGES`), the checks of a config, the loop (`train_and_evaluate`), the CLI. The
checkpoints (saved, kept, restored) are `training/checkpoints.py`; a profiled window of steps,
`training/profiling.py`; fine-tuning starts in the stage's `init`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from typing import Callable

import jax
import numpy as np
from absl import app, flags, logging
from clu import parameter_overview
from flax import nnx
from ml_collections import config_flags

from data_pipeline import loader
from maginet_jax import cli, evaluator, image_io
from maginet_jax.errors import UserError, check_choices
from maginet_jax.perceptual import weights as pretrained
from maginet_jax.stages import joint, passes, supervised
from maginet_jax.training import checks, compiler, dry_runs, images, processes, profiling, runs, sharding
from maginet_jax.training.checkpoints import checkpoint_manager, restore_checkpoint, save_checkpoint
from maginet_jax.training.state import TrainState, abstract_state
from maginet_jax.training.writers import create_writer

CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file, e.g. configs/albedo.py:demo.",
                                          lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-process run on a cluster JAX detects (Cloud TPU pods, SLURM, Open MPI): "
    "jax.distributed.initialize() before anything else. Elsewhere give --coordinator_address, "
    "--num_processes and --process_id instead.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for processes started by hand (every process gets "
                                   "the same address and --num_processes, and its own --process_id).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 to num_processes - 1.")
_LIBRARY_LOGS = flags.DEFINE_bool("library_logs", False, "Show INFO logs of orbax, grain, jax etc. too.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Compile the train step for the config and mesh, report its "
                             "per-device memory and FLOPs (printed and in <workdir>/dry_run.json), and exit "
                             "without training, reading data or writing a checkpoint.")
_DRY_RUN_DEVICES = flags.DEFINE_integer("dry_run_devices", None, "With --dry_run: compile for this many virtual "
                                        "CPU devices (size a pod's mesh on a laptop).")


@dataclasses.dataclass(frozen=True)
class Stage:
    """A training stage, as the loop and the evaluator call it: plain functions of the config.

    `graphdefs` are the trained networks' graph definitions by name; `frozen_nets` the networks the stage uses
    but does not train (perceptual networks, earlier stages), replicated on the devices once.
    """

    validate: Callable  # (config) -> None; UserError on the first problem
    networks: Callable  # (config) -> {name: build(nnx.Rngs) -> nnx.Module}, the trained networks
    optimizers: Callable  # (config) -> {name: optax.GradientTransformation}, one per trained network
    init: Callable  # (config, mesh) -> (graphdefs, TrainState), laid out over the mesh by config.sharding
    frozen_nets: Callable  # (config, mesh) -> pytree of (graphdef, state) pairs
    train_step: Callable  # (state, batch, frozen_nets, *, config, graphdefs) -> (state, {name: scalar})
    predict: Callable  # (params, frozen_nets, batch, *, config, graphdefs) -> ({pass: image}, {pass: baseline})
    report: Callable  # (config, evaluator means) -> ({name: eval scalar}, log line)
    samples: Callable  # (config) -> {grid tag: columns of the evaluator's images}


_SUPERVISED = dict(networks=supervised.networks, optimizers=supervised.optimizers, init=supervised.init,
                   frozen_nets=supervised.frozen_nets,
                   train_step=supervised.train_step, predict=supervised.predict, report=supervised.report,
                   samples=supervised.samples)
STAGES: dict[str, Stage] = {
    "albedo": Stage(validate=supervised.validate_albedo, **_SUPERVISED),
    "refine": Stage(validate=supervised.validate_refine, **_SUPERVISED),
    "passes": Stage(validate=passes.validate, networks=passes.networks, optimizers=passes.optimizers,
                    init=passes.init,
                    frozen_nets=passes.frozen_nets, train_step=passes.train_step, predict=passes.predict,
                    report=passes.report, samples=passes.samples),
    "joint": Stage(validate=joint.validate, networks=joint.networks, optimizers=joint.optimizers, init=joint.init,
                   frozen_nets=joint.frozen_nets, train_step=joint.train_step, predict=joint.predict,
                   report=passes.report, samples=passes.samples),
}


def validate(config, *, read_data: bool = True) -> None:
    """Checks what would otherwise fail deep inside a run (or silently do the wrong thing): the sections every
    stage shares, then the stage's own `validate`. UserError on the first problem. `read_data=False` (a dry
    run) leaves the data source unopened."""
    check_choices({"stage": (config.stage, tuple(STAGES))})
    checks.check_shared(config, read_data=read_data)
    STAGES[config.stage].validate(config)
    if config.losses.get("vgg", 0) > 0 and config.perceptual.vgg_backbone == "vgg19":  # a bad file fails now
        pretrained.torchvision_vgg19_weights(config.perceptual.vgg19_weights)


def jit_train_step(config, graphdefs, mesh, state_sharding) -> Callable:
    """The stage's train step jitted with explicit shardings, (state, global batch, frozen_nets) → (state,
    scalars): state as `state_sharding` (donated), batch split over the data axis, the rest replicated."""
    return jax.jit(functools.partial(STAGES[config.stage].train_step, config=config, graphdefs=graphdefs),
                   in_shardings=(state_sharding, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
                   out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0,
                   compiler_options=compiler.options(config))


def dry_run(config, workdir: str) -> dict:
    """Compiles the train step for `config` on its mesh from shapes alone (no trained parameters allocated, no
    data read; the networks it does not train are loaded as in training, for their shapes) and writes XLA's
    per-device memory and FLOPs to `<workdir>/dry_run.json`; returns them."""
    mesh = sharding.make_mesh(config.mesh)
    stage = STAGES[config.stage]
    graphdefs, state = abstract_state(stage.networks(config), stage.optimizers(config), mesh, config.sharding)
    frozen_nets = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)),
                               stage.frozen_nets(config, mesh))
    batch = dry_runs.abstract_batch(config, sharding.batch_sharding(mesh))
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    train_step = jit_train_step(config, graphdefs, mesh, state_sharding)
    with jax.set_mesh(mesh):  # activations are constrained against it (sharding.constrain_activation)
        lowered = train_step.lower(state, batch, frozen_nets)
        compiled = lowered.compile()
        counted = None
        if config.grad_accum_steps > 1:  # XLA counts the microbatch loop's body once; the whole batch's step, once
            whole = config.copy_and_resolve_references()
            whole.grad_accum_steps = 1
            counted = jit_train_step(whole, graphdefs, mesh, state_sharding).lower(state, batch, frozen_nets)
    report = dry_runs.report(lowered, compiled, mesh, counted)
    (runs.run_path(workdir) / "dry_run.json").write_text(json.dumps(report, indent=2))
    logging.info("dry run, %s stage:\n%s", config.stage, dry_runs.describe(report))
    return report


def evaluate_and_show(step: int, predict, params, frozen_nets, config, mesh, writer, workdir: str) -> dict:
    """Scores the held-out split, logs it and writes the sample grids (process 0); returns the eval/* scalars."""
    stage = STAGES[config.stage]
    means, shown, _ = evaluator.evaluate(predict, params, frozen_nets, config, mesh,
                                         num_shown=config.num_sample_images)
    scalars, message = stage.report(config, means)
    logging.info("eval step %d: %s", step, message)
    if jax.process_index() == 0 and config.num_sample_images:
        groups = stage.samples(config)
        writer.write_images(step, {f"eval/{tag}": images.grid([shown[c] for c in columns])[None]
                                   for tag, columns in groups.items()})
        every_column = list(dict.fromkeys(c for columns in groups.values() for c in columns))
        image_io.write_png(runs.run_path(workdir) / "samples" / f"step_{step:07d}.png",
                        images.grid([shown[c] for c in every_column]))
    return {f"eval/{k}": v for k, v in scalars.items()}


def check_finite(rows: list[dict], first_step: int, last_saved: int) -> None:
    """UserError naming the first step whose scalars (loss terms, gradient norm) are not finite: training on
    would only spread NaNs, and saving them would bury the last good checkpoint."""
    for step, row in enumerate(rows, first_step):
        bad = {k: float(v) for k, v in row.items() if not np.isfinite(v)}
        if bad:
            raise UserError(f"non-finite training scalars at step {step}: "
                            f"{', '.join(f'{k}={v}' for k, v in sorted(bad.items()))}; stopped without saving "
                            f"({f'the newest checkpoint is step {last_saved}' if last_saved else 'no checkpoint yet'})")


def train_means(rows: list[dict]) -> dict[str, float]:
    """The log row of the steps `rows` holds: each train/ scalar's mean."""
    return {f"train/{k}": float(np.mean([r[k] for r in rows])) for k in rows[0]}


def train_and_evaluate(config, workdir: str) -> TrainState:
    """Trains the stage `config.stage` names, resuming from `<workdir>/checkpoints` when it holds a checkpoint.

    Returns the final train state.
    """
    is_main = jax.process_index() == 0
    mesh = sharding.make_mesh(config.mesh)
    stage = STAGES[config.stage]

    # A resumed run restores its whole state, so it starts from shapes alone: initialising it would compile and
    # run a program whose every output the restore overwrites. (Read before the manager below exists: creating it
    # creates checkpoints/, which an `init` that fails, e.g. on a bad import, should not leave behind.)
    start = runs.latest_step(runs.run_path(workdir) / "checkpoints") or 0
    runs.pin_upstream(config, workdir, resumed=bool(start))
    graphdefs, state = (abstract_state(stage.networks(config), stage.optimizers(config), mesh, config.sharding)
                        if start else stage.init(config, mesh))
    # The state is donated to every step; the networks that are not trained are placed on the devices once
    # and passed as an argument (closing over them would bake their weights into the compiled program).
    frozen_nets = jax.device_put(stage.frozen_nets(config, mesh), sharding.replicated(mesh))
    train_step = jit_train_step(config, graphdefs, mesh, jax.tree.map(lambda x: x.sharding, state))
    predict = functools.partial(stage.predict, config=config, graphdefs=graphdefs)

    train_iter = iter(loader.training_loader(config, config.batch_size // jax.process_count()))

    # Checkpoints hold the state and the data iterator's position, so a resumed run sees exactly the batches
    # and random numbers an uninterrupted run would.
    checkpoints = checkpoint_manager(runs.run_path(workdir) / "checkpoints", max_to_keep=config.max_checkpoints_to_keep,
                                     keep_every=config.keep_checkpoints_every_steps,
                                     keep_best=config.keep_best_checkpoints, async_saves=config.async_checkpointing)
    writer, stop_signals = None, processes.StopSignals(jax.process_count() > 1).install()
    profile = profiling.StepWindow(config, workdir)
    # Under the mesh: the networks constrain their activations against it (sharding.constrain_activation).
    with jax.set_mesh(mesh):
        try:  # closing the manager on every exit: its async threads would otherwise spill tracebacks at exit
            if start:
                state = restore_checkpoint(checkpoints, start, state, train_iter)
            logging.info("%s stage, mesh %s over %d devices (%d processes), %s", config.stage, dict(mesh.shape),
                         mesh.size, jax.process_count(), f"resumed from step {start}" if start else "from step 0")
            if is_main and not start:
                for name, params in state.params.items():
                    logging.info("%s parameters:\n%s", name,
                                 parameter_overview.get_parameter_overview(nnx.to_pure_dict(params)))
            # config.json describes the checkpoints: a resumed run keeps the one it resumed from until its own
            # first checkpoint (a resume with a config that fails in its first steps leaves the run as it was).
            if is_main and not start:
                runs.write_config(config, workdir)
            writer = create_writer(workdir, resume_step=start, is_main=is_main)
            if start == 0:  # the first eval row is the untrained model
                writer.write_scalars(0, evaluate_and_show(0, predict, state.params, frozen_nets, config, mesh, writer,
                                                          workdir))

            # Step scalars stay on the devices until a log, eval or checkpoint step fetches them (checked finite
            # there, before anything is saved); the log line averages the rows fetched since the last one.
            pending, window, saved, t_last, s_last, t_start = [], [], start, time.time(), start, time.time()
            for step in range(start + 1, config.num_train_steps + 1):
                # Where the iterator stands before this batch, for the except below (25-100 µs on the host, while
                # the devices still run the previous step, which is dispatched asynchronously).
                position = train_iter.get_state()
                profile.before(step)
                try:
                    batch = next(train_iter)
                except Exception as e:  # a file gone bad mid-run: the steps since the last checkpoint are kept
                    if step - 1 == saved or jax.process_count() > 1:  # (the other processes wait in collectives)
                        raise
                    rows = jax.device_get(pending)
                    check_finite(rows, step - len(rows), saved)
                    if window + rows:  # the row a checkpoint step logs (none when step - 1 was logged)
                        writer.write_scalars(step - 1, train_means(window + rows))
                    if is_main:
                        runs.write_config(config, workdir)
                    train_iter.set_state(position)  # before the failed batch: a rerun reads it again
                    save_checkpoint(checkpoints, step - 1, state, train_iter)
                    checkpoints.wait_until_finished()
                    kept = f"the steps to {step - 1} are saved: rerun to resume once the data is fixed"
                    if isinstance(e, UserError):
                        raise UserError(f"{e}; {kept}") from None
                    logging.error("reading the batch of step %d failed; %s", step, kept)
                    raise
                state, step_scalars = train_step(state, sharding.to_global(batch, mesh), frozen_nets)
                pending.append(step_scalars)
                last, scalars = step == config.num_train_steps, {}
                stop = stop_signals.received is not None or checkpoints.reached_preemption(step)
                save = step % config.checkpoint_every_steps == 0 or last or stop
                # A log row averages the steps since the previous one. It is also written at every checkpoint, so
                # a run resumed from one logs the rows an uninterrupted run does.
                log, evaluate = step % config.log_every_steps == 0 or save, step % config.eval_every_steps == 0 or last
                if log or evaluate or save:
                    rows, pending = jax.device_get(pending), []
                    check_finite(rows, step - len(rows) + 1, saved)
                    window += rows
                if log:
                    scalars = train_means(window)
                    now, window = time.time(), []
                    rate = (step - s_last) / max(now - t_last, 1e-9)
                    t_last, s_last = now, step
                    logging.info("step %d/%d  %s  %.2f steps/s  ETA %s", step, config.num_train_steps,
                                 "  ".join(f"{k[6:]} {scalars[k]:.5g}" for k in sorted(scalars, key=_loss_first)), rate,
                                 _format_duration((config.num_train_steps - step) / rate))
                if evaluate:
                    scalars.update(evaluate_and_show(step, predict, state.params, frozen_nets, config, mesh, writer,
                                                     workdir))
                if scalars:
                    writer.write_scalars(step, scalars)
                if save:
                    if is_main:
                        runs.write_config(config, workdir)
                    save_checkpoint(checkpoints, step, state, train_iter, scalars)
                    saved = step
                profile.after(step, state, stopping=stop or last)
                if stop:
                    logging.warning("%s at step %d: checkpoint saved, stopping; rerun to resume",
                                    stop_signals.received or "preemption notice", step)
                    break
            checkpoints.wait_until_finished()
        finally:
            profile.close()
            stop_signals.restore()
            checkpoints.close()
            if writer is not None:
                writer.close()
    logging.info("done: %d steps in %s", int(state.step) - start, _format_duration(time.time() - t_start))
    return state


def _loss_first(key: str) -> tuple[bool, str]:
    return not key.endswith("loss"), key


def _format_duration(seconds: float) -> str:
    m, s = divmod(int(max(seconds, 0)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def run(config, workdir: str, *, dry: bool = False) -> None:
    """Validates everything cheap first, then trains (or with `dry`, only compiles: `dry_run`); raises
    UserError for bad input. A multi-process run calls `processes.initialize_distributed` before this."""
    validate(config, read_data=not dry)
    checks.check_mesh(config, jax.process_count(), sharding.make_mesh(config.mesh))
    runs.check_not_foreign(workdir)
    if not dry and runs.latest_step(runs.run_path(workdir) / "checkpoints") is None:  # a new run: what it starts from
        runs.start_from(config)
    runs.prepare_workdir(workdir)
    if dry:
        dry_run(config, workdir)
    else:
        train_and_evaluate(config, workdir)


def parse_flags(argv: list[str], prog: str = "maginet_jax.train") -> list[str]:
    """absl flag parsing, with a bad flag or config override reported as one line (not a traceback)."""
    try:
        argv = flags.FLAGS(argv)
        hasattr(CONFIG.value, "keys")  # config_flags defers some load errors (a missing file) to first use
    except Exception as e:  # config_flags raises KeyError/AttributeError/ValueError/IOError
        sys.exit(f"{prog}: error: {cli.flag_error_line(e)}")
    return argv


def main(argv) -> None:
    if not _LIBRARY_LOGS.value:
        cli.quiet_library_logs()
    if len(argv) > 1:
        sys.exit(f"maginet_jax.train: error: unexpected arguments {argv[1:]}")
    try:
        if _DRY_RUN_DEVICES.value is not None:
            dry_runs.use_virtual_devices(_DRY_RUN_DEVICES.value, _DRY_RUN.value)
        processes.initialize_distributed(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                                         _PROCESS_ID.value)
        if jax.process_index() > 0:  # process 0 logs the run; the others only what goes wrong
            logging.set_verbosity(logging.WARNING)
        run(CONFIG.value, WORKDIR.value, dry=_DRY_RUN.value)
    except UserError as e:
        message = f"maginet_jax.train: error: {e}"
        if jax.process_count() > 1:  # exit hooks would wait for the other processes, which may be waiting for us
            print(message, file=sys.stderr, flush=True)
            os._exit(1)
        sys.exit(message)


if __name__ == "__main__":
    # Required here, not at import: `maginet_jax.evaluate` shares these flags and reads a run's own config.json
    # when --config is not given.
    flags.mark_flags_as_required(["config", "workdir"])
    logging.set_verbosity(logging.INFO)
    app.run(main, flags_parser=parse_flags)
