"""The PyTorch twin of pix2pixHD's networks: parity tests (tests/test_pix2pixhd.py) and benchmarks/compare.py.

NVIDIA's pix2pixHD (`models/networks.py`) defines its generators and discriminators as `nn.Sequential`s and
plain attributes; a checkpoint's state-dict keys are nothing but those attribute names and Sequential
indices (`model.1.weight`, `model1_2.0.conv_block.5.bias`, `scale2_layer0.0.weight`, `layer1.4.weight`, ...).
This module rebuilds the same five modules, layer for layer and attribute for attribute, written from a
description of the architecture, so that `state_dict()` of a module here has exactly the keys (and shapes) of
a real pix2pixHD checkpoint of the same configuration. It shares no code with `maginet_jax`.

Only what the parity tests need is re-created: the 'instance' norm (`InstanceNorm2d(affine=False)`, no
parameters and no running statistics), reflect padding, no dropout. Everything is torch NCHW on the CPU;
`randomize_` gives a module reproducible random weights of a useful magnitude and `.double()` turns it into a
float64 oracle for deciding which side of a mismatch is wrong.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def instance_norm(channels: int) -> nn.Module:
    """pix2pixHD's `get_norm_layer('instance')`: InstanceNorm2d without affine parameters or running stats."""
    return nn.InstanceNorm2d(channels, affine=False)


def _downsample() -> nn.AvgPool2d:
    """The 3×3/2 average pool used between pyramid levels; padding is excluded from each window's count."""
    return nn.AvgPool2d(3, stride=2, padding=[1, 1], count_include_pad=False)


class ResnetBlock(nn.Module):
    """x + [pad, conv3, norm, relu, pad, conv3, norm](x); no activation after the add."""

    def __init__(self, dim: int, norm_layer=instance_norm, activation: nn.Module | None = None):
        super().__init__()
        activation = nn.ReLU(True) if activation is None else activation
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),  # 0
            nn.Conv2d(dim, dim, kernel_size=3, padding=0),  # 1
            norm_layer(dim),  # 2
            activation,  # 3
            nn.ReflectionPad2d(1),  # 4
            nn.Conv2d(dim, dim, kernel_size=3, padding=0),  # 5
            norm_layer(dim),  # 6
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def upsampling(cin: int, cout: int, upsample: str, resize_method: str) -> list[nn.Module]:
    """One ×2 upsampling conv, before its norm and ReLU: pix2pixHD's transposed conv, or (maginet-jax's
    `upsample="resize"`) a resize, reflect-pad 1 and 3×3 conv."""
    if upsample == "resize":
        return [nn.Upsample(scale_factor=2, mode=resize_method), nn.ReflectionPad2d(1),
                nn.Conv2d(cin, cout, kernel_size=3, padding=0)]
    return [nn.ConvTranspose2d(cin, cout, kernel_size=3, stride=2, padding=1, output_padding=1)]


