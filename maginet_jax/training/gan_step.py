"""One conditional-GAN train step (Pix2PixHD): the G and the D update from a single generator forward.

    fake            = G(condition)
    D loss          = 0.5 · (GAN(D(cond ⊕ real) → real) + GAN(D(cond ⊕ stop_gradient(fake)) → fake))
    G loss          = GAN(D(cond ⊕ fake) → real) + feature matching(D(cond ⊕ real), D(cond ⊕ fake)) + recon(fake)

The generator runs once: its VJP carries the G loss's gradient with respect to `fake` back to G's parameters,
while D's gradient comes from the stopped fake. D's parameters are those from the start of the step for both
losses, exactly as separate G and D steps on the same batch would compute them.
"""

from __future__ import annotations

from typing import Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from maginet_jax import gan_losses
from maginet_jax.training import sharding
from maginet_jax.training.state import abstract_model


@flax.struct.dataclass
class GANState:
    step: jax.Array
    g_params: nnx.State
    d_params: nnx.State
    g_opt_state: optax.OptState
    d_opt_state: optax.OptState
    rng: jax.Array


def gan_train_step(state: GANState, batch: dict, *, g_graphdef, d_graphdef, g_tx: optax.GradientTransformation,
                   d_tx: optax.GradientTransformation, recon_loss: Callable, gan_mode: str = "lsgan",
                   fm_weight: float = 10.0, n_layers: int = 3) -> tuple[GANState, dict]:
    """`batch` holds "condition" and "target"; `recon_loss(fake, batch, rng) -> (scalar, {name: value})`.

    Returns the new state and the unweighted losses (g_gan, g_fm, d, and the recon terms).
    """
    rng, step_rng = jax.random.split(state.rng)
    cond, real = batch["condition"], batch["target"]
    discriminate = lambda params, x: nnx.merge(d_graphdef, params)(jnp.concatenate([cond, x], axis=-1))

    fake, g_vjp = jax.vjp(lambda p: nnx.merge(g_graphdef, p)(cond), state.g_params)

    def d_loss_fn(d_params):
        real_out = discriminate(d_params, real)
        loss = gan_losses.discriminator_loss(real_out, discriminate(d_params, jax.lax.stop_gradient(fake)), gan_mode)
        return loss, real_out

    (d_loss, real_out), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(state.d_params)
    real_out = jax.lax.stop_gradient(real_out)

    def g_loss_fn(fake):
        fake_out = discriminate(state.d_params, fake)
        terms = {"g_gan": gan_losses.generator_loss(fake_out, gan_mode)}
        if fm_weight > 0:
            terms["g_fm"] = gan_losses.feature_matching_loss(real_out, fake_out, n_layers, fm_weight)
        recon, recon_terms = recon_loss(fake, batch, step_rng)
        return sum(terms.values()) + recon, {**terms, **recon_terms}

    (g_loss, terms), d_fake = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
    (g_grads,) = g_vjp(d_fake)

    g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, state.g_params)
    d_updates, d_opt_state = d_tx.update(d_grads, state.d_opt_state, state.d_params)
    new_state = state.replace(step=state.step + 1, g_params=optax.apply_updates(state.g_params, g_updates),
                              d_params=optax.apply_updates(state.d_params, d_updates), g_opt_state=g_opt_state,
                              d_opt_state=d_opt_state, rng=rng)
    return new_state, {"g_loss": g_loss, "d": d_loss, **terms}


def init_gan_state(build_generator: Callable[[nnx.Rngs], nnx.Module],
                   build_discriminator: Callable[[nnx.Rngs], nnx.Module], g_tx: optax.GradientTransformation,
                   d_tx: optax.GradientTransformation, seed: int, mesh: Mesh):
    """Builds G and D on-device, replicated over `mesh`; returns (g_graphdef, d_graphdef, GANState)."""
    g_key, d_key, step_key = jax.random.split(jax.random.PRNGKey(seed), 3)

    def init(g_key, d_key, step_key):
        _, g = nnx.split(build_generator(nnx.Rngs(params=g_key)), nnx.Param)
        _, d = nnx.split(build_discriminator(nnx.Rngs(params=d_key)), nnx.Param)
        return GANState(step=jnp.zeros((), jnp.int32), g_params=g, d_params=d, g_opt_state=g_tx.init(g),
                        d_opt_state=d_tx.init(d), rng=step_key)

    (g_graphdef, _), (d_graphdef, _) = abstract_model(build_generator), abstract_model(build_discriminator)
    state = jax.jit(init, out_shardings=sharding.replicated(mesh))(g_key, d_key, step_key)
    return g_graphdef, d_graphdef, state
