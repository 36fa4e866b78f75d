"""Jitted, sharded train and eval steps: the wrappers every stage uses, and the supervised (stages 1-2) steps."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import optax
from clu import metrics as clu_metrics
from flax import nnx
from jax.sharding import Mesh

from maginet_jax import losses
from maginet_jax.training import sharding
from maginet_jax.training.state import TrainState


def metrics_class(names) -> type[clu_metrics.Collection]:
    """A clu Collection averaging each named scalar output."""
    return clu_metrics.Collection.create(**{n: clu_metrics.Average.from_output(n) for n in names})


def train_metrics_class(terms: tuple[str, ...]) -> type[clu_metrics.Collection]:
    """Averages of the total loss, each loss term, the gradient norm and the learning rate."""
    return metrics_class(("loss", *terms, "grad_norm", "learning_rate"))


EvalMetrics = metrics_class(("albedo_mse", "psnr", "copy_input_mse"))


def place_frozen(frozen, mesh: Mesh):
    """Networks that are not trained (perceptual nets, earlier stages), replicated on the devices once.

    They go into the steps as an argument: closing over them would bake their weights into the program.
    """
    return jax.device_put(frozen, sharding.replicated(mesh))


def _bind(fn: Callable, mesh: Mesh, state_sharding, frozen, out_shardings, donate: tuple[int, ...]) -> Callable:
    jitted = jax.jit(fn, in_shardings=(state_sharding, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
                     out_shardings=out_shardings, donate_argnums=donate)
    return lambda state, batch: jitted(state, batch, frozen)


def jit_train_step(fn: Callable, mesh: Mesh, state_sharding, frozen) -> Callable:
    """`fn(state, batch, frozen) -> (state, metrics)` as `(state, batch) -> (state, metrics)`, jitted with
    explicit shardings and the input state donated; `frozen` comes from `place_frozen`."""
    return _bind(fn, mesh, state_sharding, frozen, (state_sharding, sharding.replicated(mesh)), (0,))


def jit_eval_step(fn: Callable, mesh: Mesh, state_sharding, frozen) -> Callable:
    """`fn(state, batch, frozen) -> (metrics, images)` as `(state, batch) -> ...`; images stay batch-sharded."""
    return _bind(fn, mesh, state_sharding, frozen, (sharding.replicated(mesh), sharding.batch_sharding(mesh)), ())


def supervised_train_step(state: TrainState, batch, frozen, *, forward, objective, tx, schedule, metrics_cls):
    """One optimizer step on `objective`; `forward(params, frozen_inputs, batch) -> (pred, sides, start)`."""
    rng, step_rng = jax.random.split(state.rng)

    def loss_fn(params):
        pred, sides, _ = forward(params, frozen["inputs"], batch)
        return objective(frozen["objective"], pred, sides, batch, step_rng)

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = metrics_cls.single_from_model_output(
        loss=loss, grad_norm=optax.tree.norm(grads), learning_rate=schedule(state.step), **terms)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics


def supervised_eval_step(state: TrainState, batch, frozen, *, forward):
    """Masked albedo MSE / PSNR of the prediction, and of `start` (what the network is given) as the
    copy-the-input baseline. batch["valid"] marks real (unpadded) examples."""
    pred, _, start = forward(state.params, frozen["inputs"], batch)
    mse = losses.per_example_masked_mse(pred, batch["albedo"], batch["mask"])
    copy = losses.per_example_masked_mse(start, batch["albedo"], batch["mask"])
    metrics = EvalMetrics.single_from_model_output(
        albedo_mse=mse, psnr=losses.psnr(mse), copy_input_mse=copy, mask=batch["valid"])
    # Outside the mask the prediction is unconstrained (and unscored): show it masked.
    return metrics, {"input": batch["image"], "start": start, "prediction": pred * batch["mask"],
                     "target": batch["albedo"], "mask": batch["mask"]}


def make_supervised_steps(forward: Callable, objective, tx, schedule, mesh: Mesh, state_sharding, inputs):
    """(train_step, eval_step) for a stage trained on `objective` alone; `inputs` are its frozen inputs."""
    frozen = place_frozen({"objective": objective.frozen, "inputs": inputs}, mesh)
    train = functools.partial(supervised_train_step, forward=forward, objective=objective, tx=tx,
                              schedule=schedule, metrics_cls=train_metrics_class(objective.terms))
    evaluate = functools.partial(supervised_eval_step, forward=forward)
    return (jit_train_step(train, mesh, state_sharding, frozen),
            jit_eval_step(evaluate, mesh, state_sharding, frozen))


def albedo_forward(graphdef: nnx.GraphDef) -> Callable:
    """AlbedoNet on the lit image; its input is also the copy-the-input baseline."""
    def forward(params, inputs, batch):
        pred, sides = nnx.merge(graphdef, params)(batch["image"])
        return pred, sides, batch["image"]
    return forward
