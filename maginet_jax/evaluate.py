r"""Evaluates a run's latest checkpoint (or `--step`'s) on the held-out split, the way the paper reports results.

    python -m maginet_jax.evaluate --workdir=runs/albedo_demo [--step=N] [--compare=OTHER_WORKDIR]
    python -m maginet_jax.evaluate --workdir=runs/albedo_demo --config=configs/albedo.py:demo [--config.key=value ...]

Without --config the run's own `config.json` is used as saved; with it, that config and its overrides (e.g. to
score on another data root). Per pass and averaged over passes: masked MSE (shown ×1e-3, as the paper), PSNR,
SSIM (masked; Wang et al., as scikit-image computes it) and LPIPS (AlexNet, v0.1, whole image with the target
outside the mask), computed by `maginet_jax.evaluator`, the training loop's evaluator. Next to the model, a
"copy the input" row: what the network is given, scored as its output. Writes `<workdir>/eval/results.json`
and `<workdir>/eval/results.md` (one pair: another `--step`'s replace them), which record the held-out set (`TEST_SET_KEYS`); `--compare` prints this run beside
another run's results.json, with a warning when the two held-out sets differ. Stages:
albedo; refine; passes, which with `init.albedo_workdir` / `init.refine_workdir` is the chained pipeline (its
"albedo" row is then the refined stage-1 albedo, scored like the passes); joint, the fine-tuned pipeline, scored
the same way.
"""

from __future__ import annotations

import functools
import json
import sys

import jax
import numpy as np
from absl import app, flags, logging

from maginet_jax import evaluator, image_io, train
from maginet_jax.errors import UserError, check_number
from maginet_jax.evaluator import METRICS, ROWS
from maginet_jax.perceptual.lpips import MIN_SIZE
from maginet_jax.training import runs, sharding

_COMPARE = flags.DEFINE_string("compare", "", "Another workdir holding eval/results.json, printed side by side.")
_STEP = flags.DEFINE_integer("step", 0, "The checkpoint to score, e.g. one kept by keep_best_checkpoints (0: the "
                             "latest).")
_HEAD = {"mse": "MSE (×1e-3)", "psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS"}
# The settings that decide which held-out examples a run is scored on, and at what size.
TEST_SET_KEYS = {"data": ("source", "root", "input_file", "uv_maps_dir", "pass_files", "test_fraction", "resolution",
                          "crop_size", "seed"), "eval": ("num_examples",)}


def test_set(config) -> dict:
    """{"data.root": ..., ...}: what `TEST_SET_KEYS` names, as `config` sets it."""
    return {f"{section}.{key}": config[section].get(key) for section, keys in TEST_SET_KEYS.items() for key in keys}


def evaluate_run(config, workdir: str, step: int = 0) -> dict:
    """Scores the checkpoint of `step` in `workdir` (0: the latest; its parameters only); writes and returns the
    results."""
    check_number("--step", step, integer=True, at_least=0)
    if config.data.crop_size < MIN_SIZE["alex"]:  # AlexNet's feature maps would be empty, its LPIPS NaN
        raise UserError(f"data.crop_size {config.data.crop_size} is below {MIN_SIZE['alex']}, the smallest image "
                        f"the LPIPS metric (AlexNet) scores")
    mesh = sharding.make_mesh(config.mesh)
    stage = train.STAGES[config.stage]
    runs.pin_upstream(config, workdir, resumed=True)  # the upstream checkpoints it was trained against
    directory = runs.params_dir(workdir, what="--workdir", step=step, hint="")
    if directory.name != "state":
        raise UserError(f"--workdir {workdir!r} holds imported weights, not a trained run")
    step = int(directory.parent.name)
    if jax.process_index() == 0:  # where the results go, before the work that makes them
        runs.prepare_workdir(str(runs.run_path(workdir) / "eval"), what="the results directory")
        out = runs.run_path(workdir) / "eval"
        image_io.check_not_directories([out / "results.json", out / "results.md"])
    graphdefs, like = runs.abstract_networks(stage.networks(config), mesh)
    params = runs.restore_params(directory, like, what="--workdir")
    frozen_nets = jax.device_put(stage.frozen_nets(config, mesh), sharding.replicated(mesh))
    predict = functools.partial(stage.predict, config=config, graphdefs=graphdefs)
    with jax.set_mesh(mesh):  # as in training: the networks constrain their activations against it
        means, _, count = evaluator.evaluate(predict, params, frozen_nets, config, mesh, full=True)
    passes = [p for p in ("albedo", *config.get("passes", ())) if p in means["model"]]
    rows = {row: {p: means[row][p] for p in passes} for row in ROWS}
    if len(passes) > 1:
        for row in rows.values():
            row["mean"] = {m: float(np.mean([row[p][m] for p in passes])) for m in METRICS}
    results = {"stage": config.stage, "workdir": str(runs.run_path(workdir)), "step": step,
               "num_examples": count, "test_set": test_set(config), "passes": passes, "rows": rows}
    if jax.process_index() == 0:
        out = runs.run_path(workdir) / "eval"
        (out / "results.json").write_text(json.dumps(results, indent=2))
        (out / "results.md").write_text(markdown(results))
    return results


