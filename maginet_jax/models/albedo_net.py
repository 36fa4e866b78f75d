"""AlbedoNet, MAGINet's first stage: lit face image → light-normalised diffuse albedo.

Hierarchical residual encoder (L levels; level i runs at 1/2^i of the input and level L-1 is the
bottleneck), a bottleneck of residual blocks with channel + spatial attention, and a decoder that at every
level fuses three inputs with learned per-pixel weights:

    up_i   = conv(upsample(decoder feature from level i+1))
    skip_i = encoder feature at level i
    ctx_i  = 1×1 conv(bottleneck context), resized to level i
    w      = softmax over inputs of a 1×1 conv over concat(up_i, skip_i, ctx_i)   (per pixel)
    fused  = Σ_j w_j · input_j

Each decoder level below full resolution emits a side albedo for deep supervision. With the paper's five
levels (64-128-256-512-512) a 512² input has its bottleneck at 32², so sizes must be divisible by 2^(L-1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from maginet_jax.models.attention import Attention
from maginet_jax.models.layers import (Conv, ConvNormAct, ResidualBlock, apply, block, check_level_size, encode,
                                      level_multiple, resize_to)
from maginet_jax.models.unet import UNet

FUSIONS = ("adaptive", "concat", "sum")


class AdaptiveFusion(nnx.Module):
    """Fuses same-width feature maps: 'adaptive' (per-pixel softmax weights), 'concat' (1×1 conv) or 'sum'."""

    def __init__(self, width: int, num_inputs: int, *, kind: str = "adaptive", dtype=jnp.float32,
                 rngs: nnx.Rngs):
        if kind not in FUSIONS:
            raise ValueError(f"unknown fusion {kind!r}; expected one of {FUSIONS}")
        self.kind = kind
        out = num_inputs if kind == "adaptive" else width
        self.proj = Conv(width * num_inputs, out, (1, 1), dtype=dtype, rngs=rngs) if kind != "sum" else None

    def weights(self, inputs: list[jax.Array]) -> jax.Array:
        """Per-pixel fusion weights (B, H, W, num_inputs), summing to one ('adaptive' only).

        `proj`, the 1×1 convolution over the inputs' concatenation, is computed as one matrix product per input
        (its kernel's rows for that input) summed, so the concatenation, num_inputs × width channels at the level's
        full size, is never written, nor its gradient sliced apart."""
        kernel, width = self.proj.kernel[...], inputs[0].shape[-1]
        logits = sum(jnp.einsum("bhwc,co->bhwo", x, kernel[0, 0, j * width:(j + 1) * width].astype(x.dtype))
                     for j, x in enumerate(inputs))
        return jax.nn.softmax(self.proj.add_bias(logits).astype(jnp.float32), axis=-1)

    def __call__(self, inputs: list[jax.Array]) -> jax.Array:
        if self.kind == "sum":
            return sum(inputs)
        if self.kind == "concat":
            return self.proj(jnp.concatenate(inputs, axis=-1))
        w = self.weights(inputs).astype(inputs[0].dtype)
        return sum(w[..., j:j + 1] * x for j, x in enumerate(inputs))


class AlbedoNet(nnx.Module):
    """Lit image in [0,1] (B,H,W,C) → (albedo (B,H,W,3) in [0,1], side albedos coarse→fine)."""

    def __init__(self, *, in_channels: int = 3, out_channels: int = 3,
                 widths: tuple[int, ...] = (64, 128, 256, 512, 512), blocks_per_level: int = 1,
                 bottleneck_blocks: int = 2, decoder_blocks: int = 1, norm: str = "group",
                 activation: str = "relu", attention: str = "cbam", attention_reduction: int = 16,
                 spatial_kernel: int = 7, fusion: str = "adaptive", dtype=jnp.float32, remat: str = "none",
                 rngs: nnx.Rngs):
        if len(widths) < 2:
            raise ValueError(f"AlbedoNet needs at least 2 levels, got widths={tuple(widths)}")
        widths = tuple(int(w) for w in widths)
        self.widths, self.remat = widths, remat
        kw = dict(norm=norm, dtype=dtype, rngs=rngs)
        residual = lambda cin, cout, att=None: ResidualBlock(cin, cout, act=activation, attention=att, **kw)

        self.stem = ConvNormAct(in_channels, widths[0], act=activation, **kw)
        self.down = nnx.List([ConvNormAct(widths[i - 1], widths[i], stride=2, act=activation, **kw)
                              for i in range(1, len(widths))])
        self.enc = nnx.List([nnx.List([residual(w, w) for _ in range(blocks_per_level)]) for w in widths])
        c = widths[-1]
        self.bottleneck = nnx.List([
            residual(c, c, Attention(c, kind=attention, reduction=attention_reduction,
                                  spatial_kernel=spatial_kernel, dtype=dtype, rngs=rngs))
            for _ in range(bottleneck_blocks)])
        # Decoder modules are indexed by the level they produce, 0 (full size) .. L-2.
        levels = range(len(widths) - 1)
        self.up = nnx.List([ConvNormAct(widths[i + 1], widths[i], act=activation, **kw) for i in levels])
        self.ctx = nnx.List([Conv(c, widths[i], (1, 1), dtype=dtype, rngs=rngs) for i in levels])
        self.fuse = nnx.List([AdaptiveFusion(widths[i], 3, kind=fusion, dtype=dtype, rngs=rngs)
                              for i in levels])
        self.dec = nnx.List([nnx.List([residual(widths[i], widths[i]) for _ in range(decoder_blocks)])
                             for i in levels])
        self.heads = nnx.List([Conv(widths[i], out_channels, (1, 1), dtype=dtype, rngs=rngs) for i in levels])

    @property
    def size_multiple(self) -> int:
        """Input heights and widths must be multiples of this."""
        return level_multiple(len(self.widths))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        check_level_size("AlbedoNet", len(self.widths), x.shape[1], x.shape[2])
        h, skips = encode(block(apply, self.stem, x * 2.0 - 1.0, self.remat), self.enc, self.down, self.remat)
        for blk in self.bottleneck:
            h = block(apply, blk, h, self.remat)
        context = h
        sides = []
        for i in reversed(range(len(self.widths) - 1)):
            size = skips[i].shape[1:3]
            up = block(apply, self.up[i], resize_to(h, *size), self.remat)
            # The 1×1 conv before the resize: both are linear and bilinear weights sum to one, so the order
            # gives the same map, and this one convolves the bottleneck's few pixels instead of level i's many.
            ctx = resize_to(self.ctx[i](context), *size)
            h = self.fuse[i]([up, skips[i], ctx])
            for blk in self.dec[i]:
                h = block(apply, blk, h, self.remat)
            out = nnx.sigmoid(self.heads[i](h).astype(jnp.float32))
            if i > 0:
                sides.append(out)
        return out, sides


ARCHS = ("maginet", "unet")


def build_albedo_net(model_config, *, rngs: nnx.Rngs) -> nnx.Module:
    """Builds the stage-1 network from `config.model`: AlbedoNet, or the U-Net baseline when arch='unet'."""
    c = model_config
    if c.get("arch", "maginet") == "unet":
        return UNet(widths=tuple(c.widths), norm=c.norm, activation=c.activation, dtype=jnp.dtype(c.dtype),
                    remat=c.get("remat", "none"), rngs=rngs)
    return AlbedoNet(widths=tuple(c.widths), blocks_per_level=c.blocks_per_level,
                     bottleneck_blocks=c.bottleneck_blocks, decoder_blocks=c.decoder_blocks, norm=c.norm,
                     activation=c.activation, attention=c.attention, attention_reduction=c.attention_reduction,
                     spatial_kernel=c.spatial_kernel, fusion=c.fusion, dtype=jnp.dtype(c.dtype),
                     remat=c.get("remat", "none"), rngs=rngs)


def size_multiple(model_config) -> int:
    """Image sides the network of `config.model` (AlbedoNet or the U-Net) takes are multiples of this."""
    return level_multiple(len(model_config.widths))
