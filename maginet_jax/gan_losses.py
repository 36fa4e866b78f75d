"""Pix2PixHD's adversarial and feature-matching losses over multiscale discriminator outputs.

`outputs` are what `MultiscaleDiscriminator` returns: a list over scales of lists of layer outputs, the last
of each being the patch logits. As in the original, a GAN loss is summed over scales (each term a mean over
patches); the D loss the trainer minimises is 0.5 · (real + fake).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

GAN_MODES = ("lsgan", "hinge")


def discriminator_loss(real_outputs, fake_outputs, mode: str = "lsgan") -> jax.Array:
    """0.5 · (Σ_scales loss(real → 1) + Σ_scales loss(fake → 0)); hinge: relu(1 − real), relu(1 + fake)."""
    if mode == "lsgan":
        real = sum(jnp.mean(jnp.square(s[-1] - 1.0)) for s in real_outputs)
        fake = sum(jnp.mean(jnp.square(s[-1])) for s in fake_outputs)
    elif mode == "hinge":
        real = sum(jnp.mean(jax.nn.relu(1.0 - s[-1])) for s in real_outputs)
        fake = sum(jnp.mean(jax.nn.relu(1.0 + s[-1])) for s in fake_outputs)
    else:
        raise ValueError(f"unknown GAN mode {mode!r}; expected one of {GAN_MODES}")
    return 0.5 * (real + fake)


def generator_loss(fake_outputs, mode: str = "lsgan") -> jax.Array:
    """Σ_scales loss(fake → 1) (LSGAN) or −Σ_scales mean(fake) (hinge)."""
    if mode == "lsgan":
        return sum(jnp.mean(jnp.square(s[-1] - 1.0)) for s in fake_outputs)
    if mode == "hinge":
        return -sum(jnp.mean(s[-1]) for s in fake_outputs)
    raise ValueError(f"unknown GAN mode {mode!r}; expected one of {GAN_MODES}")


def feature_matching_loss(real_outputs, fake_outputs, n_layers: int, weight: float = 10.0) -> jax.Array:
    """Σ_scales Σ_layers≠last (1/num_D)·(4/(n_layers+1))·L1(fake, real) · weight, real features held fixed."""
    num_d = len(fake_outputs)
    scale = weight * (1.0 / num_d) * (4.0 / (n_layers + 1))
    total = 0.0
    for real_scale, fake_scale in zip(real_outputs, fake_outputs):
        for r, f in zip(real_scale[:-1], fake_scale[:-1]):
            total = total + scale * jnp.mean(jnp.abs(f - jax.lax.stop_gradient(r)))
    return total