def _cell(metric: str, value: float) -> str:
    return f"{value * 1e3:.3f}" if metric == "mse" else f"{value:.4f}" if metric in ("ssim", "lpips") else f"{value:.2f}"


def markdown(results: dict) -> str:
    """The results as a Markdown table: one line per (pass, row)."""
    held_out = ", ".join(f"{k}={v!r}" for k, v in results["test_set"].items() if v not in ("", None))
    lines = [f"Stage `{results['stage']}`, step {results['step']}, {results['num_examples']} held-out examples "
             f"(`{results['workdir']}`; {held_out}).", "",
             "| pass | | " + " | ".join(_HEAD[m] for m in METRICS) + " |", "| --- | --- |" + " --- |" * len(METRICS)]
    for p in results["rows"]["model"]:
        for row in ROWS:
            name, values = f"**{row}**" if row == "model" else row, results["rows"][row][p]
            lines.append(f"| {p} | {name} | " + " | ".join(_cell(m, values[m]) for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def side_by_side(a: dict, b: dict) -> str:
    """Both runs' model rows, per pass and metric (passes present in both)."""
    ma, mb = a["rows"]["model"], b["rows"]["model"]
    lines = [f"| pass | metric | {a['workdir']} (step {a['step']}) | {b['workdir']} (step {b['step']}) |",
             "| --- | --- | --- | --- |"]
    for p in (p for p in ma if p in mb):
        lines += [f"| {p} | {_HEAD[m]} | {_cell(m, ma[p][m])} | {_cell(m, mb[p][m])} |" for m in METRICS]
    return "\n".join(lines)


def test_set_difference(a: dict, b: dict) -> str:
    """"" when both results were scored on the same held-out set; otherwise what differs, in words."""
    if "test_set" not in a or "test_set" not in b:
        return "one of the results.json files does not record its held-out set (evaluated by an older version)"
    differ = [f"{k} {a['test_set'][k]!r} against {b['test_set'].get(k)!r}" for k in a["test_set"]
              if a["test_set"][k] != b["test_set"].get(k)]
    return "; ".join(differ)


def read_results(workdir: str) -> dict:
    """The results.json an earlier evaluation wrote in `workdir` (for --compare); UserError unless it holds what
    `side_by_side` reads, so a bad one is refused before this run's evaluation, not after it."""
    path = runs.run_path(workdir) / "eval" / "results.json"
    if not path.is_file():
        raise UserError(f"--compare {workdir!r} has no eval/results.json: evaluate that run first")
    try:
        results = json.loads(path.read_text())
        side_by_side(results, results)  # reads every field the comparison will
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
        raise UserError(f"--compare {workdir!r}: its eval/results.json is not an evaluation's results "
                        f"({type(e).__name__}: {e}); evaluate that run again") from None
    return results


def main(argv) -> None:
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        sys.exit(f"maginet_jax.evaluate: error: unexpected arguments {argv[1:]}")
    try:
        workdir, config = train.WORKDIR.value, train.CONFIG.value
        if config is None:
            config = runs.read_config(workdir, expect_stage=tuple(train.STAGES), what="--workdir")
        other = read_results(_COMPARE.value) if _COMPARE.value else None
        train.validate(config)
        results = evaluate_run(config, workdir, _STEP.value)
    except UserError as e:
        sys.exit(f"maginet_jax.evaluate: error: {e}")
    print(markdown(results))
    if other is not None:
        print(side_by_side(results, other))
        if difference := test_set_difference(results, other):
            print(f"maginet_jax.evaluate: warning: the two runs were scored on different held-out examples: "
                  f"{difference}", file=sys.stderr)


def parse_flags(argv: list[str]) -> list[str]:
    """train's flag parsing; config overrides without --config are one error line (there is no file to
    override: the run's config.json is used as saved)."""
    if any(a.startswith("--config.") for a in argv) and not any(a.startswith("--config=") for a in argv):
        sys.exit("maginet_jax.evaluate: error: --config.KEY=VALUE overrides need --config=FILE; without "
                 "--config the run's config.json is used as saved")
    return train.parse_flags(argv, prog="maginet_jax.evaluate")


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main, flags_parser=parse_flags)
