r"""Evaluates a run's latest checkpoint on the held-out split, the way the paper reports results.

    python -m maginet_jax.evaluate --config=configs/albedo.py:demo --workdir=runs/albedo_demo \
        [--compare=OTHER_WORKDIR] [--config.key=value ...]

Per pass and averaged over passes: masked MSE (shown ×1e-3, as the paper), PSNR, SSIM (masked; Wang et al.,
as scikit-image computes it) and LPIPS (AlexNet, v0.1, whole image with the target outside the mask). Next to
the model, a "copy the input" row: what the network is given, scored as its output. Writes
`<workdir>/eval/results.json` and `<workdir>/eval/results.md`; `--compare` prints this run beside another
run's results.json. Stages: albedo; refine; passes, which with `init.albedo_workdir` / `init.refine_workdir`
is the chained pipeline (its "albedo" row is then the refined stage-1 albedo, scored like the passes).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags, logging

from maginet_jax import train
from maginet_jax.errors import UserError

_COMPARE = flags.DEFINE_string("compare", "", "Another workdir holding eval/results.json, printed side by side.")
METRICS = ("mse", "psnr", "ssim", "lpips")
ROWS = ("model", "copy the input")
_HEAD = {"mse": "MSE (×1e-3)", "psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS"}


def _score_fn(stage):
    """Jitted (columns) -> {row: {pass: {metric: per-example values}}}."""
    import jax
    from maginet_jax import image_metrics, losses
    from maginet_jax.perceptual.lpips import LPIPS
    from maginet_jax.perceptual.losses import composite, to_rgb
    from maginet_jax.stages.passes import match_channels

    lpips = LPIPS("alex")

    def scores(pred, target, mask):
        pred = composite(match_channels(pred, target.shape[-1]), target, mask)
        mse = losses.per_example_masked_mse(pred, target, mask)
        return {"mse": mse, "psnr": losses.psnr(mse), "ssim": image_metrics.ssim(pred, target, mask),
                "lpips": lpips(to_rgb(pred) * 2.0 - 1.0, to_rgb(target) * 2.0 - 1.0)}

    def fn(columns):
        rows = dict(zip(ROWS, (stage.scored, stage.copy_input)))
        return {row: {p: scores(columns[a], columns[b], columns["mask"]) for p, (a, b) in pairs.items()}
                for row, pairs in rows.items()}
    return jax.jit(fn)


def evaluate_run(config, workdir: str) -> dict:
    """Scores the latest checkpoint in `workdir`; writes and returns the results."""
    import jax
    from jax.experimental import multihost_utils
    from maginet_jax import stages
    from maginet_jax.training import loop, runs, sharding

    mesh = sharding.make_mesh(config.mesh)
    stage = stages.make_stage(config, mesh)
    directory = runs.params_dir(workdir, what="--workdir")
    if os.path.basename(directory) != "state":
        raise UserError(f"--workdir {workdir!r} holds imported weights, not a trained run")
    step = int(os.path.basename(os.path.dirname(directory)))
    state = stage.initial_state
    state = state.replace(**{k: runs.restore_params(directory, getattr(state, k), key=k, what="--workdir")
                             for k in stage.param_keys})
    score = _score_fn(stage)
    sums, count = None, 0
    for _, columns, valid in loop.eval_batches(config, mesh, stage, state):
        got = multihost_utils.process_allgather({"s": score(columns), "valid": valid}, tiled=True)
        keep = np.asarray(got["valid"], bool)
        batch_sums = jax.tree.map(lambda v: float(np.sum(np.asarray(v, np.float64)[keep])), got["s"])
        sums = batch_sums if sums is None else jax.tree.map(lambda a, b: a + b, sums, batch_sums)
        count += int(keep.sum())
    passes = list(stage.scored)
    rows = {row: {p: {m: sums[row][p][m] / count for m in METRICS} for p in passes} for row in ROWS}
    if len(passes) > 1:
        for row in rows.values():
            row["mean"] = {m: float(np.mean([row[p][m] for p in passes])) for m in METRICS}
    results = {"stage": config.stage, "workdir": os.path.abspath(workdir), "step": step, "num_examples": count,
               "passes": passes, "rows": rows}
    if jax.process_index() == 0:
        out = os.path.join(workdir, "eval")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write(markdown(results))
    return results


def _cell(metric: str, value: float) -> str:
    return f"{value * 1e3:.3f}" if metric == "mse" else f"{value:.4f}" if metric in ("ssim", "lpips") else f"{value:.2f}"


def markdown(results: dict) -> str:
    """The results as a Markdown table: one line per (pass, row)."""
    lines = [f"Stage `{results['stage']}`, step {results['step']}, {results['num_examples']} held-out examples "
             f"(`{results['workdir']}`).", "",
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


def read_results(workdir: str) -> dict:
    path = os.path.join(workdir, "eval", "results.json")
    if not os.path.isfile(path):
        raise UserError(f"--compare {workdir!r} has no eval/results.json: evaluate that run first")
    with open(path) as f:
        return json.load(f)


def main(argv) -> None:
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        sys.exit(f"maginet_jax.evaluate: error: unexpected arguments {argv[1:]}")
    try:
        config, workdir = train.CONFIG.value, train.WORKDIR.value
        other = read_results(_COMPARE.value) if _COMPARE.value else None
        train.validate_config(config)
        results = evaluate_run(config, workdir)
    except UserError as e:
        sys.exit(f"maginet_jax.evaluate: error: {e}")
    print(markdown(results))
    if other is not None:
        print(side_by_side(results, other))


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: train.parse_flags(argv, prog="maginet_jax.evaluate"))
