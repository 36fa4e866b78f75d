"""Convolutional building blocks shared by the MAGINet networks (Flax NNX, NHWC)."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maginet_jax.training.sharding import constrain_activation

NORMS = ("group", "instance", "none")
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nnx.relu,
    "leaky_relu": lambda x: nnx.leaky_relu(x, 0.2),
    "gelu": nnx.gelu,
    "silu": nnx.silu,
}


def _group_count(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """Largest divisor of `channels` up to `max_groups` that leaves at least `min_group_size` channels a group.

    One channel per group would be instance norm, under which every channel's spatial mean equals the norm's
    bias: the channel gate's average-pooled descriptor would then carry no information about the input.
    """
    limit = max(min(max_groups, channels // min_group_size), 1)
    return max(g for g in range(1, limit + 1) if channels % g == 0)


class GroupNorm(nnx.Module):
    """Group normalisation of an NHWC batch (`nnx.GroupNorm`'s map, parameter names and epsilon), from
    per-channel statistics.

    flax reduces the activation reshaped to [B, H, W, groups, channels per group] and normalises as
    (x − mean) · scale / σ + bias. This reduces over H and W to [B, C] first, combines those into groups (a tiny
    op), and normalises with one multiply-add per (example, channel), x · a + b. XLA then needs less memory for
    the train step: the paper-scale albedo dry run (batch 16, one device) fell from 67.3 to 55.8 GiB in float32
    and from 62.4 to 56.7 GiB in bfloat16 (README, "Sharding, precision and memory"). Outputs and gradients
    agree with flax's to float32 rounding (tests/test_model.py). Statistics and the multiply-add are float32,
    the scale and bias stay float32 under bfloat16 (flax rounds them to the compute dtype), and the output is
    `dtype`. Variance is E[x²] − E[x]² clipped at 0, as flax's default.
    """

    def __init__(self, channels: int, num_groups: int, *, epsilon: float = 1e-6, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        del rngs  # the parameters start at 1 and 0
        if channels % num_groups:
            raise ValueError(f"{channels} channels do not split into {num_groups} groups")
        self.num_groups, self.epsilon, self.dtype = num_groups, epsilon, dtype
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, c, g = x.shape[0], x.shape[-1], self.num_groups
        x32 = x.astype(jnp.float32)
        spatial = tuple(range(1, x.ndim - 1))
        def group_mean(per_channel):  # [B, C] → [B, C], each channel holding its group's mean
            m = per_channel.reshape(b, g, c // g).mean(-1, keepdims=True)
            return jnp.broadcast_to(m, (b, g, c // g)).reshape(b, c)
        mean = group_mean(jnp.mean(x32, spatial))
        var = jnp.maximum(group_mean(jnp.mean(jnp.square(x32), spatial)) - jnp.square(mean), 0.0)
        mul = jax.lax.rsqrt(var + self.epsilon) * self.scale[...]
        add = self.bias[...] - mean * mul
        shape = (b,) + (1,) * len(spatial) + (c,)
        return (x32 * mul.reshape(shape) + add.reshape(shape)).astype(self.dtype)


def make_norm(kind: str, channels: int, *, dtype, rngs: nnx.Rngs) -> Callable[[jax.Array], jax.Array]:
    """Returns a normalisation layer over the channel axis: 'group', 'instance' (one group per channel) or
    'none'. Statistics and the normalisation are float32; the output is `dtype`."""
    if kind == "group":
        return GroupNorm(channels, _group_count(channels), dtype=dtype, rngs=rngs)
    if kind == "instance":
        return GroupNorm(channels, channels, dtype=dtype, rngs=rngs)
    if kind == "none":
        return lambda x: x
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Looks up an activation by name, with a clear error for an unknown one."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {tuple(ACTIVATIONS)}") from None


class _Float32Bias:
    """Adds the bias in float32, then casts back to the layer's dtype.

    flax adds a bias in the layer's compute dtype, so under `model.dtype=bfloat16` the bias's gradient, a sum over
    every output pixel of the batch, is accumulated in bfloat16 (XLA reduces in the operand's type). Measured on
    XLA:CPU: a 1×1 conv's bias gradient over 8×64×64 pixels of cotangent 1.3 comes out 2048, where the sum is 42,496
    (one more bfloat16 term rounds away); RefinementNet's bf16 gradients were 20% off float32 in L2 from this alone.
    Here that sum is float32 (tests/test_model.py). In float32 the add is flax's own, bit for bit; the parameter
    (`bias`, drawn after the kernel) and its path are flax's, so checkpoints and weight imports are unchanged.
    """

    def __init__(self, *args, use_bias: bool = True, bias_init=nnx.initializers.zeros_init(), bias_metadata=None,
                 rngs: nnx.Rngs, **kwargs):
        super().__init__(*args, use_bias=False, rngs=rngs, **kwargs)
        if use_bias:
            self.bias = nnx.Param(bias_init(rngs.params(), (self.out_features,), self.param_dtype),
                                  **(bias_metadata or {}))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.add_bias(super().__call__(x))  # flax's layer built without a bias: the convolution alone

    def add_bias(self, y: jax.Array) -> jax.Array:
        """y + the bias, added in float32, in y's dtype (y unchanged without a bias): the layer's output from its
        convolution's (what AdaptiveFusion.weights computes by other means)."""
        if self.bias is None:
            return y
        return (y.astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(y.dtype)


class Conv(_Float32Bias, nnx.Conv):
    """`nnx.Conv` whose bias, and its gradient, are float32 whatever the compute dtype (`_Float32Bias`)."""


class ConvTranspose(_Float32Bias, nnx.ConvTranspose):
    """`nnx.ConvTranspose` whose bias, and its gradient, are float32 whatever the compute dtype (`_Float32Bias`)."""


# The tap of a 3-wide transposed kernel (stride 2, padding 1) that output phase p (0: even, 1: odd) takes from input
# offset d (0: the pixel itself, 1: its next neighbour): even outputs take the centre tap alone, odd ones the last tap
# from the pixel and the first from the neighbour; 3 is a zero tap padded on.
_PHASE_TAPS = np.array([[1, 3], [2, 0]])


class SubpixelConvTranspose(ConvTranspose):
    """torch's `ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)` (pix2pixHD's upsampling), with
    `ConvTranspose`'s parameters (kernel (3, 3, cout, cin) for `transpose_kernel`, float32 bias) and its output,
    computed as one stride-1 2×2 convolution into the four sub-pixel phases of each input pixel, then depth-to-space.

    Why: XLA hands cuDNN a transposed convolution's kernel gradient as a convolution whose window is the whole output
    gradient, which took 231 ms on an H100 (bf16, 512² → 1024², 64 → 32 channels; a plain strided conv of that size,
    0.46 ms forward and backward): 76% of the passes train step
    (benchmarks/results/nvidia-h100-80gb-hbm3/profile_passes_bfloat16.md). On XLA:CPU this form's forward and
    backward are 4.5× faster too (64 → 32 channels at 128², `python benchmarks/conv_forms.py --scale=4`). Here every
    gradient is an ordinary convolution's. The 2×2 kernel holds 16 taps where the transposed one has 9 (the rest are
    zeros): 1.8× the multiply-adds, on layers that are a small part of a step's FLOPs.
    """

    def __init__(self, cin: int, cout: int, *, kernel_init, dtype, rngs: nnx.Rngs):
        super().__init__(cin, cout, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)), transpose_kernel=True,
                         kernel_init=kernel_init, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, cin = x.shape
        cout = self.kernel.shape[2]
        kernel = jnp.pad(self.kernel[...], ((0, 1), (0, 1), (0, 0), (0, 0)))  # tap 3 is zero
        # [ph, dh, pw, dw, cout, cin] by indexing (exact), then [dh, dw, cin, (ph, pw, cout)].
        kernel = kernel[_PHASE_TAPS[:, :, None, None], _PHASE_TAPS[None, None, :, :]]
        kernel = kernel.transpose(1, 3, 5, 0, 2, 4).reshape(2, 2, cin, 4 * cout).astype(self.dtype or x.dtype)
        x = jnp.pad(x.astype(kernel.dtype), ((0, 0), (0, 1), (0, 1), (0, 0)))  # the neighbour past the last pixel
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         precision=self.precision)
        y = y.reshape(n, h, w, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, cout)
        return self.add_bias(y)


class ConvNormAct(nnx.Module):
    """Conv → norm → activation, the unit every block below is made of."""

    def __init__(self, cin: int, cout: int, *, kernel: int = 3, stride: int = 1, norm: str = "group",
                 act: str | None = "relu", dtype=jnp.float32, rngs: nnx.Rngs):
        self.conv = Conv(cin, cout, (kernel, kernel), strides=stride, padding="SAME",
                         use_bias=norm == "none", dtype=dtype, rngs=rngs)
        self.norm = make_norm(norm, cout, dtype=dtype, rngs=rngs)
        self.act = get_activation(act) if act else (lambda x: x)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.act(self.norm(self.conv(x)))


class ResidualBlock(nnx.Module):
    """Two 3×3 conv-norm layers plus a skip (1×1 projection when widths differ), activation after the add.

    `attention` is an optional module applied to the residual branch before the add (CBAM-style).
    """

    def __init__(self, cin: int, cout: int, *, norm: str = "group", act: str = "relu",
                 attention: nnx.Module | None = None, dtype=jnp.float32, rngs: nnx.Rngs):
        self.conv1 = ConvNormAct(cin, cout, norm=norm, act=act, dtype=dtype, rngs=rngs)
        self.conv2 = ConvNormAct(cout, cout, norm=norm, act=None, dtype=dtype, rngs=rngs)
        self.attention = attention
        self.skip = (Conv(cin, cout, (1, 1), use_bias=False, dtype=dtype, rngs=rngs)
                     if cin != cout else None)
        self.act = get_activation(act)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv2(self.conv1(x))
        if self.attention is not None:
            h = self.attention(h)
        return self.act(h + (self.skip(x) if self.skip is not None else x))


def resize_to(x: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize of an NHWC batch (half-pixel centres, like align_corners=False).

    Upsampling by whole factors, all our networks do, is `_upsample` along each axis: the same function as
    jax.image.resize's, which computes it as a dot with a weight matrix per axis and transposes around it (on an
    H100, 7% of the albedo train step: benchmarks/results/nvidia-h100-80gb-hbm3/profile_albedo_bfloat16.md).
    """
    (h, w), (height, width) = x.shape[1:3], (int(height), int(width))
    if (h, w) == (height, width):
        return x
    if height % h == 0 and width % w == 0:
        return _upsample(_upsample(x, height // h, axis=1), width // w, axis=2)
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), method="bilinear")


def _upsample(x: jax.Array, factor: int, axis: int) -> jax.Array:
    """Bilinear upsampling by a whole factor along one axis, as elementwise blends XLA fuses (no dot, no scatter
    in the backward pass). Output i·factor + r samples the input at i + t, t = (r + ½)/factor − ½ in (−½, ½): a
    blend of input i and its neighbour on t's side, weight |t|, edges repeated (what the bilinear kernel, renormalised
    at the border, gives there). Computed in float32 whatever x's dtype."""
    if factor == 1:
        return x
    n = x.shape[axis]
    x32 = x.astype(jnp.float32)
    part = functools.partial(jax.lax.slice_in_dim, x32, axis=axis)
    before = jnp.concatenate([part(0, 1), part(0, n - 1)], axis)
    after = jnp.concatenate([part(1, n), part(n - 1, n)], axis)
    phases = []
    for r in range(factor):
        t = (r + 0.5) / factor - 0.5
        phases.append(x32 + t * (after - x32) if t >= 0 else x32 - t * (before - x32))
    out = jnp.stack(phases, axis + 1)
    return out.reshape(x.shape[:axis] + (n * factor,) + x.shape[axis + 1:]).astype(x.dtype)


