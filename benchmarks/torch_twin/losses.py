"""The PyTorch twin of the image and GAN losses (`maginet_jax.losses`, `maginet_jax.gan_losses`), NCHW.

Masks are (B, 1, H, W) with 1 inside the face; every masked loss is a mask-weighted sum over the whole batch
divided by the mask's sum (+1e-8), as in the JAX code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8
SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask.expand_as(pred)
    return (w * (pred - target) ** 2).sum() / (w.sum() + EPS)


def sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel Sobel d/dx and d/dy, 'valid' (no padding)."""
    c = x.shape[1]
    kx = SOBEL_X.to(x.device, x.dtype)
    weight = lambda k: k.expand(c, 1, 3, 3).contiguous()
    return F.conv2d(x, weight(kx), groups=c), F.conv2d(x, weight(kx.T), groups=c)


def edge_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked L1 between Sobel gradients; a texel counts when its whole 3×3 neighbourhood is in the mask."""
    inner = -F.max_pool2d(-mask, 3, stride=1)
    (px, py), (tx, ty) = sobel(pred), sobel(target)
    w = inner.expand_as(px)
    return (w * ((px - tx).abs() + (py - ty).abs())).sum() / (w.sum() + EPS)


def area_downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    return x if factor == 1 else F.avg_pool2d(x, factor)


def masked_downsample(target: torch.Tensor, mask: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    if factor == 1:
        return target, mask
    weight = area_downsample(mask, factor)
    return area_downsample(target * mask, factor) / weight.clamp_min(EPS), weight


def deep_supervision_loss(sides: list[torch.Tensor], target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if not sides:
        return target.new_zeros(())
    terms = []
    for side in sides:
        terms.append(masked_mse(side, *masked_downsample(target, mask, target.shape[2] // side.shape[2])))
    return sum(terms) / len(terms)


def discriminator_loss(real_outputs, fake_outputs, mode: str) -> torch.Tensor:
    """0.5 · (Σ_scales loss(real → 1) + Σ_scales loss(fake → 0)), the last output of each scale being logits."""
    if mode == "lsgan":
        real = sum(((s[-1] - 1.0) ** 2).mean() for s in real_outputs)
        fake = sum((s[-1] ** 2).mean() for s in fake_outputs)
    else:
        real = sum(F.relu(1.0 - s[-1]).mean() for s in real_outputs)
        fake = sum(F.relu(1.0 + s[-1]).mean() for s in fake_outputs)
    return 0.5 * (real + fake)


def generator_loss(fake_outputs, mode: str) -> torch.Tensor:
    if mode == "lsgan":
        return sum(((s[-1] - 1.0) ** 2).mean() for s in fake_outputs)
    return -sum(s[-1].mean() for s in fake_outputs)


def feature_matching_loss(real_outputs, fake_outputs, n_layers: int, weight: float) -> torch.Tensor:
    """pix2pixHD's: Σ over scales and intermediate layers of weight · (1/num_D) · (4/(n_layers+1)) · L1."""
    scale = weight / len(fake_outputs) * 4.0 / (n_layers + 1)
    return sum(scale * (f - r.detach()).abs().mean()
               for rs, fs in zip(real_outputs, fake_outputs) for r, f in zip(rs[:-1], fs[:-1]))
