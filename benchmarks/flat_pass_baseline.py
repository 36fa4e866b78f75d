"""Held-out masked MSE of predicting each pass as one constant (the split's own masked mean per channel).

    python benchmarks/flat_pass_baseline.py [--resolution 256] [--num_examples 64]

The "oracle constant" row of the README's passes-demo table: what a translator must beat to have learnt more
than each pass's average. Scored like training's eval (per-example masked MSE, averaged), ×1e-3. The examples are
held in memory, at most MAX_PIXELS pixels of them (64 at 1024²).
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.layer_timing import positive_int  # noqa: E402
from data_pipeline import loader, synthetic  # noqa: E402

PASSES = ("ambient_occlusion", "normal", "specular", "translucency", "raw_diffuse")
MIN_RESOLUTION = 16  # the synthetic generator's smallest
MAX_PIXELS = 64 * 1024**2  # about 5 GiB of decoded passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=positive_int, default=256, help=f"at least {MIN_RESOLUTION}")
    parser.add_argument("--num_examples", type=positive_int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="the synthetic dataset's data.seed, in [0, 2**32)")
    args = parser.parse_args()
    if args.resolution < MIN_RESOLUTION:
        parser.error(f"argument --resolution: {args.resolution}: want at least {MIN_RESOLUTION}")
    if args.num_examples * args.resolution**2 > MAX_PIXELS:
        parser.error(f"--num_examples={args.num_examples} at --resolution={args.resolution}: more than {MAX_PIXELS} "
                     "pixels to hold in memory")
    if not 0 <= args.seed < 2**32:
        parser.error(f"argument --seed: {args.seed}: want an integer in [0, 2**32)")
    src = synthetic.SyntheticSource(num_records=args.num_examples, resolution=args.resolution, split="test",
                                  seed=args.seed, passes=PASSES)
    records = [loader.Decode().map(src[i]) for i in range(len(src))]
    masks = np.stack([r["mask"] for r in records])
    scores = {}
    for p in PASSES:
        x = np.stack([r[p] for r in records])
        constant = (x * masks).sum(axis=(0, 1, 2)) / masks.sum()
        per_example = ((x - constant) ** 2 * masks).sum(axis=(1, 2, 3)) / (masks.sum(axis=(1, 2, 3)) * x.shape[-1])
        scores[p] = float(per_example.mean()) * 1e3
    for p, v in scores.items():
        print(f"{p:18s} {v:8.2f}")
    print(f"{'mean':18s} {np.mean(list(scores.values())):8.2f}")


if __name__ == "__main__":
    main()
