"""Evaluation metrics beyond MSE/PSNR: masked SSIM (Wang et al. 2004, as scikit-image computes it).

SSIM uses an 11-tap Gaussian window (σ 1.5, scipy's truncate 3.5), population statistics, K1 0.01, K2 0.03,
data range 1 and symmetric ("reflect") padding; the map is averaged over the mask after dropping a 5-pixel
border, which is what `skimage.metrics.structural_similarity(..., gaussian_weights=True,
use_sample_covariance=False, data_range=1)` averages when the mask is all ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_SIGMA, _RADIUS = 1.5, 5  # scipy: int(truncate · σ + 0.5) = 5
_K1, _K2 = 0.01, 0.03


def _gaussian_taps() -> np.ndarray:
    x = np.arange(-_RADIUS, _RADIUS + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / _SIGMA) ** 2)
    return (w / w.sum()).astype(np.float32)


def _blur(x: jax.Array) -> jax.Array:
    """Separable Gaussian filter over H and W of an NHWC batch, symmetric padding, same size."""
    taps = _gaussian_taps()
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (_RADIUS, _RADIUS)
        xp = jnp.pad(x, pad, mode="symmetric")
        n = x.shape[axis]
        x = sum(float(w) * jax.lax.slice_in_dim(xp, i, i + n, axis=axis) for i, w in enumerate(taps))
    return x


def ssim(pred: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Per-example SSIM (B,) of [0, 1] NHWC images, averaged over channels and over the mask's interior."""
    c1, c2 = _K1**2, _K2**2
    mu_x, mu_y = _blur(pred), _blur(target)
    var_x = _blur(pred * pred) - mu_x * mu_x
    var_y = _blur(target * target) - mu_y * mu_y
    cov = _blur(pred * target) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    r = _RADIUS
    s = s[:, r:-r, r:-r]
    w = jnp.ones_like(s[..., :1]) if mask is None else mask[:, r:-r, r:-r]
    w = jnp.broadcast_to(w, s.shape)
    return jnp.sum(s * w, axis=(1, 2, 3)) / jnp.maximum(jnp.sum(w, axis=(1, 2, 3)), 1e-8)
