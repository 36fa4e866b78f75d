"""`python -m maginet_jax.evaluate`: SSIM against scikit-image, and results that agree with training's eval."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from conftest import REPO, smoke, train_evals
from maginet_jax import evaluate
from maginet_jax.errors import UserError
from maginet_jax.image_metrics import ssim


def _reference(a, b, **kw):
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1.0, **kw)


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_scikit_image(channels):
    rng = np.random.default_rng(channels)
    a = rng.random((2, 37, 45, channels)).astype(np.float32)
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    got = np.asarray(ssim(jnp.asarray(a), jnp.asarray(b)))
    kw = {"channel_axis": -1} if channels == 3 else {}
    want = [_reference(a[i] if channels == 3 else a[i, ..., 0], b[i] if channels == 3 else b[i, ..., 0], **kw)
            for i in range(2)]
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert got[0] < 0.95  # the noise is visible to SSIM


def test_masked_ssim_averages_the_map_inside_the_mask():
    rng = np.random.default_rng(7)
    a = rng.random((40, 40)).astype(np.float32)
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    mask = np.zeros((40, 40), np.float32)
    mask[8:30, 12:35] = 1.0
    _, full = _reference(a, b, full=True)
    want = full[5:-5, 5:-5][mask[5:-5, 5:-5] > 0].mean()
    got = ssim(jnp.asarray(a)[None, ..., None], jnp.asarray(b)[None, ..., None], jnp.asarray(mask)[None, ..., None])
    assert float(got[0]) == pytest.approx(want, abs=2e-5)


def test_albedo_results_agree_with_training_eval(chain):
    workdir = chain["albedo"]
    at_6 = evaluate.evaluate_run(smoke("albedo"), workdir, step=6)  # an earlier checkpoint (--step)
    assert at_6["step"] == 6
    assert at_6["rows"]["model"]["albedo"]["psnr"] == pytest.approx(train_evals(workdir)[1]["eval/psnr"], rel=1e-5)
    results = evaluate.evaluate_run(smoke("albedo"), workdir)
    last = train_evals(workdir)[-1]
    model, copy = results["rows"]["model"]["albedo"], results["rows"]["copy the input"]["albedo"]
    assert model["mse"] == pytest.approx(last["eval/albedo_mse"], rel=1e-5)
    assert model["psnr"] == pytest.approx(last["eval/psnr"], rel=1e-5)
    assert copy["mse"] == pytest.approx(last["eval/copy_input_mse"], rel=1e-5)
    assert 0 < model["ssim"] < 1 and 0 < model["lpips"] < 1
    assert results["step"] == 12 and results["num_examples"] == 12
    with open(os.path.join(workdir, "eval", "results.json")) as f:
        assert json.load(f) == results
    md = open(os.path.join(workdir, "eval", "results.md")).read()
    assert f"| albedo | **model** | {model['mse'] * 1e3:.3f} |" in md
    assert "| albedo | copy the input |" in md


def test_sample_grids_take_as_many_batches_as_they_need(chain):
    """num_sample_images above eval.batch_size: the grids gather later batches (they were cut to the first), and
    leave out the padding of a last partial batch; the means do not depend on the batch size."""
    import functools
    from maginet_jax import evaluator, train
    from maginet_jax.training import runs, sharding
    stage = train.STAGES["albedo"]
    mesh = sharding.make_mesh((("data", -1),))
    _, graphdefs, params = runs.load_params(chain["albedo"], stage.networks, stage="albedo", what="w", mesh=mesh)
    got = {}
    for batch_size in (8, 16):  # 12 held-out examples: a full and a half-padded batch, or one padded batch
        config = smoke("albedo", **{"eval.batch_size": batch_size})
        predict = functools.partial(stage.predict, config=config, graphdefs=graphdefs)
        got[batch_size] = evaluator.evaluate(predict, params, stage.frozen_nets(config, mesh), config, mesh,
                                             num_shown=11)
    for k, v in got[16].shown.items():
        assert v.shape[0] == 11, k
        np.testing.assert_allclose(got[8].shown[k], v, atol=1e-6, err_msg=k)
    assert got[8].means["model"]["albedo"]["mse"] == pytest.approx(got[16].means["model"]["albedo"]["mse"], rel=1e-5)


def test_chained_pipeline_scores_all_six_passes(chain):
    c = smoke("passes", **{"init.albedo_workdir": chain["albedo"], "init.refine_workdir": chain["refine"]})
    results = evaluate.evaluate_run(c, chain["passes"])
    model = results["rows"]["model"]
    assert list(model) == ["albedo", "ambient_occlusion", "normal", "specular", "translucency", "raw_diffuse",
                           "mean"]
    # the albedo row is the refined stage-1 albedo: the refine run's own final held-out MSE
    assert model["albedo"]["mse"] == pytest.approx(train_evals(chain["refine"])[-1]["eval/albedo_mse"], rel=1e-5)
    last = train_evals(chain["passes"])[-1]
    for p in results["passes"][1:]:
        assert model[p]["mse"] == pytest.approx(last[f"eval/{p}_mse"], rel=1e-5)
    assert model["mean"]["mse"] == pytest.approx(np.mean([model[p]["mse"] for p in results["passes"]]))
    table = evaluate.side_by_side(results, results)
    assert table.count("| normal |") == 4


def _evaluate_cli(*args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "-m", "maginet_jax.evaluate", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_compare_without_results_is_one_line(chain, tmp_path):
    r = _evaluate_cli("--config=configs/albedo.py:smoke", f"--workdir={chain['albedo']}", f"--compare={tmp_path}")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"maginet_jax.evaluate: error: --compare {str(tmp_path)!r} has no eval/results.json: evaluate that run first"]


def test_without_config_the_run_config_gives_the_same_results(chain, tmp_path):
    """`--workdir` alone reads the run's config.json; the numbers equal those of the same run given --config."""
    import shutil
    workdir = str(tmp_path / "albedo")
    shutil.copytree(chain["albedo"], workdir)
    with_config = _evaluate_cli("--config=configs/albedo.py:smoke", f"--workdir={workdir}")
    assert with_config.returncode == 0, with_config.stderr
    want = json.load(open(os.path.join(workdir, "eval", "results.json")))
    os.remove(os.path.join(workdir, "eval", "results.json"))
    alone = _evaluate_cli(f"--workdir={workdir}")
    assert alone.returncode == 0, alone.stderr
    got = json.load(open(os.path.join(workdir, "eval", "results.json")))
    assert got == want and got["rows"]["model"]["albedo"]["mse"] > 0
    assert alone.stdout == with_config.stdout


