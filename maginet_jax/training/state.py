"""The train state of every stage, its sharded initialisation, and the optimizer that updates it.

A stage trains one network ({"model"}) or two ({"generator", "discriminator"}); the state holds each one's
parameters and optimizer state by name. Graph definitions stay outside the state (the steps receive them as
a static argument), so the state is a pytree of arrays that jit can donate and orbax can save.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from maginet_jax.training import sharding

Build = Callable[[nnx.Rngs], nnx.Module]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict[str, nnx.State]  # network name → its nnx.Param state
    opt_state: dict[str, optax.OptState]
    rng: jax.Array  # raw uint32 key: split every step, so stochastic loss terms resume exactly

    def apply_gradients(self, grads: dict[str, nnx.State], txs: dict[str, optax.GradientTransformation],
                        rng: jax.Array) -> TrainState:
        """One optimizer update of every network, the step counted and the RNG advanced to `rng`."""
        params, opt_state = {}, {}
        for name, tx in txs.items():
            updates, opt_state[name] = tx.update(grads[name], self.opt_state[name], self.params[name])
            params[name] = optax.apply_updates(self.params[name], updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, rng=rng)


def abstract_params(build: Build) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, parameter shapes) of the module `build` makes, without allocating it.

    Every variable must be an `nnx.Param`: `nnx.split` fails loudly if a model adds other state (batch
    statistics), which would then need a place in TrainState.
    """
    return nnx.split(nnx.eval_shape(lambda: build(nnx.Rngs(params=0))), nnx.Param)


def _initialiser(networks: dict[str, Build], txs: dict[str, optax.GradientTransformation]):
    """keys → TrainState: network i from key i, the step RNG from the last key."""

    def init(keys):
        params = {name: nnx.split(build(nnx.Rngs(params=key)), nnx.Param)[1]
                  for (name, build), key in zip(networks.items(), keys)}
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state={name: txs[name].init(p) for name, p in params.items()}, rng=keys[-1])

    return init


def abstract_state(networks: dict[str, Build], txs: dict[str, optax.GradientTransformation], mesh: Mesh,
                   sharding_config) -> tuple[dict[str, nnx.GraphDef], TrainState]:
    """(graphdefs, the state as ShapeDtypeStructs carrying the shardings `sharding_config` gives them on
    `mesh`), without allocating anything: what `init_state` makes, and what a dry run compiles against."""
    graphdefs, params = {}, {}
    for name, build in networks.items():  # each built once, abstractly: building is most of this function's time
        graphdefs[name], params[name] = abstract_params(build)
    shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state={name: jax.eval_shape(txs[name].init, p) for name, p in params.items()},
                        rng=jax.eval_shape(jax.random.PRNGKey, 0))
    shardings = sharding.state_shardings(shapes, mesh, sharding_config.rules, sharding_config.fsdp_min_size)
    return graphdefs, jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def init_state(networks: dict[str, Build], txs: dict[str, optax.GradientTransformation], seed: int,
               mesh: Mesh, sharding_config) -> tuple[dict[str, nnx.GraphDef], TrainState]:
    """Builds the networks on-device, laid out over `mesh` as `abstract_state` says; returns (graphdefs, state).

    Network i is initialised from key i of `split(PRNGKey(seed), n + 1)`, the step RNG from the last key; the
    values do not depend on the layout (jax's partitionable threefry).
    """
    graphdefs, like = abstract_state(networks, txs, mesh, sharding_config)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(networks) + 1)
    # A program run once: XLA's optimisation level 1 compiles it 2.5-7x faster on a CPU than the default (the
    # unrolled RNG of every parameter), with bit-identical parameters (checked on the demo and smoke models of
    # configs/: AlbedoNet, the U-Net, RefinementNet, global and local pix2pixHD G and D).
    init = jax.jit(_initialiser(networks, txs), out_shardings=jax.tree.map(lambda x: x.sharding, like),
                   compiler_options={"xla_backend_optimization_level": 1})
    return graphdefs, init(keys)


