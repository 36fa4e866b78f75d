"""Training: the loss falls on :smoke, an interrupted run resumes exactly, 8-way sharding matches 1 device."""

import os

import jax
import numpy as np
import optax
import pytest

from conftest import Interrupted, crash_during_step
from data_pipeline import loader, sources
from maginet_jax.models.albedo_net import build_albedo_net
from maginet_jax.training import loop, optim, sharding, steps
from maginet_jax.training.objectives import AlbedoObjective
from maginet_jax.training.state import init_train_state


def _config(smoke_config):
    c = smoke_config
    c.log_every_steps = 2
    c.checkpoint_every_steps = 4
    return c


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from configs import albedo
    workdir = str(tmp_path_factory.mktemp("full"))
    state = loop.train_and_evaluate(_config(albedo.get_config("smoke")), workdir)
    return workdir, state


def test_loss_falls_on_smoke(uninterrupted):
    workdir, state = uninterrupted
    rows = loop.read_metrics(workdir)
    train = [r["train/loss"] for r in rows if "train/loss" in r]
    evals = [r["eval/albedo_mse"] for r in rows if "eval/albedo_mse" in r]
    assert rows[0]["step"] == 0 and "eval/albedo_mse" in rows[0]  # the untrained model is evaluated
    assert train[-1] < 0.75 * train[0]
    assert evals[-1] < 0.75 * evals[0]
    assert int(state.step) == 12


def test_outputs_on_disk(uninterrupted):
    workdir, _ = uninterrupted
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "4", "8"]  # max_to_keep=3
    assert sorted(os.listdir(os.path.join(workdir, "samples"))) == [
        "step_0000000.png", "step_0000006.png", "step_0000012.png"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))


def test_interrupted_run_resumes_exactly(uninterrupted, tmp_path, monkeypatch, smoke_config):
    full_dir, full_state = uninterrupted
    workdir = str(tmp_path)
    crash_during_step(monkeypatch, 7)  # the last checkpoint is step 4
    with pytest.raises(Interrupted):
        loop.train_and_evaluate(_config(smoke_config), workdir)
    assert max(r["step"] for r in loop.read_metrics(workdir)) == 6  # rows past the checkpoint exist...
    monkeypatch.undo()
    from configs import albedo
    resumed = loop.train_and_evaluate(_config(albedo.get_config("smoke")), workdir)

    assert loop.read_metrics(workdir) == loop.read_metrics(full_dir)  # ...and are replaced, not duplicated
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(full_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpoint_of_another_model_is_a_clear_error(uninterrupted, tmp_path, smoke_config):
    import shutil
    from maginet_jax.errors import UserError
    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted[0], workdir)
    before = {p: os.path.getmtime(os.path.join(workdir, p)) for p in ("metrics.jsonl", "config.json")}
    c = _config(smoke_config)
    c.model.widths = (8, 16, 32)
    with pytest.raises(UserError, match="does not fit this config"):
        loop.train_and_evaluate(c, workdir)
    assert before == {p: os.path.getmtime(os.path.join(workdir, p)) for p in before}
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "4", "8"]


def test_preemption_saves_and_stops(tmp_path, monkeypatch, smoke_config):
    from maginet_jax.training.checkpoint import Checkpointer
    monkeypatch.setattr(Checkpointer, "reached_preemption", lambda self, step: step == 5)
    state = loop.train_and_evaluate(_config(smoke_config), str(tmp_path))
    assert int(state.step) == 5
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "5"]


def _run_steps(c, devices, batch, tx, num_steps=2):
    objective = AlbedoObjective(c.losses, c.perceptual)
    schedule = optim.make_schedule(c.optim, c.num_train_steps)
    mesh = sharding.make_mesh(c.mesh, devices)
    graphdef, state = init_train_state(lambda r: build_albedo_net(c.model, rngs=r), tx, 0, mesh)
    step, _ = steps.make_supervised_steps(steps.albedo_forward(graphdef), objective, tx, schedule, mesh,
                                         jax.tree.map(lambda x: x.sharding, state), {})
    metrics = None
    for _ in range(num_steps):
        state, metrics = step(state, sharding.to_global(batch, mesh))
    leaf = jax.tree.leaves(state.params)[0]
    assert len(leaf.sharding.device_set) == len(devices) and leaf.sharding.is_fully_replicated
    scalars = {k: float(v) for k, v in metrics.compute().items()} if metrics else {}
    return jax.device_get(state.params), scalars


@pytest.fixture(scope="module")
def eight_examples():
    src = sources.SyntheticSource(num_records=8, resolution=32, seed=1)
    return next(iter(loader.make_loader(src, batch_size=8, crop_size=32, train=True, seed=0)))


def test_sharded_step_matches_single_device(smoke_config, eight_examples):
    assert jax.device_count() == 8, "conftest sets 8 virtual CPU devices"
    c = smoke_config
    # SGD keeps the update linear in the gradient, so parameters compare at fp32 tolerance. (Adam's first
    # steps are ~lr·sign(g): a gradient that is pure round-off may flip sign with the reduction order.)
    sgd = optax.sgd(0.1)
    p0, _ = _run_steps(c, jax.devices()[:1], eight_examples, sgd, num_steps=0)
    p1, _ = _run_steps(c, jax.devices()[:1], eight_examples, sgd, num_steps=1)
    p8, _ = _run_steps(c, jax.devices(), eight_examples, sgd, num_steps=1)
    d1 = np.concatenate([(a - z).ravel() for a, z in zip(jax.tree.leaves(p1), jax.tree.leaves(p0))])
    d8 = np.concatenate([(a - z).ravel() for a, z in zip(jax.tree.leaves(p8), jax.tree.leaves(p0))])
    assert np.abs(d1).max() > 1e-4  # the step did move the parameters
    # fp32 with another reduction order: the updates agree to 1e-4 of the largest update. A sharding bug
    # (a gradient or loss not reduced over all shards) is off by O(1).
    np.testing.assert_allclose(d8, d1, rtol=0, atol=1e-4 * np.abs(d1).max())


def test_sharded_adam_step_metrics_match(smoke_config, eight_examples):
    c = smoke_config
    c.losses.vgg = 0.05  # the frozen VGG16 and AlexNet run inside the sharded step too
    tx = optim.make_optimizer(c.optim, c.num_train_steps)
    _, m1 = _run_steps(c, jax.devices()[:1], eight_examples, tx)
    _, m8 = _run_steps(c, jax.devices(), eight_examples, tx)
    assert {"vgg", "lpips"} <= m1.keys() and m1.keys() == m8.keys()
    for k in m1:
        np.testing.assert_allclose(m8[k], m1[k], rtol=1e-5, err_msg=k)


def test_mesh_errors():
    from ml_collections import ConfigDict
    from maginet_jax.errors import UserError
    with pytest.raises(UserError, match="needs 16 devices"):
        sharding.make_mesh(ConfigDict(dict(shape=(16,), axes=("data",))))
    with pytest.raises(UserError, match="must include 'data'"):
        sharding.make_mesh(ConfigDict(dict(shape=(-1,), axes=("batch",))))
    mesh = sharding.make_mesh(ConfigDict(dict(shape=(-1, 2), axes=("data", "model"))))
    assert dict(mesh.shape) == {"data": 4, "model": 2}
