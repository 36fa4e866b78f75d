"""The ablation table: mean ± std over seeds of each model's held-out albedo metrics.

    python benchmarks/ablation_table.py runs/ablation

Reads `<dir>/<model>_seed<N>/eval/results.json` (written by `python -m maginet_jax.evaluate`).
"""

import collections
import glob
import json
import os
import re
import sys

import numpy as np

NAMES = {"albedo": "MAGINet (AlbedoNet)", "unet_baseline": "U-Net baseline"}


def main(root: str) -> None:
    runs = collections.defaultdict(dict)
    for path in sorted(glob.glob(os.path.join(root, "*_seed*", "eval", "results.json"))):
        model, seed = re.fullmatch(r"(.+)_seed(\d+)", os.path.basename(os.path.dirname(os.path.dirname(path)))).groups()
        with open(path) as f:
            runs[model][int(seed)] = json.load(f)["rows"]["model"]["albedo"]
    print("| model | seeds | albedo MSE (×1e-3) | PSNR (dB) | SSIM | LPIPS |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model, by_seed in runs.items():
        cells = []
        for metric, scale, digits in (("mse", 1e3, 3), ("psnr", 1, 2), ("ssim", 1, 4), ("lpips", 1, 4)):
            v = np.array([r[metric] for r in by_seed.values()]) * scale
            cells.append(f"{v.mean():.{digits}f} ± {v.std(ddof=1) if len(v) > 1 else 0:.{digits}f}")
        print(f"| {NAMES.get(model, model)} | {','.join(map(str, sorted(by_seed)))} | " + " | ".join(cells) + " |")
    print()
    print("| model | seed | albedo MSE (×1e-3) | PSNR (dB) | SSIM | LPIPS |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model, by_seed in runs.items():
        for seed, r in sorted(by_seed.items()):
            print(f"| {NAMES.get(model, model)} | {seed} | {r['mse'] * 1e3:.3f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                  f"{r['lpips']:.4f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/ablation")
