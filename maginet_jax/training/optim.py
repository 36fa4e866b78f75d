"""Optimizer and learning-rate schedule from `config.optim`."""

from __future__ import annotations

import optax

from maginet_jax.errors import UserError

SCHEDULES = ("cosine", "linear", "constant")


def make_schedule(optim_config, num_train_steps: int) -> optax.Schedule:
    """Linear warm-up to `learning_rate`, then cosine or linear decay to `end_learning_rate_factor`×, or flat."""
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
    else:
        raise UserError(f"optim.schedule {c.schedule!r} is not one of {SCHEDULES}")
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(optim_config, num_train_steps: int) -> optax.GradientTransformation:
    """Adam (AdamW when weight_decay > 0) on the schedule, after optional global-norm clipping."""
    c = optim_config
    lr = make_schedule(c, num_train_steps)
    adam = (optax.adamw(lr, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay) if c.weight_decay > 0
            else optax.adam(lr, b1=c.b1, b2=c.b2))
    return optax.chain(optax.clip_by_global_norm(c.grad_clip_norm), adam) if c.grad_clip_norm > 0 else adam
