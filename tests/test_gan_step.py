"""The passes stage's combined G/D gradients (one generator forward) equal separate G and D steps on the same
batch, and its train step applies exactly those gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import smoke
from maginet_jax import gan_losses
from maginet_jax.perceptual.losses import perceptual_nets
from maginet_jax.stages import passes
from maginet_jax.training import sharding


@pytest.fixture(scope="module")
def setup():
    # VGG off: its per-pass wiring is test_stages' test_passes_reconstruction_matches_per_pass_terms
    c = smoke("passes", **{"losses.mse": 3.0, "losses.vgg": 0.0, "model.n_layers_D": 2})
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
    graphdefs, state = passes.init(c, mesh)
    rng = np.random.default_rng(2)
    cond, target, mask = (rng.uniform(size=(2, 24, 24, n)).astype(np.float32)
                          for n in (3, sum(passes.pass_channels(c)), 1))
    mask = (mask > 0.3).astype(np.float32)
    return c, graphdefs, state, (cond, target, mask), perceptual_nets(c.perceptual, vgg=False, lpips=False)


@pytest.mark.parametrize("gan_mode", ["lsgan", "hinge"])
def test_combined_gradients_equal_separate_steps(setup, gan_mode):
    c, graphdefs, state, (cond01, target01, mask), perceptual = setup
    c = c.copy_and_resolve_references()
    c.gan.mode = gan_mode
    grads, scalars = jax.jit(lambda p: passes.gan_gradients(p, cond01, target01, mask, perceptual, config=c,
                                                            graphdefs=graphdefs))(state.params)
    g0, d0 = state.params["generator"], state.params["discriminator"]
    cond, real = cond01 * 2 - 1, target01 * 2 - 1
    G = lambda p: nnx.merge(graphdefs["generator"], p)(cond)
    D = lambda p, x: nnx.merge(graphdefs["discriminator"], p)(jnp.concatenate([cond, x], -1))

    def g_loss(g):  # a plain G step: D fixed at d0; pix2pixHD's weights on the reconstruction terms
        fake = G(g)
        fake_out, real_out = D(d0, fake), D(d0, real)
        recon = passes.reconstruction_terms((fake + 1) / 2, target01, mask, perceptual, c)
        return (gan_losses.generator_loss(fake_out, gan_mode) + gan_losses.feature_matching_loss(real_out, fake_out, 2)
                + 3.0 * recon["mse"])

    def d_loss(d):  # a plain D step on G's output at g0
        return gan_losses.discriminator_loss(D(d, real), D(d, G(g0)), gan_mode)

    g_val, g_want = jax.jit(jax.value_and_grad(g_loss))(g0)
    d_val, d_want = jax.jit(jax.value_and_grad(d_loss))(d0)
    np.testing.assert_allclose(scalars["g_loss"], g_val, rtol=1e-5)
    np.testing.assert_allclose(scalars["d"], d_val, rtol=1e-5)
    for got, want in ((grads["generator"], g_want), (grads["discriminator"], d_want)):
        got, want = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]) for t in (got, want))
        assert np.abs(want).max() > 1e-6
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert set(scalars) == {"g_loss", "d", "g_gan", "g_fm", "mse"}


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_train_step_applies_those_gradients(setup):
    c, graphdefs, state, (cond, target, mask), perceptual = setup
    frozen_nets = {"perceptual": perceptual, "upstream": {}}
    batch = {"albedo": cond, "mask": mask, "image": cond}
    batch.update(zip(c.passes, passes.split_channels(target, passes.pass_channels(c))))
    grads, _ = jax.jit(lambda p: passes.gan_gradients(p, cond, target, mask, perceptual, config=c,
                                                      graphdefs=graphdefs))(state.params)
    got, scalars = jax.jit(lambda s: passes.train_step(s, batch, frozen_nets, config=c, graphdefs=graphdefs))(state)
    lr, b1 = c.optim.learning_rate, c.optim.b1
    for name in ("generator", "discriminator"):
        g = _flat(grads[name])
        # Adam's first moment after one step is (1 - b1)·g: the step used these gradients, for this network
        mu = _flat(got.opt_state[name][0].mu)
        np.testing.assert_allclose(mu, (1 - b1) * g, rtol=0, atol=1e-4 * np.abs(g).max())
        # and its first update is lr·g/(|g| + eps): -lr·sign(g) wherever g is not round-off
        moved, big = _flat(got.params[name]) - _flat(state.params[name]), np.abs(g) > 1e-3 * np.abs(g).max()
        np.testing.assert_allclose(moved[big], -lr * np.sign(g[big]), rtol=1e-3)
    assert int(got.step) == 1 and float(scalars["learning_rate"]) == pytest.approx(lr)
    np.testing.assert_array_equal(got.rng, jax.random.split(state.rng)[0])
