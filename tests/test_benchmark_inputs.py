"""Bad input to a benchmark script is one error line before any work (no traceback, no table of nothing)."""

import os
import subprocess
import sys

import pytest

from conftest import H100_PROFILE, REPO

_PY = sys.executable


def test_conv_kernels_bad_shape_is_one_line():
    r = subprocess.run([sys.executable, "benchmarks/conv_kernels.py", "--shapes=8:2:3:2"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "conv_kernels.py: error: --shapes='8:2:3:2': each must be SIZE:CIN:COUT:KERNEL, positive integers with an "
        "odd kernel"]


@pytest.mark.parametrize("script, args, error", [
    ("conv_kernels.py", ["--rounds=0"], "argument --rounds: '0': want a positive integer"),
    ("norm_kernels.py", ["--batch=0"], "argument --batch: '0': want a positive integer"),
    ("relight_speed.py", ["--sizes=512,abc"], "argument --sizes: '512,abc': want positive integers, comma-separated"),
    ("dry_run_table.py", ["--rows=data,bogus"], "--rows: bogus unknown; choose from " + ",".join([
        "data", "fsdp", "spatial", "spatial_remat", "bf16", "fsdp_bf16_remat"])),
    ("dry_run_table.py", ["--sizes=1024,0"], "--devices and --sizes must be positive integers"),
    ("dry_run_table.py", ["--sizes=64,128,064"], "--sizes: 64 given more than once"),  # were compiled twice
    ("dry_run_table.py", ["--rows=data,fsdp,data"], "--rows: data given more than once"),
    ("dry_run_table.py", ["--devices=100000"], "--devices=100000 must be in [1, 16384]"),  # minutes, then a table
])
def test_bad_counts_are_one_error_line(script, args, error):
    """Before any work: these were tracebacks (a KeyError, int('abc'), a zero batch in XLA) or a table of NaN."""
    r = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode in (1, 2) and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"{script}: error: {error}"


@pytest.mark.parametrize("cmd, error", [
    ([_PY, "benchmarks/perceptual_cost.py", "--config=configs/refine.py:smoke", "--steps=0"],
     "perceptual_cost.py: error: flag --steps=0: 0 is not a positive integer"),
    ([_PY, "benchmarks/perceptual_cost.py", "--config=configs/refine.py:smoke", "--variants=base,base"],
     "perceptual_cost.py: error: --variants must be some of ['base', 'vgg', 'lpips', 'both'], each once, got "
     "['base', 'base']"),
    ([_PY, "benchmarks/perceptual_cost.py", "--config=configs/refine.py:smoke", "--config.batch_size=0"],
     "perceptual_cost.py: error: batch_size must be an integer >= 1, got 0"),
    ([_PY, "benchmarks/flat_pass_baseline.py", "--num_examples=0"],
     "flat_pass_baseline.py: error: argument --num_examples: '0': want a positive integer"),
    ([_PY, "benchmarks/flat_pass_baseline.py", "--resolution=8"],
     "flat_pass_baseline.py: error: argument --resolution: 8: want at least 16"),
    ([_PY, "benchmarks/relight_speed.py", "--sizes=8"],
     "relight_speed.py: error: argument --sizes: 8: want at least 16"),
    ([_PY, "benchmarks/kill_resume.py", "--kills=0"], "kill_resume.py: error: argument --kills: '0': want a positive "
                                                      "integer"),
    ([_PY, "benchmarks/lighting_invariance.py", "--workdir=runs/none", "--num_lights=1"],
     "lighting_invariance.py: error: argument --num_lights: 1: want at least 2 (the spread over one lighting is 0)"),
    ([_PY, "benchmarks/lighting_invariance.py", "--workdir=runs/none", "--num_textures=0"],
     "lighting_invariance.py: error: argument --num_textures: '0': want a positive integer"),
    ([_PY, "benchmarks/dry_run_table.py", "--config=configs/refine.py:smoke", "--rows="],
     "dry_run_table.py: error: --rows and --sizes must name at least one each"),
    ([_PY, "benchmarks/dry_run_table.py", "--config=configs/refine.py:smoke", "--devices=3", "--sizes=32",
      "--rows=data,spatial"], "dry_run_table.py: error: the spatial row at 32²: data.crop_size 32 is not divisible "
                              "by 3: the mesh's spatial axis splits the image height"),
    ([_PY, "benchmarks/conv_forms.py", "--scale=65"], "conv_forms.py: error: --scale=65: at most 64"),
    ([_PY, "benchmarks/cpu_options.py", "--config=configs/refine.py:smoke", "--steps=0"],
     "cpu_options: error: --steps=0: time at least one round"),
    ([_PY, "benchmarks/cpu_options.py", "--config=configs/refine.py:smoke", "--json=/tmp/x.json"],
     "cpu_options: error: --json: benchmarks.compare's, not taken here (--steps and --warmup are)"),
    ([_PY, "-m", "benchmarks.roofline", f"--from_trace={H100_PROFILE}", "--top=0"],
     "benchmarks.roofline: error: argument --top: '0': want a positive integer"),
    ([_PY, "-m", "benchmarks.roofline", f"--from_trace={H100_PROFILE}", "--device="],
     "roofline.py: error: --device='': expected one of ['H100 PCIe', 'H100 NVL', 'H200 NVL', 'H100 SXM', 'H200 SXM']"),
    ([_PY, "-m", "benchmarks.step_profile", "--config=configs/refine.py:smoke", "--traced_steps=0"],
     "benchmarks.step_profile: error: flag --traced_steps=0: 0 is not a positive integer"),
    ([_PY, "-m", "benchmarks.step_profile", f"--from_trace={H100_PROFILE}", "--config=configs/refine.py:smoke"],
     "step_profile.py: error: give --config (to profile a stage) or --from_trace (to read a kept trace), one"),
    ([_PY, "-m", "benchmarks.step_profile", "--config=configs/refine.py:smoke", "--config.batch_size=0"],
     "step_profile.py: error: batch_size must be an integer >= 1, got 0"),
    ([_PY, "-m", "benchmarks.step_profile", "--config=configs/refine.py:smoke", "--trace_dir={tmp}/file"],
     "step_profile.py: error: --trace_dir={tmp}/file: cannot make the directory (File exists)"),
    (["bash", "benchmarks/ablation.sh", "0", "x"], "ablation.sh: error: seed 'x' is not a non-negative integer"),
    (["bash", "benchmarks/joint_vs_separate.sh", "{tmp}/run", "{tmp}/run", "{tmp}/run", "{tmp}/out", "demo", "0"],
     "joint_vs_separate.sh: error: STEPS '0' is not a positive integer"),
    (["bash", "benchmarks/joint_vs_separate.sh", "{tmp}/out/albedo", "{tmp}/run", "{tmp}/run", "{tmp}/out", "demo"],
     "joint_vs_separate.sh: error: {tmp}/out/albedo lies in {tmp}/out/albedo, which this script replaces"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, cmd, error):
    """Each was a traceback (a ZeroDivisionError, a UserError, numpy's ValueError), a table of nothing or of NaN, a
    figure over one lighting (0 whatever the network), an error only after the profile or an earlier seed's
    training, a copy that removed the run it copied, or a flag taken and ignored. A `python` stand-in on PATH logs
    what the shell scripts would run: nothing."""
    (tmp_path / "file").write_text("")
    for run in ("run", "out/albedo"):  # what a training run leaves, for joint_vs_separate.sh's checks
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "config.json").write_text("{}")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/log\nexec {_PY} "$@"\n')
    (tmp_path / "bin" / "python").chmod(0o755)
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "PATH": f"{tmp_path}/bin:{os.environ['PATH']}",
           "ABLATION_ROOT": str(tmp_path / "ablation")}
    r = subprocess.run([c.format(tmp=tmp_path) for c in cmd], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode in (1, 2) and r.stdout == "" and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == error.format(tmp=tmp_path)
    assert not (tmp_path / "log").exists() or "maginet_jax.train" not in (tmp_path / "log").read_text()
    assert (tmp_path / "out" / "albedo" / "config.json").exists()
