"""Gradient accumulation (training/microbatches.py): microbatches keep every image once and lie over the devices as
the batch does; a step over k microbatches is the whole batch's step (masks of equal area), for the supervised
and the GAN stage; it needs a k-th of the activation memory; bad settings are one error line. (The joint stage
steps in microbatches in test_joint.py, which has the chained runs it starts from.)"""

import re

import jax
import numpy as np
import pytest

from conftest import smoke, synthetic_batch
from maginet_jax import train
from maginet_jax.errors import UserError
from maginet_jax.stages import supervised
from maginet_jax.training import checks, microbatches, sharding


def test_split_keeps_every_image_once_spread_over_the_devices():
    mesh = sharding.make_mesh((("data", 4),), jax.devices()[:4])
    batch = {"image": np.arange(16 * 8 * 2 * 1, dtype=np.float32).reshape(16, 8, 2, 1),
             "id": np.arange(16, dtype=np.int32)}
    with jax.set_mesh(mesh):
        micro = jax.jit(microbatches.split, static_argnums=1)(sharding.to_global(batch, mesh), 2)
    np.testing.assert_array_equal(micro["id"], [[0, 2, 4, 6, 8, 10, 12, 14], [1, 3, 5, 7, 9, 11, 13, 15]])
    np.testing.assert_array_equal(micro["image"][1, 3], batch["image"][7])
    # each device holds two images of each microbatch, of its own four: no image moved between devices
    held = sorted(tuple(np.asarray(s.data).ravel()) for s in micro["id"].addressable_shards)
    assert held == [(0, 2, 1, 3), (4, 6, 5, 7), (8, 10, 9, 11), (12, 14, 13, 15)]


def _step_scalars(stage, steps, devices, batch):
    c = smoke(stage)
    c.grad_accum_steps, c.mesh = steps, (("data", len(devices)),)
    mesh = sharding.make_mesh(c.mesh, devices)
    graphdefs, state = train.STAGES[stage].init(c, mesh)
    frozen = jax.device_put(train.STAGES[stage].frozen_nets(c, mesh), sharding.replicated(mesh))
    step = train.jit_train_step(c, graphdefs, mesh, jax.tree.map(lambda x: x.sharding, state))
    with jax.set_mesh(mesh):
        _, scalars = step(state, sharding.to_global(batch, mesh), frozen)
    return jax.device_get(scalars)


@pytest.mark.parametrize("stage", ["refine", "passes"])
def test_an_accumulated_step_is_the_whole_batch_step(stage):
    """Four microbatches on two devices against the whole batch on one: the same losses and gradient norm. (The
    masks cover the whole image: each microbatch's masked mean then weighs its pixels as the batch's does.)"""
    batch = synthetic_batch(tuple(smoke(stage).get("passes", ())))
    batch["mask"][:] = 255
    whole = _step_scalars(stage, 1, jax.devices()[:1], batch)
    accumulated = _step_scalars(stage, 4, jax.devices()[:2], batch)
    assert whole.keys() == accumulated.keys() and len(whole) > 3
    for k in whole:  # (another reduction order: the gradient norm to 5e-4, as in test_train's sharding tests)
        np.testing.assert_allclose(accumulated[k], whole[k], rtol=5e-4 if k == "grad_norm" else 1e-5, err_msg=k)


def test_accumulated_gradients_are_the_whole_batch_gradients():
    """The gradients themselves (not only their norm): a microbatch counted twice in place of another, or a sum in
    place of the mean, would be off by O(1)."""
    c = smoke("refine")
    mesh = sharding.make_mesh((("data", 1),), jax.devices()[:1])
    graphdefs, state = supervised.init(c, mesh)
    frozen = supervised.frozen_nets(c, mesh)
    batch = synthetic_batch()
    batch["mask"][:] = 255

    def grads(steps):
        fn = lambda micro, key: supervised.gradients(state.params, frozen, micro, key, config=c, graphdefs=graphdefs)
        g, _ = jax.jit(lambda b: microbatches.accumulate(fn, b, state.rng, steps))(batch)
        return np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(g))])

    whole, accumulated = grads(1), grads(4)
    assert np.abs(whole).max() > 1e-4
    np.testing.assert_allclose(accumulated, whole, rtol=0, atol=5e-4 * np.abs(whole).max())


def test_microbatches_need_a_fraction_of_the_memory_and_count_the_whole_step(tmp_path):
    """The dry run: four microbatches need under a third of the whole batch's temporaries, and the step's FLOPs
    are still the whole batch's (XLA counts the loop's body once; the report counts the step lowered whole)."""
    reports = {}
    for steps in (1, 4):
        c = smoke("refine")
        c.grad_accum_steps, c.batch_size = steps, 32  # 4 images a device of the 8, one at a time with 4 steps
        (tmp_path / str(steps)).mkdir()
        reports[steps] = train.dry_run(c, str(tmp_path / str(steps)))
    temporaries = {k: r["bytes_per_device"]["temporaries"] for k, r in reports.items()}
    assert temporaries[4] < temporaries[1] / 3, temporaries
    np.testing.assert_allclose(reports[4]["flops_per_step"], reports[1]["flops_per_step"], rtol=1e-6)
    assert np.isnan(reports[4]["flops_per_device"]) and reports[1]["flops_per_device"] > 0


@pytest.mark.parametrize("value, devices, error", [
    (0, 1, "grad_accum_steps must be an integer >= 1, got 0"),
    (3, 1, "batch_size=8 must be divisible by grad_accum_steps × the mesh's data × fsdp shards (3 × 1)"),
    (2, 8, "batch_size=8 must be divisible by grad_accum_steps × the mesh's data × fsdp shards (2 × 8)"),
])
def test_bad_microbatch_counts_are_one_error(value, devices, error):
    c = smoke("refine")  # batch_size 8
    c.grad_accum_steps = value
    with pytest.raises(UserError, match=f"^{re.escape(error)}"):
        train.validate(c, read_data=False)
        checks.check_mesh(c, 1, sharding.make_mesh((("data", devices),), jax.devices()[:devices]))