def test_compare_warns_when_the_held_out_sets_differ(chain, tmp_path):
    """results.json records the held-out set; --compare says when two runs were scored on different ones (the
    side-by-side table would otherwise put, say, 12 synthetic textures beside one real subject)."""
    import shutil
    runs = {name: str(tmp_path / name) for name in ("own", "other")}
    for workdir in runs.values():
        shutil.copytree(chain["albedo"], workdir)
    own = _evaluate_cli(f"--workdir={runs['own']}")
    assert own.returncode == 0 and own.stderr == "", own.stderr
    results = json.load(open(os.path.join(runs["own"], "eval", "results.json")))
    assert results["test_set"]["data.source"] == "synthetic" and results["test_set"]["data.seed"] == 0
    assert "data.source='synthetic'" in own.stdout.splitlines()[0]
    other = _evaluate_cli("--config=configs/albedo.py:smoke", "--config.data.seed=3", f"--workdir={runs['other']}",
                          f"--compare={runs['own']}")
    assert other.returncode == 0 and other.stderr.splitlines() == [
        "maginet_jax.evaluate: warning: the two runs were scored on different held-out examples: data.seed 3 "
        "against 0"], other.stderr
    same = _evaluate_cli(f"--workdir={runs['own']}", f"--compare={runs['own']}")
    assert same.returncode == 0 and same.stderr == "", same.stderr


@pytest.mark.parametrize("args,message", [
    (["--config.data.seed=3"], "--config.KEY=VALUE overrides need --config=FILE"),
    (["--step=5"], "/albedo' has no checkpoint of step 5 (it has 6, 12)"),
    (["--step=-1"], "--step must be an integer >= 0, got -1"),
    (["--workdir=/nonexistent/run"], "--workdir='/nonexistent/run' is not a maginet_jax run directory"),
    # was LPIPS NaN in the table
    (["--config=configs/albedo.py:smoke", "--config.data.crop_size=28"], "data.crop_size 28 is below 31"),
    # blamed config.json, which --config replaces, and printed PosixGPath(...)
    (["--config=configs/albedo.py:smoke", "--config.model.widths=(8,16,32)"],
     "/checkpoints/12/state' does not fit the model configured for it: params/model/"),
])
def test_bad_evaluate_input_is_one_line(chain, args, message):
    args = args if any(a.startswith("--workdir") for a in args) else [f"--workdir={chain['albedo']}", *args]
    r = _evaluate_cli(*args)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maginet_jax.evaluate: error: ") and message in lines[0], r.stderr


@pytest.mark.parametrize("content", ["{not json", "{}", "[]", '{"rows": {"model": {"albedo": {"mse": 1}}}}',
                                     "[" * 100_000])  # was a RecursionError, a traceback
def test_bad_compare_results_are_refused_up_front(tmp_path, content):
    """A results.json it cannot compare with: one error before this run is evaluated (it was a traceback, for `{}`
    only after the evaluation had overwritten this run's results)."""
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(content)
    with pytest.raises(UserError, match=r"its eval/results.json is not an evaluation's results \("):
        evaluate.read_results(str(tmp_path))


def test_unwritable_results_directory_is_refused_before_the_evaluation(chain, tmp_path, monkeypatch):
    import shutil
    from maginet_jax import evaluator
    workdir = tmp_path / "run"
    shutil.copytree(chain["albedo"], workdir, ignore=shutil.ignore_patterns("eval"))
    (workdir / "eval").write_text("a file where the results directory goes")
    monkeypatch.setattr(evaluator, "evaluate", lambda *a, **k: pytest.fail("evaluated"))
    with pytest.raises(UserError, match="cannot write to the results directory="):
        evaluate.evaluate_run(smoke("albedo"), str(workdir))
    (workdir / "eval").unlink()
    (workdir / "eval" / "results.md").mkdir(parents=True)  # was IsADirectoryError after the evaluation
    with pytest.raises(UserError, match=f"^cannot write '{workdir}/eval/results.md': it is a directory$"):
        evaluate.evaluate_run(smoke("albedo"), str(workdir))


def test_a_config_json_that_is_not_a_config_is_one_error(tmp_path):
    from maginet_jax.training import runs
    (tmp_path / "config.json").write_text("[]")
    with pytest.raises(UserError, match="its config.json holds a list, not a config"):
        runs.read_config(str(tmp_path), expect_stage="albedo", what="--workdir")
