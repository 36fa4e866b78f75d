"""The ablation tables: each model's held-out albedo metrics and lighting invariance over seeds, and whether the
difference is significant.

    python benchmarks/ablation_table.py runs/ablation                       # a directory of runs
    python benchmarks/ablation_table.py runs/ablation256 --record benchmarks/results/ablation-256
    python benchmarks/ablation_table.py benchmarks/results/ablation-256     # a directory of records

A run is `<dir>/<model>_seed<N>/` with `eval/results.json` (`python -m maginet_jax.evaluate`) and, optionally,
`eval/lighting.json` (`benchmarks/lighting_invariance.py --json`). `--record DIR` writes each such run's figures,
with the machine, versions, commit and settings they came from, to `DIR/<model>_seed<N>.json` (an existing record
is kept), and a directory of records reads like one of runs: records committed to the repository let an ablation
that needs more than one session be completed across sessions. Records of different settings are refused. The
machine, versions and commit are the recording process's, not read from the run: record a run where and when it was
trained (`ablation.sh` with ABLATION_RECORD records each run as it finishes).

The unpaired test is exact and assumes no distribution: the two-sided permutation p-value of the difference of
means, over every way of splitting the pooled runs into groups of the two sizes (252 splits for 5 seeds each, so
the smallest possible p is 2/252 ≈ 0.008). Welch's t (and its degrees of freedom) is printed beside it for
readers who prefer it. Runs of one seed share the data order and differ only in the network, and records may come
from different machines (XLA's numerics depend on the processor; each seed's pair is run on one), so the paired
test is printed too: the exact sign-flip p of the mean per-seed difference (2^n sign patterns, smallest p 2/2^n).
"""

import argparse
import collections
import glob
import itertools
import json
import os
import platform
import re
import sys
from importlib import metadata

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import provenance  # noqa: E402

NAMES = {"albedo": "MAGINet (AlbedoNet)", "unet_baseline": "U-Net baseline"}
# (section of a record, key, scale, digits, column): the held-out albedo metrics, then lighting invariance's.
METRICS = (("albedo", "mse", 1e3, 3, "albedo MSE (×1e-3)"), ("albedo", "psnr", 1, 2, "PSNR (dB)"),
           ("albedo", "ssim", 1, 4, "SSIM"), ("albedo", "lpips", 1, 4, "LPIPS"))
LIGHTING = (("lighting", "spread", 1e3, 3, "relighting spread (×1e-3)"),
            ("lighting", "mse", 1e3, 3, "albedo MSE over renders (×1e-3)"))


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


def sign_flip_p(differences) -> float:
    """Two-sided exact sign-flip p-value of mean(differences) (paired samples): the share of the 2^n ways of
    flipping the differences' signs whose |mean| is at least the observed one."""
    d = np.asarray(differences, np.float64)
    observed = abs(d.mean())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    return float(np.mean(np.abs((signs * d).mean(axis=1)) >= observed - 1e-12 * max(observed, 1.0)))


def _settings(config: dict) -> dict:
    """What must match between the runs of one ablation (besides the seed and the network)."""
    return {"crop_size": config["data"]["crop_size"], "num_train_examples": config["data"]["num_train_examples"],
            "num_train_steps": config["num_train_steps"], "batch_size": config["batch_size"],
            "learning_rate": config["optim"]["learning_rate"]}


def machine() -> str:
    """This machine's processor, as /proc/cpuinfo names it (with family and model), and its core count."""
    fields = {}
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    return f"{name} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')}), {os.cpu_count()} cores"


def _run_record(run_dir: str) -> dict:
    """A finished run's figures and settings, and where and with what they were made."""
    with open(os.path.join(run_dir, "eval", "results.json")) as f:
        results = json.load(f)
    lighting_path = os.path.join(run_dir, "eval", "lighting.json")
    lighting = None
    if os.path.exists(lighting_path):
        with open(lighting_path) as f:
            lighting = json.load(f)
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    return {"albedo": results["rows"]["model"]["albedo"], "step": results["step"], "lighting": lighting,
            "settings": _settings(config), "machine": machine(), "jax": metadata.version("jax"),
            "commit": provenance.commit()}


def _read(path: str, read) -> dict:
    """`read(path)`, a run's record, or one line naming `path` and what is wrong with it."""
    try:
        r = read(path)
    except (OSError, ValueError, KeyError, TypeError) as e:  # unreadable, not JSON, not evaluate's results
        raise SystemExit(f"ablation_table.py: error: {path}: not an evaluated run or a record ({e!r})") from None
    if not isinstance(r, dict) or not {"settings", "step", "albedo"} <= set(r):
        raise SystemExit(f"ablation_table.py: error: {path}: not a record (settings, step, albedo)")
    if r["step"] != r["settings"]["num_train_steps"]:
        raise SystemExit(f"ablation_table.py: error: {path} was evaluated at step {r['step']} of its "
                         f"{r['settings']['num_train_steps']}: finish its training and evaluate it again")
    return r