def level_multiple(levels: int) -> int:
    """Image sides an encoder of `levels` levels, halving between them, can take are multiples of this."""
    return 2 ** (levels - 1)


def check_level_size(name: str, levels: int, height: int, width: int) -> None:
    """ValueError, naming the rule, for an input size such an encoder cannot halve `levels` - 1 times."""
    m = level_multiple(levels)
    if height % m or width % m:
        raise ValueError(f"{name} with {levels} levels needs image sizes divisible by {m}; got {height}x{width}")


def encode(h: jax.Array, levels, downsamples, remat: str = "none") -> tuple[jax.Array, list[jax.Array]]:
    """Encoder levels (each a sequence of blocks), `downsamples[i - 1]` before level i > 0: (the last level's
    output, every level's output for the decoder's skips)."""
    skips = []
    for i, blocks in enumerate(levels):
        if i > 0:
            h = block(apply, downsamples[i - 1], h, remat)
        for b in blocks:
            h = block(apply, b, h, remat)
        skips.append(h)
    return h, skips


DTYPES = ("float32", "bfloat16", "float16")  # compute dtypes (config.model.dtype; parameters stay float32)

# How a block's activations are kept for the backward pass (config.model.remat): "blocks" keeps the conv
# outputs and recomputes norms, activations and gates; "full" keeps only the block's input.
REMATS = ("none", "blocks", "full")
_REMAT_POLICIES = {"blocks": jax.checkpoint_policies.dots_saveable,
                   "full": jax.checkpoint_policies.nothing_saveable}


def apply(module, x: jax.Array) -> jax.Array:
    """module(x), as a `block` function."""
    return module(x)


def block(fn: Callable, module, x: jax.Array, remat: str = "none") -> jax.Array:
    """`fn(module, x)` as one block of a network: rematerialised in the backward pass as `remat` (REMATS)
    says, its input and output split over the mesh's spatial axis when there is one."""
    x = constrain_activation(x)
    if remat == "none":
        return constrain_activation(fn(module, x))
    # jax.checkpoint of a pure function of the module's state: nnx.remat would refuse a module whose
    # parameters come from an outer trace (pix2pixHD's D inside the gradient with respect to G's output).
    graphdef, state = nnx.split(module)
    pure = lambda state, x: fn(nnx.merge(graphdef, state), x)
    return constrain_activation(jax.checkpoint(pure, policy=_REMAT_POLICIES[remat])(state, x))
