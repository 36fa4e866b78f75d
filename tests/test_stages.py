"""Stages 2 and 3: chained training from frozen earlier runs, the GAN stage's exact resume, niter_fix_global,
the pix2pixHD schedule and the per-pass objective."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from configs import passes as passes_config
from conftest import Interrupted, crash_during_step, smoke, train_evals as _evals
from maginet_jax import train
from maginet_jax.errors import UserError
from maginet_jax.stages import passes
from maginet_jax.training import runs, sharding, state as state_lib
from maginet_jax.training.writers import read_metrics


def test_refinement_starts_from_its_input_and_improves(chain):
    evals = _evals(chain["refine"])
    # The last conv starts at zero: the untrained RefinementNet returns the upsampled stage-1 albedo exactly.
    assert evals[0]["eval/albedo_mse"] == pytest.approx(evals[0]["eval/copy_input_mse"], rel=1e-6)
    assert evals[-1]["eval/albedo_mse"] < 0.9 * evals[0]["eval/copy_input_mse"]


def test_refine_input_is_the_stage1_prediction(chain, tmp_path):
    """With init.albedo_workdir, refine starts from stage 1's prediction, not the degraded ground truth."""
    train.train_and_evaluate(smoke("refine", num_train_steps=1, eval_every_steps=1), str(tmp_path))
    from_truth = _evals(str(tmp_path))[0]["eval/copy_input_mse"]
    from_stage1 = _evals(chain["refine"])[0]["eval/copy_input_mse"]
    assert from_stage1 > 5 * from_truth  # a 12-step AlbedoNet is far worse than the degraded ground truth


def test_passes_condition_is_the_refined_albedo(chain):
    """Stage 3's condition, scored against the true albedo, is exactly stage 2's final held-out prediction."""
    refined = _evals(chain["refine"])[-1]["eval/albedo_mse"]
    assert _evals(chain["passes"])[0]["eval/condition_mse"] == pytest.approx(refined, rel=1e-5)


def test_passes_train(chain):
    evals = _evals(chain["passes"])
    names = ("ambient_occlusion", "normal", "specular", "translucency", "raw_diffuse")
    assert all(f"eval/{p}_mse" in evals[-1] for p in names)
    assert evals[-1]["eval/mse"] < 0.9 * evals[0]["eval/mse"]
    mean = np.mean([evals[-1][f"eval/{p}_mse"] for p in names])
    assert evals[-1]["eval/mse"] == pytest.approx(mean, rel=1e-5)
    train = [r for r in read_metrics(chain["passes"]) if "train/g_loss" in r]
    assert {"train/d", "train/g_gan", "train/g_fm", "train/mse"} <= set(train[-1])
    with ocp.CheckpointManager(os.path.join(chain["passes"], "checkpoints")) as checkpoints:
        assert checkpoints.latest_step() == 12


def test_passes_sample_grid_shows_every_pass(chain):
    from PIL import Image
    with Image.open(os.path.join(chain["passes"], "samples", "step_0000012.png")) as im:
        w, h = im.size
    # condition + (prediction, target) for 5 passes = 11 columns of 32 px with 2-px gaps; 2 rows.
    assert (w, h) == (11 * 34 + 2, 2 * 34 + 2)


