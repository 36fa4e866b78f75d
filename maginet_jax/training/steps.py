"""Jitted, sharded train and eval steps for the albedo stage."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics
from flax import nnx
from jax.sharding import Mesh

from maginet_jax import losses
from maginet_jax.training import sharding
from maginet_jax.training.state import TrainState


def train_metrics_class(terms: tuple[str, ...]) -> type[clu_metrics.Collection]:
    """A clu Collection averaging the total loss, each loss term, the gradient norm and the learning rate."""
    names = ("loss", *terms, "grad_norm", "learning_rate")
    return clu_metrics.Collection.create(**{n: clu_metrics.Average.from_output(n) for n in names})


EvalMetrics = clu_metrics.Collection.create(
    albedo_mse=clu_metrics.Average.from_output("albedo_mse"),
    psnr=clu_metrics.Average.from_output("psnr"),
    copy_input_mse=clu_metrics.Average.from_output("copy_input_mse"),
)


def _train_step(state: TrainState, batch, frozen, *, graphdef, objective, tx, schedule, metrics_cls):
    rng, step_rng = jax.random.split(state.rng)

    def loss_fn(params):
        pred, sides = nnx.merge(graphdef, params)(batch["image"])
        return objective(frozen, pred, sides, batch, step_rng)

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = metrics_cls.single_from_model_output(
        loss=loss, grad_norm=optax.tree.norm(grads), learning_rate=schedule(state.step), **terms)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics


def make_train_step(graphdef, objective, tx, schedule, mesh: Mesh, state_sharding):
    """`(state, batch) -> (state, metrics)`, jitted with explicit shardings; the input state is donated.

    The objective's frozen networks go in as a replicated argument, placed on the devices once.
    """
    fn = functools.partial(_train_step, graphdef=graphdef, objective=objective, tx=tx, schedule=schedule,
                           metrics_cls=train_metrics_class(objective.terms))
    replicated = sharding.replicated(mesh)
    jitted = jax.jit(fn, in_shardings=(state_sharding, sharding.batch_sharding(mesh), replicated),
                     out_shardings=(state_sharding, replicated), donate_argnums=0)
    frozen = jax.device_put(objective.frozen, replicated)
    return lambda state, batch: jitted(state, batch, frozen)


def _eval_step(params, batch, *, graphdef):
    pred, _ = nnx.merge(graphdef, params)(batch["image"])
    mse = losses.per_example_masked_mse(pred, batch["albedo"], batch["mask"])
    copy = losses.per_example_masked_mse(batch["image"], batch["albedo"], batch["mask"])
    metrics = EvalMetrics.single_from_model_output(
        albedo_mse=mse, psnr=losses.psnr(mse), copy_input_mse=copy, mask=batch["valid"])
    return metrics, pred


def make_eval_step(graphdef, mesh: Mesh, params_sharding):
    """`(params, batch) -> (metrics, prediction)`; batch["valid"] marks real (unpadded) examples."""
    fn = functools.partial(_eval_step, graphdef=graphdef)
    return jax.jit(fn, in_shardings=(params_sharding, sharding.batch_sharding(mesh)),
                   out_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)))
