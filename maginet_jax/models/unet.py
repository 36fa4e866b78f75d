"""The plain U-Net baseline for the ablation: no attention, no adaptive fusion, no deep supervision.

    level i: two 3×3 conv-norm-act at 1/2^i of the input (stride-2 conv between levels)
    decoder: bilinear ×2, concatenate the encoder skip, two 3×3 conv-norm-act; 1×1 head, sigmoid

Same call signature as AlbedoNet (`(albedo, side outputs)`, the latter empty) so it trains in stage 1 as is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from maginet_jax.models.layers import Conv, ConvNormAct, apply, block, check_level_size, encode, resize_to


class UNet(nnx.Module):
    """(B,H,W,3) lit image in [0,1] → ((B,H,W,3) albedo in [0,1], [])."""

    def __init__(self, *, widths: tuple[int, ...], norm: str = "group", activation: str = "relu",
                 in_channels: int = 3, out_channels: int = 3, dtype=jnp.float32, remat: str = "none",
                 rngs: nnx.Rngs):
        if len(widths) < 2:
            raise ValueError(f"UNet needs at least 2 levels, got widths={tuple(widths)}")
        self.widths, self.remat = tuple(int(w) for w in widths), remat
        kw = dict(norm=norm, act=activation, dtype=dtype, rngs=rngs)
        ws = self.widths
        self.enc = nnx.List([nnx.List([ConvNormAct(in_channels if i == 0 else ws[i], ws[i], **kw),
                                       ConvNormAct(ws[i], ws[i], **kw)]) for i in range(len(ws))])
        self.down = nnx.List([ConvNormAct(ws[i - 1], ws[i], stride=2, **kw) for i in range(1, len(ws))])
        self.dec = nnx.List([nnx.List([ConvNormAct(ws[i + 1] + ws[i], ws[i], **kw), ConvNormAct(ws[i], ws[i], **kw)])
                             for i in range(len(ws) - 1)])
        self.head = Conv(ws[0], out_channels, (1, 1), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        check_level_size("UNet", len(self.widths), x.shape[1], x.shape[2])
        h, skips = encode(x * 2.0 - 1.0, self.enc, self.down, self.remat)
        for i in reversed(range(len(self.widths) - 1)):
            h = jnp.concatenate([resize_to(h, *skips[i].shape[1:3]), skips[i]], axis=-1)
            for conv in self.dec[i]:
                h = block(apply, conv, h, self.remat)
        return nnx.sigmoid(self.head(h).astype(jnp.float32)), []
