"""The combined G/D step equals separate G and D steps on the same batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from maginet_jax import gan_losses
from maginet_jax.models.pix2pixhd import GlobalGenerator, MultiscaleDiscriminator
from maginet_jax.training.gan_step import GANState, gan_train_step

LR, N_LAYERS = 0.05, 2


def _recon(fake, batch, rng):
    l1 = jnp.mean(jnp.abs(fake - batch["target"]))
    return 10.0 * l1, {"l1": l1}


@pytest.fixture(scope="module")
def setup():
    g_graphdef, g_params = nnx.split(GlobalGenerator(3, 2, ngf=4, n_downsampling=1, n_blocks=1, rngs=nnx.Rngs(0)))
    d_graphdef, d_params = nnx.split(MultiscaleDiscriminator(5, ndf=4, n_layers=N_LAYERS, num_D=2,
                                                             getIntermFeat=True, rngs=nnx.Rngs(1)))
    keys = jax.random.split(jax.random.PRNGKey(2), 2)
    batch = {"condition": jax.random.uniform(keys[0], (2, 24, 24, 3)) * 2 - 1,
             "target": jax.random.uniform(keys[1], (2, 24, 24, 2)) * 2 - 1}
    return g_graphdef, g_params, d_graphdef, d_params, batch


@pytest.mark.parametrize("gan_mode", ["lsgan", "hinge"])
def test_combined_step_equals_separate_steps(setup, gan_mode):
    g_graphdef, g0, d_graphdef, d0, batch = setup
    tx = optax.sgd(LR)
    state = GANState(step=jnp.zeros((), jnp.int32), g_params=g0, d_params=d0, g_opt_state=tx.init(g0),
                     d_opt_state=tx.init(d0), rng=jax.random.PRNGKey(0))
    step = jax.jit(lambda s, b: gan_train_step(s, b, g_graphdef=g_graphdef, d_graphdef=d_graphdef, g_tx=tx,
                                               d_tx=tx, recon_loss=_recon, gan_mode=gan_mode, n_layers=N_LAYERS))
    new, losses = step(state, batch)

    cond, real = batch["condition"], batch["target"]
    G = lambda p: nnx.merge(g_graphdef, p)(cond)
    D = lambda p, x: nnx.merge(d_graphdef, p)(jnp.concatenate([cond, x], -1))

    def g_loss(g):  # a plain G step: D frozen at d0
        fake = G(g)
        fake_out, real_out = D(d0, fake), D(d0, real)
        return (gan_losses.generator_loss(fake_out, gan_mode)
                + gan_losses.feature_matching_loss(real_out, fake_out, N_LAYERS) + _recon(fake, batch, None)[0])

    def d_loss(d):  # a plain D step on G's output at g0
        return gan_losses.discriminator_loss(D(d, real), D(d, G(g0)), gan_mode)

    g_val, g_grads = jax.jit(jax.value_and_grad(g_loss))(g0)
    d_val, d_grads = jax.jit(jax.value_and_grad(d_loss))(d0)
    np.testing.assert_allclose(losses["g_loss"], g_val, rtol=1e-5)
    np.testing.assert_allclose(losses["d"], d_val, rtol=1e-5)
    for new_params, old, grads in ((new.g_params, g0, g_grads), (new.d_params, d0, d_grads)):
        got = np.concatenate([(a - b).ravel() for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(old))])
        want = np.concatenate([(-LR * g).ravel() for g in jax.tree.leaves(grads)])
        assert np.abs(want).max() > 1e-6
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert int(new.step) == 1 and set(losses) == {"g_loss", "d", "g_gan", "g_fm", "l1"}
