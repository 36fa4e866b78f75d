"""The PyTorch twin of AlbedoNet and RefinementNet (`maginet_jax.models`), NCHW, layer for layer.

Attribute names follow the NNX modules' paths (`enc.1.0.conv1.norm`, `bottleneck.0.attention.channel.fc1`, ...),
so `transfer.state_dict_from_jax` maps every JAX parameter onto exactly one PyTorch one. Written from the
architecture's description (models/albedo_net.py's docstring), not from the JAX code: what the two share is
checked by tests/test_torch_twin.py, never assumed. Conventions that differ between the frameworks and are
matched here on purpose:

* "SAME" padding: a stride-2 3×3 conv on an even size pads one row and column after the image, none before
  (PyTorch's `padding=1` would pad both sides);
* GroupNorm's epsilon is flax's 1e-6 (PyTorch defaults to 1e-5); "instance" norm is one group per channel,
  with a learnt scale and bias;
* gelu is the tanh approximation (jax.nn.gelu's default);
* bilinear resizing is half-pixel (align_corners=False); every resize in these networks enlarges, where
  jax.image.resize's antialiasing does nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

GROUP_NORM_EPS = 1e-6  # flax.nnx.GroupNorm's default


def group_count(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """AlbedoNet's rule: the most groups (up to 32) that divide the channels and keep 4 channels a group."""
    for groups in range(max(min(max_groups, channels // min_group_size), 1), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels, eps=GROUP_NORM_EPS)
    if kind == "instance":
        return nn.GroupNorm(channels, channels, eps=GROUP_NORM_EPS)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


def make_activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "gelu": lambda: nn.GELU(approximate="tanh"),
            "silu": nn.SiLU}[name]()


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow/XLA "SAME" padding: output size ceil(n / stride), any extra row after the image."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = True):
        symmetric = stride == 1 and kernel % 2 == 1
        super().__init__(cin, cout, kernel, stride, padding=kernel // 2 if symmetric else 0, bias=bias)
        self._symmetric = symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._symmetric:
            pads = []
            for n in (x.shape[3], x.shape[2]):  # F.pad takes the last dimension first
                s, k = self.stride[0], self.kernel_size[0]
                total = max((math.ceil(n / s) - 1) * s + k - n, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


class ConvNormAct(nn.Module):
    def __init__(self, cin: int, cout: int, *, kernel: int = 3, stride: int = 1, norm: str = "group",
                 act: str | None = "relu"):
        super().__init__()
        self.conv = SameConv(cin, cout, kernel, stride, bias=norm == "none")
        self.norm = make_norm(norm, cout)
        self.act = make_activation(act) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1, self.fc2 = nn.Linear(channels, hidden), nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mlp = lambda d: self.fc2(F.relu(self.fc1(d)))
        # As attention.peak: each max at its first argmax (over W, then H), which alone gets the gradient.
        logits = mlp(x.mean(dim=(2, 3))) + mlp(x.max(dim=3).values.max(dim=2).values)
        return x * torch.sigmoid(logits)[:, :, None, None]


class SpatialGate(nn.Module):
    def __init__(self, kernel: int):
        super().__init__()
        self.conv = SameConv(2, 1, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.max(dim=1, keepdim=True).values], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class Attention(nn.Module):
    """Channel gate, then spatial gate (CBAM); `kind` drops either."""

    def __init__(self, channels: int, kind: str, reduction: int, spatial_kernel: int):
        super().__init__()
        self.channel = ChannelGate(channels, reduction) if kind in ("cbam", "channel") else None
        self.spatial = SpatialGate(spatial_kernel) if kind in ("cbam", "spatial") else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel is not None:
            x = self.channel(x)
        if self.spatial is not None:
            x = self.spatial(x)
        return x


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, *, norm: str, act: str, attention: nn.Module | None = None):
        super().__init__()
        self.conv1 = ConvNormAct(cin, cout, norm=norm, act=act)
        self.conv2 = ConvNormAct(cout, cout, norm=norm, act=None)
        self.attention = attention
        self.skip = SameConv(cin, cout, 1, bias=False) if cin != cout else None
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self.conv1(x))
        if self.attention is not None:
            h = self.attention(h)
        return self.act(h + (self.skip(x) if self.skip is not None else x))


class AdaptiveFusion(nn.Module):
    def __init__(self, width: int, num_inputs: int, kind: str):
        super().__init__()
        self.kind = kind
        self.proj = (SameConv(width * num_inputs, num_inputs if kind == "adaptive" else width, 1)
                     if kind != "sum" else None)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if self.kind == "sum":
            return sum(inputs)
        if self.kind == "concat":
            return self.proj(torch.cat(inputs, dim=1))
        # proj over the concatenation, as one 1×1 convolution per input summed: what AdaptiveFusion.weights does.
        width = inputs[0].shape[1]
        logits = sum(F.conv2d(x, self.proj.weight[:, j * width:(j + 1) * width]) for j, x in enumerate(inputs))
        w = torch.softmax((logits + self.proj.bias[:, None, None]).float(), dim=1).to(inputs[0].dtype)
        return sum(w[:, j:j + 1] * x for j, x in enumerate(inputs))


def resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class AlbedoNet(nn.Module):
    """Lit image in [0, 1] (B,C,H,W) → (albedo in [0, 1], side albedos coarse → fine), as models/albedo_net.py."""

    def __init__(self, *, in_channels: int = 3, out_channels: int = 3, widths=(64, 128, 256, 512, 512),
                 blocks_per_level: int = 1, bottleneck_blocks: int = 2, decoder_blocks: int = 1, norm: str = "group",
                 activation: str = "relu", attention: str = "cbam", attention_reduction: int = 16,
                 spatial_kernel: int = 7, fusion: str = "adaptive"):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        self.widths = widths
        kw = dict(norm=norm, act=activation)
        self.stem = ConvNormAct(in_channels, widths[0], **kw)
        self.down = nn.ModuleList([ConvNormAct(widths[i - 1], widths[i], stride=2, **kw) for i in range(1, len(widths))])
        self.enc = nn.ModuleList([nn.ModuleList([ResidualBlock(w, w, **kw) for _ in range(blocks_per_level)])
                                  for w in widths])
        c = widths[-1]
        self.bottleneck = nn.ModuleList([
            ResidualBlock(c, c, attention=Attention(c, attention, attention_reduction, spatial_kernel), **kw)
            for _ in range(bottleneck_blocks)])
        levels = range(len(widths) - 1)
        self.up = nn.ModuleList([ConvNormAct(widths[i + 1], widths[i], **kw) for i in levels])
        self.ctx = nn.ModuleList([SameConv(c, widths[i], 1) for i in levels])
        self.fuse = nn.ModuleList([AdaptiveFusion(widths[i], 3, fusion) for i in levels])
        self.dec = nn.ModuleList([nn.ModuleList([ResidualBlock(widths[i], widths[i], **kw)
                                                 for _ in range(decoder_blocks)]) for i in levels])
        self.heads = nn.ModuleList([SameConv(widths[i], out_channels, 1) for i in levels])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.stem(x * 2.0 - 1.0)
        skips = []
        for i, blocks in enumerate(self.enc):
            if i > 0:
                h = self.down[i - 1](h)
            for block in blocks:
                h = block(h)
            skips.append(h)
        for block in self.bottleneck:
            h = block(h)
        context, sides = h, []
        for i in reversed(range(len(self.widths) - 1)):
            size = skips[i].shape[2:]
            h = self.fuse[i]([self.up[i](resize(h, size)), skips[i], resize(self.ctx[i](context), size)])
            for block in self.dec[i]:
                h = block(h)
            out = torch.sigmoid(self.heads[i](h).float())
            if i > 0:
                sides.append(out)
        return out, sides


class RefinementNet(nn.Module):
    """(albedo (B,3,h,w), image (B,C,H,W)) → clip(up + conv3(act(conv2(act(conv1(up ⊕ image))))), 0, 1)."""

    def __init__(self, *, widths=(32, 32), image_channels: int = 3, albedo_channels: int = 3,
                 activation: str = "relu"):
        super().__init__()
        self.conv1 = SameConv(albedo_channels + image_channels, widths[0], 3)
        self.conv2 = SameConv(widths[0], widths[1], 3)
        self.conv3 = SameConv(widths[1], albedo_channels, 3)
        self.act = make_activation(activation)

    def forward(self, albedo: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        up = resize(albedo, image.shape[2:])
        h = self.act(self.conv2(self.act(self.conv1(torch.cat([up, image], dim=1)))))
        return torch.clamp(up + self.conv3(h).float(), 0.0, 1.0)


def albedo_net(model_config) -> AlbedoNet:
    """AlbedoNet from `config.model` (configs/albedo.py; arch must be 'maginet')."""
    c = model_config
    if c.get("arch", "maginet") != "maginet":
        raise ValueError(f"the PyTorch twin has AlbedoNet only, not model.arch={c.arch!r}")
    return AlbedoNet(widths=tuple(c.widths), blocks_per_level=c.blocks_per_level,
                     bottleneck_blocks=c.bottleneck_blocks, decoder_blocks=c.decoder_blocks, norm=c.norm,
                     activation=c.activation, attention=c.attention, attention_reduction=c.attention_reduction,
                     spatial_kernel=c.spatial_kernel, fusion=c.fusion)


def refinement_net(model_config) -> RefinementNet:
    """RefinementNet from `config.model` (configs/refine.py)."""
    return RefinementNet(widths=tuple(model_config.widths), activation=model_config.activation)
