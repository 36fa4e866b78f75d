"""Lighting invariance of a stage-1 run: the same held-out textures relit K times, and how much the predicted
albedo moves with the light.

    python benchmarks/lighting_invariance.py --workdir=runs/albedo_demo [--num_textures 32] [--num_lights 8] \
        [--json OUT.json]

Each synthetic test texture (the run's own data settings) is rendered under K random lightings drawn like the
training data's; the run predicts the albedo of each. Reported, ×1e-3: the relighting spread (per-pixel
variance of the prediction across the K lightings, averaged inside the mask: 0 means perfectly invariant) and
the masked MSE against the true albedo over all renders. The paper claims better lighting invariance for
MAGINet than for U-Nets; docs/ablation.md puts both through this. At least two lightings: the spread over one is 0
whatever the network. --json replaces an earlier report of this script, never another file (a run's config.json).
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.layer_timing import check_output_file, positive_int  # noqa: E402
from data_pipeline import shading, synthetic  # noqa: E402
from maginet_jax.errors import UserError  # noqa: E402
from maginet_jax.stages import supervised  # noqa: E402
from maginet_jax.training import runs, sharding  # noqa: E402


REPORT_KEYS = {"spread", "mse", "num_textures", "num_lights"}


def check_json(path: str) -> None:
    """UserError unless --json can take the report: see `layer_timing.check_output_file`, and a file already there
    must be an earlier report of this script (pointed at the run's config.json, it replaced it)."""
    check_output_file("--json", path)
    if os.path.exists(path):
        try:
            with open(path) as f:
                ours = set(json.load(f)) == REPORT_KEYS
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            raise UserError(f"--json={path} exists and is not a report of this script: it is left alone")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--num_textures", type=positive_int, default=32)
    parser.add_argument("--num_lights", type=positive_int, default=8, help="at least 2")
    parser.add_argument("--json", help="also write the two figures (unscaled) to this file")
    args = parser.parse_args()
    if args.num_lights < 2:
        parser.error(f"argument --num_lights: {args.num_lights}: want at least 2 (the spread over one lighting is 0)")

    mesh = sharding.make_mesh((("data", 1),), jax.devices()[:1])
    try:
        if args.json is not None:
            check_json(args.json)
        config, graphdefs, params = runs.load_params(args.workdir, supervised.networks, stage="albedo",
                                                     what="--workdir", mesh=mesh)
    except UserError as e:
        sys.exit(f"lighting_invariance.py: error: {e}")
    predict = jax.jit(lambda p, x: nnx.merge(graphdefs["model"], p["model"])(x)[0])
    size = config.data.crop_size
    spreads, errors = [], []
    for i in range(args.num_textures):
        sample = synthetic.generate(config.data.seed, i, size, "test")
        rng = np.random.default_rng([7, i])
        renders = np.stack([shading.render(sample, shading.sample_lights(rng)) * sample["mask"]
                            for _ in range(args.num_lights)]).astype(np.float32)
        pred = np.asarray(predict(params, renders))
        mask = sample["mask"]
        spreads.append(float((pred.var(axis=0) * mask).sum() / (mask.sum() * 3)))
        errors.append(float(((pred - sample["albedo"]) ** 2 * mask).sum() / (mask.sum() * 3 * args.num_lights)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"spread": float(np.mean(spreads)), "mse": float(np.mean(errors)),
                       "num_textures": args.num_textures, "num_lights": args.num_lights}, f, indent=1)
    print(f"{args.workdir}: relighting spread {np.mean(spreads) * 1e3:.3f} (x1e-3), "
          f"albedo MSE over relit renders {np.mean(errors) * 1e3:.3f} (x1e-3), "
          f"{args.num_textures} textures x {args.num_lights} lightings")


if __name__ == "__main__":
    main()
