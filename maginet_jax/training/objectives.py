"""Weighted sums of the loss terms each stage trains with, built from `config.losses`.

A term with weight 0 is neither computed nor logged. Terms that need frozen networks (VGG, LPIPS) build them
in `__init__` only when their weight is non-zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maginet_jax import losses
from maginet_jax.errors import UserError

ALBEDO_TERMS = ("mse", "edge", "side")


class AlbedoObjective:
    """Stage-1 loss: masked MSE + edge-aware + deep supervision of the side outputs."""

    def __init__(self, loss_weights):
        weights = dict(loss_weights)
        unknown = sorted(set(weights) - set(ALBEDO_TERMS))
        if unknown:
            raise UserError(f"unknown loss terms {unknown}; the albedo stage has {ALBEDO_TERMS}")
        if any(w < 0 for w in weights.values()):
            raise UserError(f"loss weights must be >= 0, got {weights}")
        self.weights = {k: float(w) for k, w in weights.items() if w > 0}
        if not self.weights:
            raise UserError("every loss weight is 0: nothing to train")

    @property
    def terms(self) -> tuple[str, ...]:
        """Names of the active terms, in a fixed order (metric names are train/<term>)."""
        return tuple(self.weights)

    def __call__(self, pred: jax.Array, sides: list[jax.Array], batch: dict[str, jax.Array],
                 rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Returns (weighted total, unweighted value of each active term)."""
        del rng  # used by stochastic terms (patch sampling) that later stages add
        target, mask = batch["albedo"], batch["mask"]
        compute = {
            "mse": lambda: losses.masked_mse(pred, target, mask),
            "edge": lambda: losses.edge_loss(pred, target, mask),
            "side": lambda: losses.deep_supervision_loss(sides, target, mask),
        }
        values = {k: compute[k]() for k in self.weights}
        total = sum(self.weights[k] * v for k, v in values.items())
        return jnp.asarray(total, jnp.float32), values