def test_passes_run_resumes_exactly(tmp_path, monkeypatch):
    overrides = {"log_every_steps": 2, "checkpoint_every_steps": 4, "gan.mode": "hinge"}
    full = train.train_and_evaluate(smoke("passes", **overrides), str(tmp_path / "full"))
    crash_during_step(monkeypatch, 7)
    with pytest.raises(Interrupted):
        train.train_and_evaluate(smoke("passes", **overrides), str(tmp_path / "cut"))
    monkeypatch.undo()
    resumed = train.train_and_evaluate(smoke("passes", **overrides), str(tmp_path / "cut"))
    assert read_metrics(str(tmp_path / "cut")) == read_metrics(str(tmp_path / "full"))
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(full)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_resumed_run_keeps_the_upstream_checkpoint_it_started_from(chain, tmp_path, monkeypatch):
    """Stage 1 trains on (2 more steps) while a stage-2 run is down: the resumed stage-2 run still trains against
    stage 1's step 12, the one it started from (its config.json says so), and ends exactly where the chain's
    uninterrupted refine run, trained against step 12 too, ended. Before, every start took the latest."""
    import shutil
    albedo = str(tmp_path / "albedo")
    shutil.copytree(chain["albedo"], albedo)
    refine = str(tmp_path / "refine")
    crash_during_step(monkeypatch, 7)  # the last checkpoint is step 6
    with pytest.raises(Interrupted):
        train.train_and_evaluate(smoke("refine", **{"init.albedo_workdir": albedo}), refine)
    monkeypatch.undo()
    train.train_and_evaluate(smoke("albedo", num_train_steps=14), albedo)
    assert runs.latest_step(runs.run_path(albedo) / "checkpoints") == 14
    resumed = train.train_and_evaluate(smoke("refine", **{"init.albedo_workdir": albedo}), refine)
    assert runs.read_config(refine, expect_stage="refine", what="w").init.albedo_step == 12
    _, _, want = runs.load_params(chain["refine"], train.STAGES["refine"].networks, stage="refine", what="w",
                                  mesh=sharding.make_mesh((("data", -1),)))
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_run_resumed_against_another_upstream_run_takes_its_latest_step(chain, tmp_path):
    """The step pinned at the start belongs to the run it started against: resumed against another (here the
    chain's albedo run, at step 12), the new one's latest is taken (it took the old step, 6, of the other run).
    The same run, moved, keeps the pinned step."""
    import shutil
    refine, other = str(tmp_path / "refine"), str(tmp_path / "other")
    os.makedirs(refine)
    shutil.copytree(chain["albedo"], other)
    started = smoke("refine", **{"init.albedo_workdir": other, "init.albedo_step": 6})
    runs.write_config(started, refine)
    resumed = lambda upstream: smoke("refine", **{"init.albedo_workdir": upstream})
    for upstream, want in ((chain["albedo"], 12), (other, 6)):
        c = resumed(upstream)
        runs.pin_upstream(c, refine, resumed=True)
        assert c.init.albedo_step == want, upstream
    moved = str(tmp_path / "moved")
    shutil.move(other, moved)
    c = resumed(moved)
    runs.pin_upstream(c, refine, resumed=True)
    assert c.init.albedo_step == 6


def test_a_missing_upstream_step_lists_the_kept_ones(chain):
    with pytest.raises(UserError, match=r"has no checkpoint of step 5 \(it has 6, 12; "):
        runs.params_dir(chain["albedo"], what="init.albedo_workdir", step=5)


def test_a_passes_run_of_other_passes_is_refused_as_init(chain):
    """The same channel count, other meanings: the chain's run predicts ambient occlusion in channel 0."""
    reordered = ("normal", "ambient_occlusion", "specular", "translucency", "raw_diffuse")
    c = smoke("passes", passes=reordered, **{"init.pix2pixhd": chain["passes"]})
    with pytest.raises(UserError, match=r"init.pix2pixhd=.* predicts \('ambient_occlusion'"):
        passes.validate(c)


def test_wrong_stage_as_input_is_a_clear_error(chain, tmp_path):
    with pytest.raises(UserError, match="holds a 'refine' run, not 'albedo'"):
        train.train_and_evaluate(smoke("passes", **{"init.albedo_workdir": chain["refine"]}), str(tmp_path))