def state_around(params: dict[str, nnx.State], txs: dict[str, optax.GradientTransformation], seed: int,
                 like: TrainState) -> TrainState:
    """The step-0 state of networks whose parameters all come from elsewhere (restored runs): fresh optimizer
    states, laid out as `like` (from `abstract_state`) says, and the step RNG `init_state` would give.

    Nothing initialises parameters only to overwrite them: on a CPU that program (the unrolled RNG of every
    parameter) takes longer to compile than a train step."""
    keys = jax.random.split(jax.random.PRNGKey(seed), len(params) + 1)
    init_opt = jax.jit(lambda p: {name: tx.init(p[name]) for name, tx in txs.items()},
                       out_shardings=jax.tree.map(lambda x: x.sharding, like.opt_state))
    return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), like.step.sharding), params=params,
                      opt_state=init_opt(params), rng=jax.device_put(keys[-1], like.rng.sharding))


SCHEDULES = ("cosine", "linear", "constant", "constant_then_linear")


def make_schedule(optim_config, num_train_steps: int) -> optax.Schedule:
    """Linear warm-up to `learning_rate`, then cosine or linear decay to `end_learning_rate_factor`×, or flat.

    `constant_then_linear` is pix2pixHD's: flat, then a linear decay over the last `decay_steps` steps
    (validated by `train.validate`).
    """
    c = optim_config
    peak, warmup = c.learning_rate, min(c.warmup_steps, num_train_steps)
    end = peak * c.end_learning_rate_factor
    decay_steps = max(num_train_steps - warmup, 1)
    after = {
        "cosine": lambda: optax.cosine_decay_schedule(peak, decay_steps, alpha=c.end_learning_rate_factor),
        "linear": lambda: optax.linear_schedule(peak, end, decay_steps),
        "constant": lambda: optax.constant_schedule(peak),
        "constant_then_linear": lambda: optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, end, max(c.decay_steps, 1))],
            [decay_steps - c.decay_steps]),
    }[c.schedule]()
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(optim_config, num_train_steps: int, *, fixed_labels=None,
                   fixed_steps: int = 0) -> optax.GradientTransformation:
    """Adam (AdamW when weight_decay > 0) on the schedule, after optional global-norm clipping.

    `fixed_labels` (a pytree or function of the params giving "fixed" / "trained" per leaf) holds the
    "fixed" leaves still for the first `fixed_steps` steps (see `hold_until`); the schedule keeps counting
    every step for all of them.
    """
    c = optim_config
    direction = optax.scale_by_adam(b1=c.b1, b2=c.b2)
    if c.weight_decay > 0:
        direction = optax.chain(direction, optax.add_decayed_weights(c.weight_decay))
    if fixed_labels is not None and fixed_steps > 0:
        direction = optax.multi_transform({"fixed": hold_until(direction, fixed_steps), "trained": direction},
                                          fixed_labels)
    parts = [optax.clip_by_global_norm(c.grad_clip_norm)] if c.grad_clip_norm > 0 else []
    return optax.chain(*parts, direction, optax.scale_by_learning_rate(make_schedule(c, num_train_steps)))


class _HoldState(NamedTuple):
    count: jax.Array
    inner: optax.OptState


def hold_until(inner: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
    """Zero updates for the first `steps` steps, then `inner`, whose state starts fresh at that point.

    pix2pixHD's `niter_fix_global`: the global generator stays fixed while the local enhancer trains, then
    joins the optimizer as if newly added (no moments, no bias-correction count carried over).
    """

    def init(params):
        return _HoldState(jnp.zeros((), jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        def held():
            return jax.tree.map(jnp.zeros_like, updates), state.inner

        new_updates, new_inner = jax.lax.cond(state.count < steps, held,
                                              lambda: inner.update(updates, state.inner, params))
        return new_updates, _HoldState(state.count + 1, new_inner)

    return optax.GradientTransformation(init, update)
