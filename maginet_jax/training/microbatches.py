"""Gradient accumulation: a step's gradients from `grad_accum_steps` microbatches of its global batch, one
after another, so a batch whose activations do not fit at once still trains as one step.

A microbatch is every k-th image of the global batch (image i goes to microbatch i mod k). Each device holds a
contiguous block of the batch (`sharding.batch_sharding`), so each microbatch is spread over every device like
the whole batch is, and splitting needs no communication. The loop is a `lax.scan`: one microbatch's
activations are live at a time, beside a float32 sum of the gradients.

The step's gradients and scalars are the microbatches' means. Every loss here is a mean over its images'
pixels, so this equals the whole batch's step when the images' masks cover equal areas (a UV layout's face
region); otherwise each microbatch's mean weighs its own pixels, as with any accumulation of per-batch means.
Patch-LPIPS draws each microbatch's patches with the microbatch's own key.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from maginet_jax.training import sharding


def split(batch: dict[str, jax.Array], steps: int) -> dict[str, jax.Array]:
    """Each array (B, ...) → (steps, B / steps, ...), microbatch j holding images j, j + steps, j + 2·steps, …"""
    mesh = jax.sharding.get_abstract_mesh()
    out = {}
    for key, x in batch.items():
        x = jnp.swapaxes(x.reshape(x.shape[0] // steps, steps, *x.shape[1:]), 0, 1)
        if not mesh.empty:  # each microbatch laid out as the batch is: over data × fsdp, heights over spatial
            spec = (sharding.BATCH_AXES, sharding.SPATIAL_AXIS) if x.ndim == 5 else (sharding.BATCH_AXES,)
            x = jax.lax.with_sharding_constraint(x, P(None, *spec))
        out[key] = x
    return out


def accumulate(gradients: Callable, batch: dict[str, jax.Array], rng: jax.Array, steps: int) -> tuple:
    """`gradients(microbatch, rng) -> (grads, scalars)` over `steps` microbatches of `batch`, each with its own
    key from `rng`: the means of its grads and scalars. With one step, `gradients(batch, rng)` as it is."""
    if steps == 1:
        return gradients(batch, rng)
    micro, rngs = split(batch, steps), jax.random.split(rng, steps)
    shapes = jax.eval_shape(gradients, jax.tree.map(lambda x: x[0], micro), rngs[0])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.promote_types(s.dtype, jnp.float32)), shapes)

    def add(total, xs):
        out = gradients(*xs)
        return jax.tree.map(lambda t, o: t + o.astype(t.dtype), total, out), None

    total, _ = jax.lax.scan(add, zeros, (micro, rngs))
    return jax.tree.map(lambda t, s: (t / steps).astype(s.dtype), total, shapes)
