"""Optimizer and learning-rate schedule from `config.optim`."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from maginet_jax.errors import UserError

SCHEDULES = ("cosine", "linear", "constant", "constant_then_linear")


def make_schedule(optim_config, num_train_steps: int) -> optax.Schedule:
    """Linear warm-up to `learning_rate`, then cosine or linear decay to `end_learning_rate_factor`×, or flat.

    `constant_then_linear` is pix2pixHD's: flat, then a linear decay over the last `decay_steps` steps.
    """
    c = optim_config
    peak, warmup = c.learning_rate, min(c.warmup_steps, num_train_steps)
    end = peak * c.end_learning_rate_factor
    decay_steps = max(num_train_steps - warmup, 1)
    if c.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=c.end_learning_rate_factor)
    elif c.schedule == "linear":
        after = optax.linear_schedule(peak, end, decay_steps)
    elif c.schedule == "constant":
        after = optax.constant_schedule(peak)
    elif c.schedule == "constant_then_linear":
        if not 0 <= c.decay_steps <= decay_steps:
            raise UserError(f"optim.decay_steps={c.decay_steps} must be in [0, {decay_steps}] (the steps after "
                            f"warm-up)")
        flat = decay_steps - c.decay_steps
        after = optax.join_schedules([optax.constant_schedule(peak),
                                      optax.linear_schedule(peak, end, max(c.decay_steps, 1))], [flat])
    else:
        raise UserError(f"optim.schedule {c.schedule!r} is not one of {SCHEDULES}")
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(optim_config, num_train_steps: int, *, frozen_labels=None,
                   frozen_steps: int = 0) -> optax.GradientTransformation:
    """Adam (AdamW when weight_decay > 0) on the schedule, after optional global-norm clipping.

    `frozen_labels` (a pytree or function of the params giving "frozen" / "free" per leaf) holds the
    "frozen" leaves still for the first `frozen_steps` steps (see `freeze_until`); the schedule keeps
    counting every step for all of them.
    """
    c = optim_config
    direction = optax.scale_by_adam(b1=c.b1, b2=c.b2)
    if c.weight_decay > 0:
        direction = optax.chain(direction, optax.add_decayed_weights(c.weight_decay))
    if frozen_labels is not None and frozen_steps > 0:
        direction = optax.multi_transform({"frozen": freeze_until(direction, frozen_steps), "free": direction},
                                          frozen_labels)
    parts = [optax.clip_by_global_norm(c.grad_clip_norm)] if c.grad_clip_norm > 0 else []
    return optax.chain(*parts, direction, optax.scale_by_learning_rate(make_schedule(c, num_train_steps)))


class _FreezeState(NamedTuple):
    count: jax.Array
    inner: optax.OptState


def freeze_until(inner: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
    """Zero updates for the first `steps` steps, then `inner`, whose state starts fresh at that point.

    pix2pixHD's `niter_fix_global`: the global generator stays fixed while the local enhancer trains, then
    joins the optimizer as if newly added (no moments, no bias-correction count carried over).
    """

    def init(params):
        return _FreezeState(jnp.zeros((), jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        def frozen():
            return jax.tree.map(jnp.zeros_like, updates), state.inner

        new_updates, new_inner = jax.lax.cond(state.count < steps, frozen,
                                              lambda: inner.update(updates, state.inner, params))
        return new_updates, _FreezeState(state.count + 1, new_inner)

    return optax.GradientTransformation(init, update)
