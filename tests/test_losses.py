"""Losses: hand-computed values, masking, invariances."""

import jax
import jax.numpy as jnp
import numpy as np

from maginet_jax import losses


def _rand(seed, shape):
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def test_masked_mse_hand_value_and_mask():
    pred = jnp.zeros((1, 2, 2, 1))
    target = jnp.array([1.0, 2.0, 3.0, 100.0]).reshape(1, 2, 2, 1)
    mask = jnp.array([1.0, 1.0, 1.0, 0.0]).reshape(1, 2, 2, 1)
    np.testing.assert_allclose(losses.masked_mse(pred, target, mask), (1 + 4 + 9) / 3, rtol=1e-6)


def test_per_example_mse_and_psnr():
    pred = jnp.zeros((2, 4, 4, 3))
    target = jnp.stack([jnp.full((4, 4, 3), 0.1), jnp.full((4, 4, 3), 0.2)])
    mse = losses.per_example_masked_mse(pred, target, jnp.ones((2, 4, 4, 1)))
    np.testing.assert_allclose(mse, [0.01, 0.04], rtol=1e-5)
    np.testing.assert_allclose(losses.psnr(mse), [20.0, 10 * np.log10(25)], rtol=1e-5)


def test_edge_loss_zero_for_identical_and_for_constant_offset():
    x, mask = _rand(0, (2, 16, 16, 3)), jnp.ones((2, 16, 16, 1))
    assert float(losses.edge_loss(x, x, mask)) == 0.0
    # Sobel ignores a constant offset: the edge term cares about structure, not level.
    np.testing.assert_allclose(losses.edge_loss(x + 0.3, x, mask), 0.0, atol=1e-6)
    assert float(losses.edge_loss(_rand(1, x.shape), x, mask)) > 0.01


def test_sobel_of_a_ramp():
    ramp = jnp.tile(jnp.arange(8.0)[None, None, :, None], (1, 8, 1, 1))
    gx, gy = losses.sobel(ramp)
    np.testing.assert_allclose(gx, 1.0, rtol=1e-6)  # kernel normalised so a unit ramp gives slope 1
    np.testing.assert_allclose(gy, 0.0, atol=1e-6)


def test_sobel_is_the_sobel_kernel():
    """Equal, values and gradients, to the 3×3 Sobel kernels (/8) as a per-channel convolution, on 3 channels."""
    kx = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], np.float32) / 8.0

    def reference(x):
        tile = lambda k: jnp.tile(jnp.asarray(k)[:, :, None, None], (1, 1, 1, x.shape[-1]))
        conv = lambda k: jax.lax.conv_general_dilated(x, tile(k), (1, 1), "VALID", feature_group_count=x.shape[-1],
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return conv(kx), conv(kx.T)

    x, t = _rand(4, (2, 9, 12, 3)), _rand(5, (2, 9, 12, 3))
    for got, want in zip(losses.sobel(x), reference(x)):
        assert got.shape == (2, 7, 10, 3)
        np.testing.assert_allclose(got, want, atol=1e-6)
    loss = lambda f: lambda x: sum(jnp.sum(jnp.abs(g - h) * jnp.arange(10.0)[:, None]) for g, h in zip(f(x), f(t)))
    np.testing.assert_allclose(jax.grad(loss(losses.sobel))(x), jax.grad(loss(reference))(x), atol=1e-5)


def test_edge_loss_ignores_mask_boundary_and_outside():
    x = _rand(2, (1, 16, 16, 1))
    mask = jnp.zeros((1, 16, 16, 1)).at[:, 4:12, 4:12].set(1.0)
    y = jnp.where(mask > 0, x, 5.0 * _rand(3, x.shape))  # differs only outside the mask
    assert float(losses.edge_loss(y, x * mask, mask)) == 0.0


def test_a_right_side_output_costs_nothing_at_the_mask_edge():
    """Outside the mask the target is 0. Area-averaged with it, a cell half inside the mask wanted half the albedo:
    a side output equal to the albedo of its valid pixels paid a loss (4e-4 at 1/2 size on a synthetic texture)."""
    albedo = 0.2 + 0.6 * _rand(5, (1, 8, 8, 3))
    mask = jnp.zeros((1, 8, 8, 1)).at[:, 1:7, 3:8].set(1.0)  # cells the mask's edge cuts, at 1/2 and 1/4
    target = albedo * mask
    right = [area_downsample_masked(albedo, mask, f) for f in (4, 2)]
    assert float(losses.deep_supervision_loss(right, target, mask)) < 1e-12
    _, m = losses.masked_downsample(target, mask, 2)
    np.testing.assert_allclose(m[0, :, :, 0], losses.area_downsample(mask, 2)[0, :, :, 0])
    assert float(losses.deep_supervision_loss([losses.area_downsample(target, 2)], target, mask)) > 1e-3


def area_downsample_masked(x, mask, factor):
    """The mean of x over each cell's pixels in the mask (0 where it has none), computed pixel by pixel."""
    x, mask = np.asarray(x), np.asarray(mask)
    b, h, w, c = x.shape
    out = np.zeros((b, h // factor, w // factor, c))
    for i in range(h // factor):
        for j in range(w // factor):
            m = mask[:, i * factor:(i + 1) * factor, j * factor:(j + 1) * factor]
            if m.sum():
                out[:, i, j] = (x[:, i * factor:(i + 1) * factor, j * factor:(j + 1) * factor] * m).sum((1, 2)) / m.sum()
    return jnp.asarray(out, jnp.float32)


def test_deep_supervision_uses_area_downsampled_targets():
    target = _rand(4, (1, 8, 8, 3))
    mask = jnp.ones((1, 8, 8, 1))
    sides = [losses.area_downsample(target, 4), losses.area_downsample(target, 2)]
    np.testing.assert_allclose(losses.deep_supervision_loss(sides, target, mask), 0.0, atol=1e-12)
    off = [s + 0.1 for s in sides]
    np.testing.assert_allclose(losses.deep_supervision_loss(off, target, mask), 0.01, rtol=1e-4)
    assert float(losses.deep_supervision_loss([], target, mask)) == 0.0


def test_area_downsample_is_block_mean():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_allclose(losses.area_downsample(x, 2)[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])