def test_an_older_runs_config_gets_the_keys_it_lacks(tmp_path):
    """A passes run saved before `model.upsample`, `pass_mse_weights` and `perceptual.precision` existed reads
    with their defaults (the behaviour from before them), keeps what it saved, and validates."""
    saved = passes_config.get_config("demo").to_dict()
    del saved["model"]["upsample"], saved["pass_mse_weights"], saved["perceptual"]["precision"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = runs.read_config(str(tmp_path), expect_stage="passes", what="w")
    assert (config.model.upsample, config.perceptual.precision) == ("transpose", "highest")
    assert set(config.pass_mse_weights.values()) == {1.0}
    assert config.batch_size == saved["batch_size"] != passes_config.get_config("").batch_size
    train.validate(config)


def test_hold_until_holds_then_starts_fresh():
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = [{"w": jnp.array([0.5, 0.1, -0.3]) * (i + 1)} for i in range(5)]
    tx = state_lib.hold_until(optax.adam(0.1), 3)
    state = tx.init(params)
    updates = []
    for g in grads:
        u, state = tx.update(g, state, params)
        updates.append(u["w"])
    for u in updates[:3]:
        np.testing.assert_array_equal(u, 0.0)
    fresh = optax.adam(0.1)
    u0, s = fresh.update(grads[3], fresh.init(params), params)
    u1, _ = fresh.update(grads[4], s, params)
    np.testing.assert_allclose(updates[3], u0["w"], rtol=1e-6)
    np.testing.assert_allclose(updates[4], u1["w"], rtol=1e-6)


def test_niter_fix_global_trains_only_the_local_enhancer():
    c = smoke("passes", **{"model.netG": "local", "optim.niter_fix_global": 3, "num_train_steps": 4,
                            "optim.decay_steps": 2})
    from flax import nnx
    from data_pipeline import loader
    mesh = sharding.make_mesh(c.mesh)
    graphdefs, state = passes.init(c, mesh)
    before = jax.device_get(nnx.to_pure_dict(state.params["generator"]))
    frozen_nets = jax.device_put(passes.frozen_nets(c, mesh), sharding.replicated(mesh))
    batches = iter(loader.training_loader(c, c.batch_size))
    step = train.jit_train_step(c, graphdefs, mesh, jax.tree.map(lambda x: x.sharding, state))
    with jax.set_mesh(mesh):  # the loop's train step, for the niter_fix_global steps
        for _ in range(3):
            state, _ = step(state, sharding.to_global(next(batches), mesh), frozen_nets)
    after = jax.device_get(nnx.to_pure_dict(state.params["generator"]))
    flat_before = dict(jax.tree_util.tree_leaves_with_path(before))
    changed = {jax.tree_util.keystr(k): not np.array_equal(v, flat_before[k])
               for k, v in jax.tree_util.tree_leaves_with_path(after)}
    global_keys = [k for k in changed if k.startswith("['global_net']")]
    assert global_keys and not any(changed[k] for k in global_keys)
    assert all(changed[k] for k in changed if k not in global_keys)


def test_constant_then_linear_schedule():
    from ml_collections import ConfigDict
    c = ConfigDict(dict(learning_rate=2e-4, warmup_steps=0, schedule="constant_then_linear", decay_steps=4,
                        end_learning_rate_factor=0.0))
    lr = state_lib.make_schedule(c, 10)
    np.testing.assert_allclose([float(lr(s)) for s in range(11)],
                               [2e-4] * 7 + [1.5e-4, 1e-4, 0.5e-4, 0.0], atol=1e-10)
    config = smoke("passes", num_train_steps=10, **{"optim.decay_steps": 11})
    with pytest.raises(UserError, match="decay_steps"):
        train.validate(config)


def test_passes_reconstruction_matches_per_pass_terms():
    from flax import nnx
    from maginet_jax import losses
    from maginet_jax.perceptual.losses import perceptual_nets
    c = smoke("passes", passes=("ambient_occlusion", "normal", "specular"),
              **{"losses.mse": 2.0, "losses.vgg": 0.5, "pass_mse_weights.normal": 3.0})
    perceptual = perceptual_nets(c.perceptual, vgg=True, lpips=False)
    rng = np.random.default_rng(0)
    pred, target = (jnp.asarray(rng.random((2, 24, 24, 5)), jnp.float32) for _ in range(2))
    mask = jnp.asarray(rng.random((2, 24, 24, 1)) > 0.3, jnp.float32)
    terms = passes.reconstruction_terms(pred, target, mask, perceptual, c)
    splits = [(0, 1), (1, 4), (4, 5)]
    mse = np.mean([w * losses.masked_mse(pred[..., a:b], target[..., a:b], mask) for w, (a, b) in zip((1, 3, 1), splits)])
    vgg = nnx.merge(*perceptual["vgg"])
    per_pass_vgg = np.mean([vgg(pred[..., a:b], target[..., a:b], mask) for a, b in splits])
    assert set(terms) == {"mse", "vgg"}
    assert float(terms["mse"]) == pytest.approx(mse, rel=1e-5)
    assert float(terms["vgg"]) == pytest.approx(per_pass_vgg, rel=1e-4)
    c.losses.vgg = 0.0
    assert set(passes.reconstruction_terms(pred, target, mask, perceptual, c)) == {"mse"}
