"""Joint fine-tuning (stages/joint.py): gradients reach every network with a learning rate (the passes losses
reach both albedo networks), none reaches one whose rate is 0, a killed run resumes bit-identically, and a joint
run predicts and evaluates in place of the three runs it started from."""

import functools
import json
import subprocess

import jax
import numpy as np
import pytest

from conftest import REPO, Interrupted, crash_during_step, smoke, synthetic_batch, train_evals
from maginet_jax import evaluate, predict, train
from maginet_jax.errors import UserError
from maginet_jax.stages import joint
from maginet_jax.training import runs, sharding
from maginet_jax.training.writers import read_metrics


def joint_config(dirs, **overrides):
    return smoke("joint", **{"init.albedo_workdir": dirs["albedo"], "init.refine_workdir": dirs["refine"],
                             "init.passes_workdir": dirs["passes"], **overrides})


def one_step(config):
    """(state before, state after, scalars) of one train step from the runs in `config.init`."""
    train.validate(config)
    mesh = sharding.make_mesh(config.mesh)
    graphdefs, state = joint.init(config, mesh)
    before = jax.tree.map(np.asarray, state)
    frozen_nets = joint.frozen_nets(config, mesh)
    batch = synthetic_batch(config.passes, n=4, resolution=config.data.crop_size)
    step = jax.jit(functools.partial(joint.train_step, config=config, graphdefs=graphdefs))
    after, scalars = step(state, batch, frozen_nets)
    return before, jax.tree.map(np.asarray, after), jax.device_get(scalars)


def test_passes_losses_reach_both_albedo_networks(chain):
    """With every albedo and refine loss weight 0, only the passes losses are left, and still AlbedoNet and
    RefinementNet get gradients and change: the gradient flows back through the generator. (In two microbatches:
    the joint step's gradients come through microbatches.accumulate as every stage's, whose sums and means
    test_microbatches.py checks against whole batches.)"""
    zero = {f"{net}.losses.{k}": 0.0 for net, terms in (("albedo", ("mse", "edge", "side", "lpips")),
                                                         ("refine", ("mse", "edge", "lpips"))) for k in terms}
    before, after, scalars = one_step(joint_config(chain, grad_accum_steps=2, **zero))
    assert not any(k.startswith(("albedo_", "refine_")) for k in scalars)  # no albedo term was computed
    for name in ("albedo", "refine", "generator", "discriminator"):
        assert scalars[f"grad_norm_{name}"] > 0, name
        moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(before.params[name]),
                                                      jax.tree.leaves(after.params[name]))]
        assert max(moved) > 0, name


def test_no_gradient_reaches_a_network_with_learning_rate_0(chain):
    before, after, scalars = one_step(joint_config(chain, **{"albedo.learning_rate": 0.0}))
    assert scalars["grad_norm_albedo"] == 0.0
    for a, b in zip(jax.tree.leaves(before.params["albedo"]), jax.tree.leaves(after.params["albedo"])):
        np.testing.assert_array_equal(a, b)
    assert scalars["grad_norm_refine"] > 0 and scalars["grad_norm_generator"] > 0
    assert scalars["albedo_mse"] > 0  # its losses are still computed and logged


