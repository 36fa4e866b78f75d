"""Held-out evaluation, for the training loop and `python -m maginet_jax.evaluate` alike.

One ordered pass over the test split. A stage's `predict(params, frozen_nets, batch)` returns its outputs and
the copy-the-input baselines by pass name ({"albedo": ...}); each is scored against the batch's target of the
same name, per example, then averaged over the split: masked MSE and PSNR, and with `full`, masked SSIM and
LPIPS (AlexNet v0.1). SSIM and LPIPS see the prediction inside the mask and the target outside it.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from data_pipeline import loader
from maginet_jax import image_metrics, losses
from maginet_jax.perceptual.losses import composite, to_rgb
from maginet_jax.perceptual.lpips import LPIPS
from maginet_jax.stages.passes import match_channels
from maginet_jax.training import compiler, sharding

ROWS = ("model", "copy the input")
METRICS = ("mse", "psnr", "ssim", "lpips")


class Evaluation(NamedTuple):
    means: dict  # {row: {pass: {metric: mean over the held-out split}}}
    shown: dict | None  # {image name: the first examples}, gathered from all processes
    num_examples: int


def score(images: dict, targets: dict, mask: jax.Array, lpips_net) -> dict:
    """Per-example metrics {row: {pass: {metric: (B,)}}} of every image in `images` ({row: {pass: x}}) against
    the target of its pass (LPIPS and SSIM only when `lpips_net` is given).

    LPIPS sees all the images as one batch, and SSIM one batch per channel count: one AlexNet in the compiled
    program instead of one per image (twelve for the six passes, each scored for two rows), which is most of its
    compile time. Every metric is per example, so the batching changes no score."""
    x = {(row, p): composite(match_channels(v, targets[p].shape[-1]), targets[p], mask)
         for row, by_pass in images.items() for p, v in by_pass.items()}
    scores = {}
    for k, v in x.items():
        mse = losses.per_example_masked_mse(v, targets[k[1]], mask)
        scores[k] = {"mse": mse, "psnr": losses.psnr(mse)}
    if lpips_net is not None:
        for channels in sorted({v.shape[-1] for v in x.values()}):
            group = [k for k, v in x.items() if v.shape[-1] == channels]
            ssim = image_metrics.ssim(jnp.concatenate([x[k] for k in group]),
                                      jnp.concatenate([targets[k[1]] for k in group]),
                                      jnp.concatenate([mask] * len(group)))
            for k, v in zip(group, jnp.split(ssim, len(group))):
                scores[k]["ssim"] = v
        rgb = lambda images: jnp.concatenate([to_rgb(v) for v in images]) * 2.0 - 1.0
        lpips = nnx.merge(*lpips_net)(rgb(list(x.values())), rgb([targets[p] for _, p in x]))
        for k, v in zip(x, jnp.split(lpips, len(x))):
            scores[k]["lpips"] = v
    return {row: {p: scores[row, p] for p in by_pass} for row, by_pass in images.items()}


def eval_batch(params, frozen_nets, lpips_net, batch, *, predict):
    """({row: {pass: {metric: (B,)}}}, images): the scores of one global batch, and what the sample grids show:
    the batch's images by name, each target with the prediction's channels, `<pass>_pred` (inside the mask;
    outside it the prediction is unconstrained and unscored) and `<pass>_copy` (the baseline)."""
    outputs, baselines = predict(params, frozen_nets, batch)
    mask = batch["mask"]
    targets = {p: match_channels(batch[p], x.shape[-1]) for p, x in outputs.items()}
    scores = score(dict(zip(ROWS, (outputs, baselines))), targets, mask, lpips_net)
    shown = {k: v for k, v in batch.items() if k not in ("mask", "valid")}
    shown.update(targets)
    shown.update({f"{p}_pred": x * mask for p, x in outputs.items()})
    shown.update({f"{p}_copy": match_channels(x, targets[p].shape[-1]) for p, x in baselines.items()})
    return scores, shown


@functools.cache
def jit_eval_batch(options: tuple[tuple[str, str], ...]):
    """`eval_batch` jitted with these XLA compiler options (`compiler.options`, as sorted pairs), one jit per
    options: the training loop evaluates with the train step's CPU setting, and compiles once per `predict`."""
    return jax.jit(eval_batch, static_argnames="predict", compiler_options=dict(options) or None)


def evaluate(predict, params, frozen_nets, config, mesh: Mesh, *, full: bool = False,
             num_shown: int = 0) -> Evaluation:
    """The means over the held-out split, and the first `num_shown` examples of every image `eval_batch` shows
    (from as many batches as that takes).

    `predict` must be the same object from one call to the next (a jit static argument: a new one compiles
    again). The last partial batch is padded; the padding is left out of every mean.
    """
    passes = ("albedo", *config.get("passes", ()))
    source = loader.make_source(config.data, "test", config.eval.num_examples, passes)
    local_batch = config.eval.batch_size // jax.process_count()
    batches = loader.make_loader(source, batch_size=local_batch, crop_size=config.data.crop_size, train=False,
                                 seed=config.seed, worker_count=config.eval.worker_count,
                                 read_threads=config.data.read_threads, read_buffer_size=config.data.read_buffer_size)
    run = jit_eval_batch(tuple(sorted(compiler.options(config).items())))
    lpips_net = jax.device_put(nnx.split(LPIPS("alex")), sharding.replicated(mesh)) if full else None
    # Shards differ by up to one record, so one process may run out a batch early: it then joins the
    # collectives with an all-padding batch (every process must take part in each one).
    num_batches = -(-(-(-len(source) // jax.process_count())) // local_batch)
    sums, count, shown, batches, first = None, 0, None, iter(batches), None
    for _ in range(num_batches):
        local = next(batches, None)
        first = local if first is None else first
        local = local if local is not None else {k: v[:0] for k, v in first.items()}
        n = len(local["image"])
        local = {k: np.concatenate([v, np.zeros((local_batch - n, *v.shape[1:]), v.dtype)]) for k, v in local.items()}
        local["valid"] = np.arange(local_batch) < n
        batch = sharding.to_global(local, mesh)
        scores, images = run(params, frozen_nets, lpips_net, batch, predict=predict)
        got = multihost_utils.process_allgather({"scores": scores, "valid": batch["valid"]}, tiled=True)
        keep = np.asarray(got["valid"], bool)
        batch_sums = jax.tree.map(lambda v: float(np.sum(np.asarray(v, np.float64)[keep])), got["scores"])
        sums = batch_sums if sums is None else jax.tree.map(lambda a, b: a + b, sums, batch_sums)
        count += int(keep.sum())
        # Every process joins the gathers (their counts agree); the caller writes on process 0.
        if num_shown and (shown is None or len(shown["image"]) < num_shown):
            got = {k: np.asarray(v)[keep] for k, v in multihost_utils.process_allgather(images, tiled=True).items()}
            shown = got if shown is None else {k: np.concatenate([shown[k], got[k]]) for k in shown}
    shown = None if shown is None else {k: v[:num_shown] for k, v in shown.items()}
    return Evaluation(jax.tree.map(lambda s: s / count, sums), shown, count)
