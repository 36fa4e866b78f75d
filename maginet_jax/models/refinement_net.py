"""RefinementNet, MAGINet's second stage: stage-1 albedo upsampled ×2, refined by a light three-layer CNN.

    up  = bilinear(albedo → the input image's size)
    out = clip(up + conv3(act(conv2(act(conv1(concat(up, image)))))), 0, 1)

The last conv starts at zero, so an untrained RefinementNet returns the upsampled albedo unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from maginet_jax.models.layers import Conv, block, get_activation, resize_to


class RefinementNet(nnx.Module):
    """(albedo (B,h,w,3), image (B,H,W,C)) → refined albedo (B,H,W,3) in [0, 1]."""

    def __init__(self, *, widths: tuple[int, int] = (32, 32), image_channels: int = 3, albedo_channels: int = 3,
                 activation: str = "relu", dtype=jnp.float32, remat: str = "none", rngs: nnx.Rngs):
        if len(widths) != 2:
            raise ValueError(f"RefinementNet has three convs, so two hidden widths; got {tuple(widths)}")
        self.conv1 = Conv(albedo_channels + image_channels, widths[0], (3, 3), dtype=dtype, rngs=rngs)
        self.conv2 = Conv(widths[0], widths[1], (3, 3), dtype=dtype, rngs=rngs)
        self.conv3 = Conv(widths[1], albedo_channels, (3, 3), kernel_init=nnx.initializers.zeros, dtype=dtype,
                          rngs=rngs)
        self.act, self.remat = get_activation(activation), remat

    def __call__(self, albedo: jax.Array, image: jax.Array) -> jax.Array:
        up = resize_to(albedo, *image.shape[1:3])
        h = block(lambda net, x: net.act(net.conv1(x)), self, jnp.concatenate([up, image], axis=-1), self.remat)
        h = block(lambda net, x: net.act(net.conv2(x)), self, h, self.remat)
        residual = self.conv3(h).astype(jnp.float32)
        return jnp.clip(up + residual, 0.0, 1.0)


def build_refinement_net(model_config, *, rngs: nnx.Rngs) -> RefinementNet:
    """Builds RefinementNet from `config.model` (see configs/refine.py for the keys)."""
    c = model_config
    return RefinementNet(widths=tuple(c.widths), activation=c.activation, dtype=jnp.dtype(c.dtype),
                         remat=c.get("remat", "none"), rngs=rngs)
