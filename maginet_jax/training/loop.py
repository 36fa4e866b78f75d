"""The training loop of every stage: sharded steps, periodic eval, logging and exact resume."""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from data_pipeline import loader as data_loader
from data_pipeline import sources
from maginet_jax import stages
from maginet_jax.training import images, sharding
from maginet_jax.training.checkpoint import Checkpointer
from maginet_jax.training.writers import create_writer


def _format_duration(seconds: float) -> str:
    m, s = divmod(int(max(seconds, 0)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def eval_batches(config, mesh, stage, state):
    """One ordered pass over the held-out split: yields (metrics, images, valid) per global batch.

    The last partial batch is padded; `valid` (a global bool array) marks its real examples, and the metrics
    already leave the padding out.
    """
    source = sources.make_source(config.data, "test", config.eval.num_examples, stage.data_passes)
    local_batch = config.eval.batch_size // jax.process_count()
    loader = data_loader.make_loader(source, batch_size=local_batch, crop_size=config.data.crop_size, train=False,
                                     seed=config.seed, worker_count=config.eval.worker_count)
    for local in loader:
        n = len(local["image"])
        local = {k: np.concatenate([v, np.zeros((local_batch - n, *v.shape[1:]), v.dtype)]) for k, v in local.items()}
        local["valid"] = np.arange(local_batch) < n
        batch = sharding.to_global(local, mesh)
        metrics, columns = stage.eval_step(state, batch)
        yield metrics, columns, batch["valid"]


def evaluate(config, mesh, stage, state) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(eval/* scalars, {column: first examples}) over the whole held-out split."""
    acc, shown = None, None
    for metrics, columns, _ in eval_batches(config, mesh, stage, state):
        acc = metrics if acc is None else acc.merge(metrics)
        if shown is None:  # every process joins the gather; only process 0 writes the grids
            got = multihost_utils.process_allgather({k: columns[k] for k in stage.columns}, tiled=True)
            shown = {k: v[:config.num_sample_images] for k, v in got.items()}
    return {f"eval/{k}": float(v) for k, v in acc.compute().items()}, shown


def train_and_evaluate(config, workdir: str):
    """Trains the stage `config.stage` names, resuming from `<workdir>/checkpoints` when it holds a checkpoint.

    Returns the final train state.
    """
    is_main = jax.process_index() == 0
    mesh = sharding.make_mesh(config.mesh)
    logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count())

    stage = stages.make_stage(config, mesh)
    state = stage.initial_state
    train_source = sources.make_source(config.data, "train", config.data.num_train_examples, stage.data_passes)
    train_iter = iter(data_loader.make_loader(
        train_source, batch_size=config.batch_size // jax.process_count(), crop_size=config.data.crop_size,
        train=True, seed=config.seed, worker_count=config.data.worker_count, flip=config.data.flip,
        worker_buffer_size=config.data.worker_buffer_size, read_threads=config.data.read_threads,
        read_buffer_size=config.data.read_buffer_size))

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.max_checkpoints_to_keep,
                        async_save=config.async_checkpointing)
    start = ckpt.latest_step() or 0
    if start:
        state = ckpt.restore(start, state, train_iter)
        logging.info("resumed from step %d in %s", start, workdir)
    elif is_main:
        logging.info("%s", stage.overview(state))
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    writer = create_writer(workdir, resume_step=start, is_main=is_main)
    def run_eval(step: int) -> dict[str, float]:
        scalars, shown = evaluate(config, mesh, stage, state)
        logging.info("eval step %d: %s", step, stage.eval_message(scalars))
        if is_main:
            writer.write_images(step, {f"eval/{tag}": images.grid([shown[k] for k in cols])[None]
                                       for tag, cols in stage.image_groups.items()})
            images.save_png(os.path.join(workdir, "samples", f"step_{step:07d}.png"),
                            images.grid([shown[k] for k in stage.columns]))
        return scalars

    if start == 0:  # the first eval row is the untrained model
        writer.write_scalars(0, run_eval(0))

    metrics, t_last, s_last, t_start = None, time.time(), start, time.time()
    for step in range(start + 1, config.num_train_steps + 1):
        state, step_metrics = stage.train_step(state, sharding.to_global(next(train_iter), mesh))
        metrics = step_metrics if metrics is None else metrics.merge(step_metrics)
        last = step == config.num_train_steps
        scalars = {}
        if step % config.log_every_steps == 0 or last:
            scalars.update({f"train/{k}": float(v) for k, v in metrics.compute().items()})
            metrics, now = None, time.time()
            rate = (step - s_last) / max(now - t_last, 1e-9)
            t_last, s_last = now, step
            logging.info("step %d/%d  %s %.5f  %.2f steps/s  ETA %s", step, config.num_train_steps, stage.loss_key,
                         scalars[f"train/{stage.loss_key}"], rate,
                         _format_duration((config.num_train_steps - step) / rate))
        if step % config.eval_every_steps == 0 or last:
            scalars.update(run_eval(step))
        if scalars:
            writer.write_scalars(step, scalars)
        preempted = ckpt.reached_preemption(step)
        if step % config.checkpoint_every_steps == 0 or last or preempted:
            ckpt.save(step, state, train_iter)
        if preempted:
            logging.warning("preemption at step %d: checkpoint saved, stopping; rerun to resume", step)
            break
    ckpt.wait()
    ckpt.close()
    writer.close()
    logging.info("done: %d steps in %s", int(state.step) - start, _format_duration(time.time() - t_start))
    return state


def read_metrics(workdir: str) -> list[dict]:
    """The rows of `<workdir>/metrics.jsonl`."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