def _read_record(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def read_runs(root: str) -> dict[str, dict[int, dict]]:
    """{model: {seed: record}} of every evaluated run, or every record, under root (a record as `_run_record`);
    SystemExit for runs or records that cannot share a table (other settings, lighting measured otherwise, a run
    evaluated before its last step)."""
    runs = collections.defaultdict(dict)
    for path in sorted(glob.glob(os.path.join(root, "*_seed*"))):
        match = re.fullmatch(r"(.+)_seed(\d+)(\.json)?", os.path.basename(path))
        if not match:
            continue
        model, seed, is_record = match.groups()
        if is_record:
            runs[model][int(seed)] = _read(path, _read_record)
        elif os.path.exists(os.path.join(path, "eval", "results.json")):
            runs[model][int(seed)] = _read(path, _run_record)
    for what, key in (("settings", lambda r: r["settings"]),
                      ("lighting figures' textures and lightings", lambda r: r.get("lighting") and {
                          k: r["lighting"].get(k) for k in ("num_textures", "num_lights")})):
        values = {json.dumps(key(r), sort_keys=True) for by_seed in runs.values() for r in by_seed.values()
                  if key(r)}
        if len(values) > 1:
            raise SystemExit(f"ablation_table.py: error: the runs under {root} differ in their {what}: "
                             + " vs ".join(sorted(values)))
    return runs


def record(runs: dict[str, dict[int, dict]], out_dir: str) -> list[str]:
    """Writes each run's record to `out_dir/<model>_seed<N>.json` unless one is there; the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for model, by_seed in runs.items():
        for seed, r in by_seed.items():
            path = os.path.join(out_dir, f"{model}_seed{seed}.json")
            if not os.path.exists(path):
                with open(path, "w") as f:
                    json.dump(r, f, indent=1)
                    f.write("\n")
                written.append(path)
    return written


def _values(by_seed: dict[int, dict], section: str, key: str, scale: float) -> dict[int, float]:
    """{seed: record[section][key] × scale}, leaving out runs without the section (lighting invariance not run)."""
    return {s: r[section][key] * scale for s, r in by_seed.items() if r.get(section)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="runs/ablation", help="a directory of runs or of records")
    parser.add_argument("--record", metavar="DIR", help="also write each run's record to DIR")
    args = parser.parse_args(argv)
    if args.record is not None:  # before reading: a record directory that cannot be made is one line
        try:
            os.makedirs(args.record, exist_ok=True)
        except OSError as e:
            raise SystemExit(f"ablation_table.py: error: --record={args.record}: cannot make it ({e.strerror})")
    runs = read_runs(args.root)
    if not runs:
        raise SystemExit(f"ablation_table.py: error: no evaluated runs or records under {args.root}")
    if args.record is not None:
        for path in record(runs, args.record):
            print(f"recorded {path}")
    metrics = METRICS + (LIGHTING if any(r.get("lighting") for g in runs.values() for r in g.values()) else ())
    settings = next(iter(next(iter(runs.values())).values()))["settings"]
    print(f"{settings['crop_size']}², {settings['num_train_steps']} steps of batch {settings['batch_size']}")
    print()
    print("| model | seeds | " + " | ".join(m[4] for m in metrics) + " |")
    print("| --- | --- |" + " --- |" * len(metrics))
    for model, by_seed in runs.items():
        cells = []
        for section, key, scale, digits, _ in metrics:
            v = np.array(list(_values(by_seed, section, key, scale).values()))
            cells.append(f"{v.mean():.{digits}f} ± {v.std(ddof=1) if len(v) > 1 else 0:.{digits}f}")
        print(f"| {NAMES.get(model, model)} | {','.join(map(str, sorted(by_seed)))} | " + " | ".join(cells) + " |")
    print()
    print("| model | seed | " + " | ".join(m[4] for m in metrics) + " | machine |")
    print("| --- | --- |" + " --- |" * (len(metrics) + 1))
    for model, by_seed in runs.items():
        for seed in sorted(by_seed):
            cells = [f"{_values({seed: by_seed[seed]}, sec, k, sc).get(seed, float('nan')):.{d}f}"
                     for sec, k, sc, d, _ in metrics]
            print(f"| {NAMES.get(model, model)} | {seed} | " + " | ".join(cells) + f" | {by_seed[seed]['machine']} |")
    a, b = runs.get("albedo", {}), runs.get("unet_baseline", {})
    if len(a) >= 2 and len(b) >= 2:
        print()
        print("| metric | MAGINet − U-Net (mean) | Welch t (df) | exact permutation p (two-sided) | seeds paired | "
              "exact sign-flip p (paired) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for section, key, scale, digits, label in metrics:
            va, vb = _values(a, section, key, scale), _values(b, section, key, scale)
            x, y = np.array(list(va.values())), np.array(list(vb.values()))
            t, df = welch_t(x, y)
            paired = sorted(set(va) & set(vb))
            d = [va[s] - vb[s] for s in paired]
            print(f"| {label} | {x.mean() - y.mean():+.{digits}f} | {t:+.2f} ({df:.1f}) | {permutation_p(x, y):.3f} | "
                  f"{len(paired)} | {sign_flip_p(d) if paired else float('nan'):.3f} |")


if __name__ == "__main__":
    main()
