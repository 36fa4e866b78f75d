"""Channel and spatial attention (CBAM-style) used in AlbedoNet's bottleneck."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from maginet_jax.models.layers import Conv

ATTENTIONS = ("cbam", "channel", "spatial", "none")


def peak(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """The maximum of `x` over `axes` (kept, size 1), as one chosen element, which alone gets its gradient.

    jnp.max's gradient finds the maximum again by comparing the input with the forward's result and divides by
    the number of matches. XLA may compute that input twice, in the reduction's fusion and in the gradient's, and
    the copies need not agree to the last bit: then nothing compares equal and the gradient is 0/0, NaN in every
    network parameter upstream (as it was under LLVM -O0 on CPU). An index from argmax cannot miss. Exact ties,
    which jnp.max and torch.amax split evenly, go to the first."""
    for axis in axes:
        x = jnp.take_along_axis(x, jnp.argmax(x, axis=axis, keepdims=True), axis=axis)
    return x


def gated(x: jax.Array, gate: jax.Array) -> jax.Array:
    """x · gate, multiplied in float32 and returned in x's dtype.

    Under bfloat16 two roundings made the gates' parameter gradients several per cent off float32's (5-7% for the
    spatial gate's conv on 8×64×64×16, 2-4% for the channel gate's MLP): the gate's cotangent, a sum of x · dy over
    the axes the gate was broadcast along (every pixel for the channel gate), was accumulated in bfloat16, and the
    sigmoid's derivative s(1 − s) was taken from a bfloat16 s, where 1 − s near 1 keeps a bit or two. So both the
    gates' sigmoids (returning float32) and this product are float32: gate-sized work, next to the convolutions."""
    return (x.astype(jnp.float32) * gate.astype(jnp.float32)).astype(x.dtype)


class ChannelGate(nnx.Module):
    """Per-channel gate from average- and max-pooled descriptors through one shared MLP."""

    def __init__(self, channels: int, *, reduction: int = 16, dtype=jnp.float32, rngs: nnx.Rngs):
        hidden = max(channels // reduction, 1)
        self.fc1 = nnx.Linear(channels, hidden, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, channels, dtype=dtype, rngs=rngs)

    def gate(self, x: jax.Array) -> jax.Array:
        """The (B, 1, 1, C) gate in [0, 1], float32."""
        mlp = lambda d: self.fc2(nnx.relu(self.fc1(d)))
        logits = mlp(jnp.mean(x, axis=(1, 2))) + mlp(peak(x, (2, 1))[:, 0, 0])
        return nnx.sigmoid(logits.astype(jnp.float32))[:, None, None, :]

    def __call__(self, x: jax.Array) -> jax.Array:
        return gated(x, self.gate(x))


class SpatialGate(nnx.Module):
    """Per-pixel gate from a k×k conv over the channel-wise mean and max maps."""

    def __init__(self, *, kernel: int = 7, dtype=jnp.float32, rngs: nnx.Rngs):
        self.conv = Conv(2, 1, (kernel, kernel), padding="SAME", dtype=dtype, rngs=rngs)

    def gate(self, x: jax.Array) -> jax.Array:
        """The (B, H, W, 1) gate in [0, 1], float32."""
        pooled = jnp.concatenate([jnp.mean(x, axis=-1, keepdims=True),
                                  peak(x, (-1,))], axis=-1)
        return nnx.sigmoid(self.conv(pooled).astype(jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return gated(x, self.gate(x))


class Attention(nnx.Module):
    """Channel gate then spatial gate (CBAM order); either can be switched off by `kind`."""

    def __init__(self, channels: int, *, kind: str = "cbam", reduction: int = 16, spatial_kernel: int = 7,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        if kind not in ATTENTIONS:
            raise ValueError(f"unknown attention {kind!r}; expected one of {ATTENTIONS}")
        self.channel = (ChannelGate(channels, reduction=reduction, dtype=dtype, rngs=rngs)
                        if kind in ("cbam", "channel") else None)
        self.spatial = (SpatialGate(kernel=spatial_kernel, dtype=dtype, rngs=rngs)
                        if kind in ("cbam", "spatial") else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.channel is not None:
            x = self.channel(x)
        if self.spatial is not None:
            x = self.spatial(x)
        return x
