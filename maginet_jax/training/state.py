"""The train state pytree and its sharded initialisation.

The model's graph definition is static (held by the caller); the state carries only arrays, so the train
step is a pure function `(state, batch) -> (state, metrics)` that jit can donate and orbax can save.
"""

from __future__ import annotations

from typing import Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from maginet_jax.training import sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    rng: jax.Array  # raw uint32 key: split every step, so stochastic loss terms resume exactly


def abstract_model(build_model: Callable[[nnx.Rngs], nnx.Module]) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, parameter shapes) of the module `build_model` makes, without allocating it."""
    return nnx.split(nnx.eval_shape(lambda: build_model(nnx.Rngs(params=0))), nnx.Param)


def init_train_state(build_model: Callable[[nnx.Rngs], nnx.Module], tx: optax.GradientTransformation,
                     seed: int, mesh: Mesh) -> tuple[nnx.GraphDef, TrainState]:
    """Builds the model on-device (parameters replicated over `mesh`) and returns (graphdef, state).

    Every model variable must be an `nnx.Param`: `nnx.split` fails loudly if a later model adds other
    state (batch statistics), which would then need a place in TrainState.
    """
    params_key, step_key = jax.random.split(jax.random.PRNGKey(seed))

    def init(params_key, step_key):
        _, params = nnx.split(build_model(nnx.Rngs(params=params_key)), nnx.Param)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=step_key)

    graphdef, _ = abstract_model(build_model)
    state = jax.jit(init, out_shardings=sharding.replicated(mesh))(params_key, step_key)
    return graphdef, state