class GlobalGenerator(nn.Module):
    """c7s1-ngf, n_downsampling stride-2 convs, n_blocks ResnetBlocks, as many transposed convs, c7s1 + tanh."""

    def __init__(self, input_nc: int, output_nc: int, ngf: int = 64, n_downsampling: int = 3, n_blocks: int = 9,
                 norm_layer=instance_norm, upsample: str = "transpose", resize_method: str = "nearest"):
        super().__init__()
        activation = nn.ReLU(True)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0),
            norm_layer(ngf),
            activation,
        ]
        for i in range(n_downsampling):
            mult = 2 ** i
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1),
                norm_layer(ngf * mult * 2),
                activation,
            ]
        mult = 2 ** n_downsampling
        for _ in range(n_blocks):
            layers.append(ResnetBlock(ngf * mult, norm_layer=norm_layer, activation=activation))
        for i in range(n_downsampling):
            mult = 2 ** (n_downsampling - i)
            layers += upsampling(ngf * mult, ngf * mult // 2, upsample, resize_method)
            layers += [norm_layer(ngf * mult // 2), activation]
        layers += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LocalEnhancer(nn.Module):
    """A GlobalGenerator trunk (without its output head) on the coarsest input, refined by local enhancers."""

    def __init__(self, input_nc: int, output_nc: int, ngf: int = 32, n_downsample_global: int = 3,
                 n_blocks_global: int = 9, n_local_enhancers: int = 1, n_blocks_local: int = 3,
                 norm_layer=instance_norm, upsample: str = "transpose", resize_method: str = "nearest"):
        super().__init__()
        self.n_local_enhancers = n_local_enhancers

        ngf_global = ngf * (2 ** n_local_enhancers)
        trunk = GlobalGenerator(input_nc, output_nc, ngf_global, n_downsample_global, n_blocks_global,
                                norm_layer, upsample, resize_method).model
        self.model = nn.Sequential(*[trunk[i] for i in range(len(trunk) - 3)])  # drop pad, conv, tanh

        for n in range(1, n_local_enhancers + 1):
            ngf_global = ngf * (2 ** (n_local_enhancers - n))
            model_downsample = [
                nn.ReflectionPad2d(3),
                nn.Conv2d(input_nc, ngf_global, kernel_size=7, padding=0),
                norm_layer(ngf_global),
                nn.ReLU(True),
                nn.Conv2d(ngf_global, ngf_global * 2, kernel_size=3, stride=2, padding=1),
                norm_layer(ngf_global * 2),
                nn.ReLU(True),
            ]
            model_upsample = [ResnetBlock(ngf_global * 2, norm_layer=norm_layer) for _ in range(n_blocks_local)]
            model_upsample += upsampling(ngf_global * 2, ngf_global, upsample, resize_method)
            model_upsample += [norm_layer(ngf_global), nn.ReLU(True)]
            if n == n_local_enhancers:
                model_upsample += [
                    nn.ReflectionPad2d(3),
                    nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0),
                    nn.Tanh(),
                ]
            setattr(self, f"model{n}_1", nn.Sequential(*model_downsample))
            setattr(self, f"model{n}_2", nn.Sequential(*model_upsample))

        self.downsample = _downsample()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pyramid = [x]
        for _ in range(self.n_local_enhancers):
            pyramid.append(self.downsample(pyramid[-1]))
        out = self.model(pyramid[-1])
        for n in range(1, self.n_local_enhancers + 1):
            down = getattr(self, f"model{n}_1")
            up = getattr(self, f"model{n}_2")
            out = up(down(pyramid[self.n_local_enhancers - n]) + out)
        return out


def _nlayer_sequence(input_nc: int, ndf: int, n_layers: int, norm_layer, use_sigmoid: bool) -> list[list[nn.Module]]:
    """The PatchGAN's layer groups: conv k4 p2 (stride 2 for the first n_layers, then 1), widths capped at 512."""
    kw, padw = 4, 2
    sequence = [[nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]]
    nf = ndf
    for _ in range(1, n_layers):
        nf_prev, nf = nf, min(nf * 2, 512)
        sequence.append([nn.Conv2d(nf_prev, nf, kernel_size=kw, stride=2, padding=padw), norm_layer(nf),
                         nn.LeakyReLU(0.2, True)])
    nf_prev, nf = nf, min(nf * 2, 512)
    sequence.append([nn.Conv2d(nf_prev, nf, kernel_size=kw, stride=1, padding=padw), norm_layer(nf),
                     nn.LeakyReLU(0.2, True)])
    sequence.append([nn.Conv2d(nf, 1, kernel_size=kw, stride=1, padding=padw)])
    if use_sigmoid:
        sequence.append([nn.Sigmoid()])
    return sequence


class NLayerDiscriminator(nn.Module):
    """PatchGAN. With getIntermFeat the groups are `model0..model{k}` and forward returns the outputs of
    model0..model{n_layers+1} only, so a Sigmoid group is built but never applied (the original's quirk)."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, norm_layer=instance_norm,
                 use_sigmoid: bool = False, getIntermFeat: bool = False):
        super().__init__()
        self.getIntermFeat = getIntermFeat
        self.n_layers = n_layers
        sequence = _nlayer_sequence(input_nc, ndf, n_layers, norm_layer, use_sigmoid)
        if getIntermFeat:
            for n, group in enumerate(sequence):
                setattr(self, f"model{n}", nn.Sequential(*group))
        else:
            self.model = nn.Sequential(*[layer for group in sequence for layer in group])

    def forward(self, x: torch.Tensor):
        if self.getIntermFeat:
            outs = [x]
            for n in range(self.n_layers + 2):
                outs.append(getattr(self, f"model{n}")(outs[-1]))
            return outs[1:]
        return self.model(x)


class MultiscaleDiscriminator(nn.Module):
    """num_D PatchGANs on an average-pool pyramid; the full-resolution input goes to the last-built one
    (`layer{num_D-1}` / `scale{num_D-1}_layer*`). Returns a list over scales, full resolution first, of lists."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, norm_layer=instance_norm,
                 use_sigmoid: bool = False, num_D: int = 3, getIntermFeat: bool = False):
        super().__init__()
        self.num_D = num_D
        self.n_layers = n_layers
        self.getIntermFeat = getIntermFeat
        for i in range(num_D):
            net_d = NLayerDiscriminator(input_nc, ndf, n_layers, norm_layer, use_sigmoid, getIntermFeat)
            if getIntermFeat:
                for j in range(n_layers + 2):
                    setattr(self, f"scale{i}_layer{j}", getattr(net_d, f"model{j}"))
            else:
                setattr(self, f"layer{i}", net_d.model)
        self.downsample = _downsample()

    def _single(self, model, x: torch.Tensor) -> list[torch.Tensor]:
        if self.getIntermFeat:
            outs = [x]
            for layer in model:
                outs.append(layer(outs[-1]))
            return outs[1:]
        return [model(x)]

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        result = []
        current = x
        for i in range(self.num_D):
            s = self.num_D - 1 - i
            if self.getIntermFeat:
                model = [getattr(self, f"scale{s}_layer{j}") for j in range(self.n_layers + 2)]
            else:
                model = getattr(self, f"layer{s}")
            result.append(self._single(model, current))
            if i != self.num_D - 1:
                current = self.downsample(current)
        return result


@torch.no_grad()
def randomize_(module: nn.Module, seed: int, bias_std: float = 0.1) -> nn.Module:
    """Reproducible random weights: conv kernels ~ N(0, 1/fan), biases ~ N(0, bias_std²).

    `fan` is the number of products summed into one output (halved per spatial axis for the stride-2
    transposed convolutions, which see about half their taps at each output), so activations stay of order
    one through the network and an absolute tolerance means about the same everywhere.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            w = m.weight
            if isinstance(m, nn.ConvTranspose2d):
                fan = w.shape[0] * w.shape[2] * w.shape[3] / (m.stride[0] * m.stride[1])
            else:
                fan = w.shape[1] * w.shape[2] * w.shape[3]
            w.copy_(torch.randn(w.shape, generator=gen, dtype=w.dtype) / math.sqrt(fan))
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen, dtype=m.bias.dtype) * bias_std)
    return module
