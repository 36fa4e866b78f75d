"""Weighted sums of the loss terms each stage trains with, built from `config.losses`.

A term with weight 0 is neither built, computed nor logged. Terms on frozen networks (VGG, patch-LPIPS) keep
their weights in `objective.frozen`, which the train step receives as a replicated jit argument (not as
closure constants, which would be baked into the compiled program) and never differentiates.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from maginet_jax import losses
from maginet_jax.errors import UserError, check_choices
from maginet_jax.perceptual import lpips as lpips_lib
from maginet_jax.perceptual.losses import VGG_BACKBONES, PatchLPIPSLoss, VGGPerceptualLoss, to_rgb

ALBEDO_TERMS = ("mse", "edge", "side", "vgg", "lpips")


def active_weights(loss_weights, terms: tuple[str, ...] = ALBEDO_TERMS, *,
                   allow_none: bool = False) -> dict[str, float]:
    """The non-zero loss weights, after checking names and signs; all zero is an error unless `allow_none`
    (a stage with another loss of its own, such as the GAN term)."""
    weights = dict(loss_weights)
    unknown = sorted(set(weights) - set(terms))
    if unknown:
        raise UserError(f"unknown loss terms {unknown}; this stage has {terms}")
    if any(w < 0 for w in weights.values()):
        raise UserError(f"loss weights must be >= 0, got {weights}")
    active = {k: float(w) for k, w in weights.items() if w > 0}
    if not active and not allow_none:
        raise UserError("every loss weight is 0: nothing to train")
    return active


def check_perceptual_config(p, crop_size: int) -> None:
    """Validates `config.perceptual` without loading any network."""
    check_choices({"perceptual.vgg_backbone": (p.vgg_backbone, VGG_BACKBONES),
                   "perceptual.lpips_net": (p.lpips_net, lpips_lib.NETS)})
    smallest = lpips_lib.MIN_SIZE[p.lpips_net]
    if not smallest <= p.patch_size <= crop_size:
        raise UserError(f"perceptual.patch_size {p.patch_size} must be in [{smallest}, data.crop_size={crop_size}] "
                        f"for lpips_net={p.lpips_net}")
    if p.num_patches < 1:
        raise UserError(f"perceptual.num_patches must be >= 1, got {p.num_patches}")


class PerceptualNets(nnx.Module):
    """The frozen networks the active perceptual terms need (None for inactive ones)."""

    def __init__(self, perceptual_config, *, vgg: bool, lpips: bool):
        p = perceptual_config
        self.vgg = VGGPerceptualLoss(p.vgg_backbone, p.vgg19_weights, tuple(p.vgg_layer_weights)) if vgg else None
        self.lpips = PatchLPIPSLoss(p.lpips_net, p.num_patches, p.patch_size) if lpips else None


class AlbedoObjective:
    """Stage-1 loss: masked MSE, edge-aware, deep supervision, VGG perceptual and patch-LPIPS terms."""

    def __init__(self, loss_weights, perceptual_config=None):
        self.weights = active_weights(loss_weights)
        needs = {"vgg": "vgg" in self.weights, "lpips": "lpips" in self.weights}
        if any(needs.values()) and perceptual_config is None:
            raise UserError("the vgg and lpips terms need config.perceptual")
        nets = PerceptualNets(perceptual_config, **needs) if any(needs.values()) else nnx.Dict()
        self._graphdef, self.frozen = nnx.split(nets)

    @property
    def terms(self) -> tuple[str, ...]:
        """Names of the active terms, in a fixed order (metric names are train/<term>)."""
        return tuple(self.weights)

    def __call__(self, frozen, pred: jax.Array, sides: list[jax.Array], batch: dict[str, jax.Array],
                 rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Returns (weighted total, unweighted value of each active term); `frozen` is `self.frozen`."""
        nets = nnx.merge(self._graphdef, frozen)
        target, mask = batch["albedo"], batch["mask"]
        compute = {
            "mse": lambda: losses.masked_mse(pred, target, mask),
            "edge": lambda: losses.edge_loss(pred, target, mask),
            "side": lambda: losses.deep_supervision_loss(sides, target, mask),
            "vgg": lambda: nets.vgg(pred, target, mask),
            "lpips": lambda: nets.lpips(pred, target, mask, rng),
        }
        values = {k: compute[k]() for k in self.weights}
        total = sum(self.weights[k] * v for k, v in values.items())
        return jnp.asarray(total, jnp.float32), values


PASSES_TERMS = ("mse", "vgg", "fm")


def split_channels(x: jax.Array, channels) -> list[jax.Array]:
    """Passes concatenated on the last axis → one array per pass, of `channels` channels each."""
    return jnp.split(x, list(itertools.accumulate(channels))[:-1], axis=-1)


class PassesObjective:
    """Stage-3 reconstruction terms on every pass: masked MSE and VGG perceptual, each averaged over passes.

    The GAN and feature-matching terms (`losses.fm`) live in the GAN step; this covers the rest. Passes with
    one channel are seen by VGG as grey RGB; all passes go through VGG as one batch.
    """

    def __init__(self, loss_weights, perceptual_config, channels: tuple[int, ...]):
        active = active_weights(loss_weights, PASSES_TERMS, allow_none=True)
        self.weights = {k: active[k] for k in ("mse", "vgg") if k in active}
        self.channels = tuple(channels)
        nets = PerceptualNets(perceptual_config, vgg=True, lpips=False) if "vgg" in self.weights else nnx.Dict()
        self._graphdef, self.frozen = nnx.split(nets)

    @property
    def terms(self) -> tuple[str, ...]:
        return tuple(self.weights)

    def split(self, x: jax.Array) -> list[jax.Array]:
        """Channel-concatenated passes → one array per pass."""
        return split_channels(x, self.channels)

    def __call__(self, frozen, pred: jax.Array, target: jax.Array, mask: jax.Array):
        """`pred` and `target` hold all passes concatenated on channels, in [0, 1]."""
        preds, targets = self.split(pred), self.split(target)
        compute = {
            "mse": lambda: sum(losses.masked_mse(p, t, mask) for p, t in zip(preds, targets)) / len(preds),
            "vgg": lambda: nnx.merge(self._graphdef, frozen).vgg(
                jnp.concatenate([to_rgb(p) for p in preds]), jnp.concatenate([to_rgb(t) for t in targets]),
                jnp.concatenate([mask] * len(preds))),
        }
        values = {k: compute[k]() for k in self.weights}
        return sum((self.weights[k] * v for k, v in values.items()), jnp.zeros((), jnp.float32)), values
