"""The ablation tables: each model's held-out albedo metrics over seeds, and whether the difference is significant.

    python benchmarks/ablation_table.py runs/ablation

Reads `<dir>/<model>_seed<N>/eval/results.json` (written by `python -m maginet_jax.evaluate`). The test is
exact and assumes no distribution: the two-sided permutation p-value of the difference of means, over every
way of splitting the pooled runs into groups of the two sizes (252 splits for 5 seeds each, so the smallest
possible p is 2/252 ≈ 0.008). Welch's t (and its degrees of freedom) is printed beside it for readers who
prefer it.
"""

import collections
import glob
import itertools
import json
import os
import re
import sys

import numpy as np

NAMES = {"albedo": "MAGINet (AlbedoNet)", "unet_baseline": "U-Net baseline"}
METRICS = (("mse", 1e3, 3, "albedo MSE (×1e-3)"), ("psnr", 1, 2, "PSNR (dB)"), ("ssim", 1, 4, "SSIM"),
           ("lpips", 1, 4, "LPIPS"))


def permutation_p(a, b) -> float:
    """Two-sided exact permutation p-value of mean(a) − mean(b): the share of all splits of a ∪ b into groups
    of len(a) and len(b) whose |difference of means| is at least the observed one."""
    pooled, n = np.concatenate([a, b]).astype(np.float64), len(a)
    observed = abs(np.mean(a) - np.mean(b))
    total, extreme = 0, 0
    for idx in itertools.combinations(range(len(pooled)), n):
        mask = np.zeros(len(pooled), bool)
        mask[list(idx)] = True
        total += 1
        extreme += abs(pooled[mask].mean() - pooled[~mask].mean()) >= observed - 1e-12 * max(observed, 1.0)
    return extreme / total


def welch_t(a, b) -> tuple[float, float]:
    """Welch's t statistic of mean(a) − mean(b) and its Welch–Satterthwaite degrees of freedom."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return float(t), float(df)


def read_runs(root: str) -> dict[str, dict[int, dict]]:
    """{model: {seed: albedo metrics row}} of every evaluated run under root."""
    runs = collections.defaultdict(dict)
    for path in sorted(glob.glob(os.path.join(root, "*_seed*", "eval", "results.json"))):
        model, seed = re.fullmatch(r"(.+)_seed(\d+)", os.path.basename(os.path.dirname(os.path.dirname(path)))).groups()
        with open(path) as f:
            runs[model][int(seed)] = json.load(f)["rows"]["model"]["albedo"]
    return runs


def main(root: str) -> None:
    runs = read_runs(root)
    print("| model | seeds | " + " | ".join(m[3] for m in METRICS) + " |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model, by_seed in runs.items():
        cells = []
        for metric, scale, digits, _ in METRICS:
            v = np.array([r[metric] for r in by_seed.values()]) * scale
            cells.append(f"{v.mean():.{digits}f} ± {v.std(ddof=1) if len(v) > 1 else 0:.{digits}f}")
        print(f"| {NAMES.get(model, model)} | {','.join(map(str, sorted(by_seed)))} | " + " | ".join(cells) + " |")
    print()
    print("| model | seed | " + " | ".join(m[3] for m in METRICS) + " |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model, by_seed in runs.items():
        for seed, r in sorted(by_seed.items()):
            print(f"| {NAMES.get(model, model)} | {seed} | {r['mse'] * 1e3:.3f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                  f"{r['lpips']:.4f} |")
    a, b = runs.get("albedo", {}), runs.get("unet_baseline", {})
    if len(a) >= 2 and len(b) >= 2:
        print()
        print("| metric | MAGINet − U-Net (mean) | Welch t (df) | exact permutation p (two-sided) |")
        print("| --- | --- | --- | --- |")
        for metric, scale, digits, label in METRICS:
            x, y = (np.array([r[metric] for r in g.values()]) * scale for g in (a, b))
            t, df = welch_t(x, y)
            print(f"| {label} | {x.mean() - y.mean():+.{digits}f} | {t:+.2f} ({df:.1f}) | {permutation_p(x, y):.3f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/ablation")
