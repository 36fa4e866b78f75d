"""Renders per second of the jitted relighting renderer (`maginet_jax.relighting.render_batch`).

    python benchmarks/relight_speed.py [--sizes 512,1024] [--batch 8] [--rounds 10]

For each size: one face under one rig (what the command line does per image) and a batch of `--batch` rigs over
one face (what a light sweep does), timed in interleaved rounds after a compile; prints median renders/s.
The passes are a synthetic face's ground truth; the rig has three lights, an SH environment and every material
edit on, so no term is skipped. Sizes from 16 (the synthetic face's smallest); a sweep holds at most
`relighting.MAX_SWEEP_FRAMES` rigs and `relighting.MAX_SWEEP_PIXELS` pixels of frames, as the command's does.
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.layer_timing import positive_int, positive_ints  # noqa: E402
from data_pipeline import synthetic  # noqa: E402
from maginet_jax import relighting  # noqa: E402

MIN_SIZE = 16  # synthetic.generate's smallest
RIG = relighting.Rig(lights=((-30, 20, 0.8, 0.8, 0.8), (50, 0, 0.3, 0.3, 0.4), (0, 70, 0.2, 0.2, 0.2)),
                  sh=tuple(map(tuple, relighting.PRESETS["studio"])), tint=(1.0, 0.95, 0.9), saturation=1.2,
                  specular_scale=1.5, translucency_scale=1.2, ao_strength=1.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=positive_ints, default="512,1024")
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--rounds", type=positive_int, default=10)
    args = parser.parse_args()
    if min(args.sizes) < MIN_SIZE:
        parser.error(f"argument --sizes: {min(args.sizes)}: want at least {MIN_SIZE}")
    if args.batch > relighting.MAX_SWEEP_FRAMES or args.batch * max(args.sizes)**2 > relighting.MAX_SWEEP_PIXELS:
        parser.error(f"--batch={args.batch} at {max(args.sizes)}²: a sweep holds at most "
                     f"{relighting.MAX_SWEEP_FRAMES} frames and {relighting.MAX_SWEEP_PIXELS} pixels")
    cases = {}
    for size in args.sizes:
        sample = synthetic.generate(0, 0, size, split="test")
        passes = {k: jnp.asarray(sample[k]) for k in relighting.PASSES}
        cases[f"{size}² x1"] = (passes, RIG.arrays(), 1)
        cases[f"{size}² sweep x{args.batch}"] = (passes, relighting.sweep_rigs(RIG, args.batch), args.batch)
    for passes, rig, _ in cases.values():
        relighting.render_batch(passes, rig).block_until_ready()  # compile
    times = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (passes, rig, _) in cases.items():
            start = time.perf_counter()
            relighting.render_batch(passes, rig).block_until_ready()
            times[name].append(time.perf_counter() - start)
    print(f"{jax.devices()[0].device_kind} ({jax.device_count()} devices), jax {jax.__version__}, "
          f"{args.rounds} interleaved rounds")
    print("| case | median ms | renders/s |\n| --- | --- | --- |")
    for name, (_, _, count) in cases.items():
        median = float(np.median(times[name]))
        print(f"| {name} | {median * 1e3:.1f} | {count / median:.1f} |")


if __name__ == "__main__":
    main()
