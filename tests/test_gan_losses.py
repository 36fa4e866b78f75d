"""GAN and feature-matching losses against hand-computed values; RefinementNet basics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maginet_jax import gan_losses as gl
from maginet_jax.models.refinement_net import RefinementNet


def _outs(*scales):
    return [[jnp.asarray(layer, jnp.float32) for layer in s] for s in scales]


REAL = _outs([[1.0, 2.0], [0.5, 1.5]], [[3.0], [0.0, 2.0]])  # 2 scales; last entry = patch logits
FAKE = _outs([[0.0, 1.0], [1.0, -1.0]], [[1.0], [2.0, 4.0]])


def test_lsgan_by_hand():
    # real logits (0.5, 1.5) → ((−.5)² + .5²)/2 = .25 ; (0, 2) → (1 + 1)/2 = 1 ; fake (1, −1) → 1 ; (2, 4) → 10
    np.testing.assert_allclose(gl.discriminator_loss(REAL, FAKE, "lsgan"), 0.5 * ((0.25 + 1.0) + (1.0 + 10.0)))
    # G: fake → 1: (0 + 4)/2 = 2 ; (1 + 9)/2 = 5
    np.testing.assert_allclose(gl.generator_loss(FAKE, "lsgan"), 7.0)


def test_hinge_by_hand():
    # D real: relu(1 − (.5, 1.5)) → (.5, 0) → .25 ; relu(1 − (0, 2)) → (1, 0) → .5
    # D fake: relu(1 + (1, −1)) → (2, 0) → 1 ; relu(1 + (2, 4)) → (3, 5) → 4
    np.testing.assert_allclose(gl.discriminator_loss(REAL, FAKE, "hinge"), 0.5 * (0.75 + 5.0))
    np.testing.assert_allclose(gl.generator_loss(FAKE, "hinge"), -(0.0 + 3.0))


def test_feature_matching_by_hand():
    # Only non-final layers: scale 0 |[0,1] − [1,2]| = 1 ; scale 1 |[1] − [3]| = 2.
    # weight 10 · (1/num_D = 1/2) · (4/(n_layers+1) = 4/2 = 2) = 10 per unit of L1.
    np.testing.assert_allclose(gl.feature_matching_loss(REAL, FAKE, n_layers=1, weight=10.0), 10.0 * (1.0 + 2.0))


def test_feature_matching_holds_real_features_fixed():
    g_real, g_fake = jax.grad(lambda r, f: gl.feature_matching_loss(r, f, n_layers=1), argnums=(0, 1))(REAL, FAKE)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_real))
    assert any(float(jnp.abs(x).max()) > 0.0 for x in jax.tree.leaves(g_fake))


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown GAN mode"):
        gl.generator_loss(FAKE, "wgan")


def test_refinement_net_starts_as_upsampling_and_keeps_range():
    net = RefinementNet(widths=(8, 8), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    albedo = rng.uniform(size=(2, 16, 12, 3)).astype(np.float32)
    image = rng.uniform(size=(2, 32, 24, 3)).astype(np.float32)
    out = net(albedo, image)
    assert out.shape == (2, 32, 24, 3)
    np.testing.assert_allclose(out, jax.image.resize(albedo, (2, 32, 24, 3), "bilinear"), atol=1e-6)
    net.conv3.kernel[...] = rng.standard_normal(net.conv3.kernel.shape).astype(np.float32)
    out = net(albedo, image)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(jnp.abs(out - jax.image.resize(albedo, out.shape, "bilinear")).max()) > 0.01