@pytest.fixture(scope="module")
def joint_run(chain, tmp_path_factory):
    """A joint :smoke run killed at step 7 and resumed, and the same run uninterrupted."""
    root = tmp_path_factory.mktemp("joint")
    overrides = {"log_every_steps": 2, "checkpoint_every_steps": 4}
    full = train.train_and_evaluate(joint_config(chain, **overrides), str(root / "full"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        crash_during_step(monkeypatch, 7)
        with pytest.raises(Interrupted):
            train.train_and_evaluate(joint_config(chain, **overrides), str(root / "cut"))
    resumed = train.train_and_evaluate(joint_config(chain, **overrides), str(root / "cut"))
    return root, full, resumed


def test_starts_from_the_three_runs(joint_run, chain):
    """Step 0 of the joint run scores exactly what the chained passes run scored at its end: every network's
    parameters are those of its run."""
    first, finished = train_evals(str(joint_run[0] / "full"))[0], train_evals(chain["passes"])[-1]
    assert first["step"] == 0
    for key in [k for k in finished if k.startswith("eval/")]:
        assert first[key] == pytest.approx(finished[key], rel=1e-5), key


def test_killed_run_resumes_bit_identically(joint_run):
    root, full, resumed = joint_run
    assert read_metrics(str(root / "cut")) == read_metrics(str(root / "full"))
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(full)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_evaluate_and_predict_take_a_joint_run(joint_run, chain, tmp_path):
    root, full, _ = joint_run
    workdir = str(root / "full")
    results = evaluate.evaluate_run(runs.read_config(workdir, expect_stage="joint", what="w"), workdir)
    last = train_evals(workdir)[-1]
    assert list(results["rows"]["model"])[:2] == ["albedo", "ambient_occlusion"]
    assert results["rows"]["model"]["albedo"]["mse"] == pytest.approx(last["eval/condition_mse"], rel=1e-5)
    for p in results["passes"][1:]:
        assert results["rows"]["model"][p]["mse"] == pytest.approx(last[f"eval/{p}_mse"], rel=1e-5)

    image = np.random.default_rng(0).uniform(0.1, 1.0, (32, 32, 3)).astype(np.float32)
    tuned = predict.Predictor("", "", "", joint_workdir=workdir)(image)
    separate = predict.Predictor(chain["albedo"], chain["refine"], chain["passes"])(image)
    config = joint_config(chain)
    graphdefs = runs.abstract_networks(joint.networks(config), sharding.make_mesh(config.mesh))[0]
    want = jax.jit(functools.partial(joint.forward, graphdefs=graphdefs))(  # eagerly: one compile per op
        {n: full.params[n] for n in joint.CHAIN}, image[None])
    np.testing.assert_allclose(tuned["albedo"], np.clip(np.asarray(want["refined"][0]), 0, 1), atol=1e-5)
    assert np.abs(tuned["albedo"] - separate["albedo"]).max() > 1e-4  # the fine-tuned networks, not the old ones


@pytest.mark.parametrize("overrides,message", [
    ({"init.passes_workdir": ""}, "init.passes_workdir is required"),
    ({"albedo.model.widths": (8, 16, 32)}, "another architecture than the config: albedo.model.widths: (8, 16, 16) "
                                            "there, (8, 16, 32) here"),
    ({"refine.learning_rate": -1.0}, "refine.learning_rate must be a finite number >= 0, got -1.0"),
    ({"refine.learning_rate": float("nan")}, "refine.learning_rate must be a finite number >= 0, got nan"),  # was a
    ({"refine.model.remat": "yes"}, "refine.model.remat='yes' is not one of"),  # KeyError after init; so this
    ({"albedo.model.dtype": "int8"}, "albedo.model.dtype='int8' is not one of"),  # was not checked
    ({"albedo.model.widths": (8, 0, 16)}, "in the albedo section: model.widths[1] must be an integer >= 1"),
    ({"model.ngf": 8}, "init.passes_workdir="),
])
def test_bad_joint_config_is_one_error(chain, overrides, message):
    with pytest.raises(UserError) as e:
        train.validate(joint_config(chain, **overrides))
    assert message in str(e.value)


def test_predict_wants_three_runs_or_one_joint_run(chain):
    with pytest.raises(UserError, match="give it without --albedo_workdir"):
        predict.Predictor(chain["albedo"], "", "", joint_workdir=chain["passes"])
    with pytest.raises(UserError, match="holds a 'passes' run, not 'joint'"):
        predict.Predictor("", "", "", joint_workdir=chain["passes"])


def test_joint_vs_separate_script(chain, joint_run, tmp_path):
    """benchmarks/joint_vs_separate.sh on the :smoke runs for the joint :smoke run's 12 steps: both pipelines and
    the start scored."""
    # With conftest's XLA_FLAGS (8 devices), its joint run compiles the programs `joint_run` did: the compilation
    # cache serves them.
    r = subprocess.run(["bash", "benchmarks/joint_vs_separate.sh", chain["albedo"], chain["refine"], chain["passes"],
                        str(tmp_path), "smoke"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    results = {run: json.load(open(tmp_path / run / "eval" / "results.json")) for run in ("start", "passes", "joint")}
    assert [results[run]["step"] for run in ("start", "passes", "joint")] == [12, 24, 12]
    assert results["joint"]["stage"] == "joint" and results["passes"]["rows"]["model"].keys() == \
        results["joint"]["rows"]["model"].keys()
    assert str(tmp_path / "joint") in r.stdout and str(tmp_path / "passes") in r.stdout  # the side-by-side table
    # The separate arm's later stages sit on the continued earlier ones (resumed, a run kept its first upstream step).
    init = lambda run: json.load(open(tmp_path / run / "config.json"))["init"]
    assert init("refine")["albedo_step"] == 24
    assert (init("passes")["albedo_step"], init("passes")["refine_step"]) == (24, 24)
