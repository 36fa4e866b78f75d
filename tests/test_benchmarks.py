"""Every script in benchmarks/ runs, with tiny settings, so no refactor can strand one (figures are not
checked here: they are measured on an idle machine, see the README). The comparison with PyTorch, the profile
readers and the scripts' input checks have their own modules: test_benchmark_compare.py,
test_benchmark_profiles.py and test_benchmark_inputs.py."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, run_script

SCRIPTS = sorted(f for f in os.listdir(os.path.join(REPO, "benchmarks")) if f.endswith((".py", ".sh")))


@pytest.fixture(scope="module")
def ablation_root(tmp_path_factory):
    """benchmarks/ablation.sh at :smoke for seed 0, two levels, no LPIPS: two trained and evaluated runs."""
    root = str(tmp_path_factory.mktemp("ablation"))
    run_script("bash", "benchmarks/ablation.sh", "0", env={
        "ABLATION_VARIANT": "smoke", "ABLATION_ROOT": root,
        "ABLATION_ARGS": "--config.model.widths=(8,16) --config.losses.lpips=0 --config.num_train_steps=4"})
    return root


def test_every_script_has_a_tiny_run():
    assert set(SCRIPTS) == {"ablation.sh", "ablation_table.py", "compare.py", "compare_gpu.sh", "compare_report.py",
                            "compare_variants.py", "conv_forms.py", "conv_kernels.py", "cpu_options.py", "dry_run_table.py", "layer_timing.py",
                            "flat_pass_baseline.py", "kill_resume.py", "lighting_invariance.py",
                            "perceptual_cost.py", "relight_speed.py", "step_profile.py", "norm_kernels.py",
                            "joint_vs_separate.sh", "roofline.py", "provenance.py", "datasheets.py"}, \
        "add a tiny run of the new script to a tests/test_benchmark*.py (joint_vs_separate.sh's is in " \
        "test_joint.py: it needs the chained runs)"


def test_ablation(ablation_root, tmp_path):
    assert sorted(os.listdir(ablation_root)) == ["albedo_seed0", "unet_baseline_seed0"]
    assert os.path.exists(f"{ablation_root}/albedo_seed0/eval/lighting.json")
    table = run_script(sys.executable, "benchmarks/ablation_table.py", ablation_root, "--record", str(tmp_path))
    assert "| MAGINet (AlbedoNet) | 0 |" in table and "| U-Net baseline | 0 |" in table
    assert "relighting spread" in table
    # Records read back as the runs did (the lines that say "recorded" aside), and carry their origin.
    assert run_script(sys.executable, "benchmarks/ablation_table.py", str(tmp_path)) == "".join(
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
        table = run_script(sys.executable, "benchmarks/ablation_table.py", f"benchmarks/results/{root}")
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
    out = run_script(sys.executable, "benchmarks/flat_pass_baseline.py", "--resolution", "32", "--num_examples", "4")
    assert len(out.strip().splitlines()) == 6 and out.splitlines()[-1].startswith("mean")


def test_lighting_invariance(ablation_root):
    out = run_script(sys.executable, "benchmarks/lighting_invariance.py", f"--workdir={ablation_root}/albedo_seed0",
                     "--num_textures", "2", "--num_lights", "2")
    assert "relighting spread" in out and "2 textures x 2 lightings" in out


def test_relight_speed():
    out = run_script(sys.executable, "benchmarks/relight_speed.py", "--sizes=32", "--batch=2", "--rounds=2")
    assert "| 32² x1 |" in out and "| 32² sweep x2 |" in out


def test_conv_kernels():
    out = run_script(sys.executable, "benchmarks/conv_kernels.py", "--batch=1", "--shapes=8:2:3:3,4:3:2:1",
                     "--rounds=1")
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| 8²") or line.startswith("| 4²")]
    assert [(r[0], r[2]) for r in rows] == [(conv, implementation) for conv in ("| 8² 2→3 3×3", "| 4² 3→2 1×1")
                                            for implementation in ("JAX, reduce", "JAX, xla_default", "PyTorch")]
    assert float(rows[0][1]) == pytest.approx(2 * 8 * 8 * 9 * 2 * 3 / 1e9)
    assert all(float(r[3]) > 0 and float(r[4]) > 0 for r in rows)


def test_conv_forms(monkeypatch):
    # the run checks that each case's two forms give the same output and gradients before timing them
    out = run_script(sys.executable, "benchmarks/conv_forms.py", "--scale=64", "--rounds=1", "--dtype=float32")
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
    out = run_script(sys.executable, "benchmarks/norm_kernels.py", "--batch=2", "--shapes=8:16,4:64", "--rounds=1",
                     "--dtype=float32")
    rows = [r.split(" | ") for r in out.strip().splitlines()[-2:]]
    assert [r[0] for r in rows] == ["| 8²×16", "| 4²×64"] and all(float(v) > 0 for r in rows for v in r[1:4])
    r = subprocess.run([sys.executable, "benchmarks/norm_kernels.py", "--shapes=8"], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
        "norm_kernels.py: error: --shapes='8': each must be SIZE:CHANNELS, positive integers")


def test_perceptual_cost():
    # two of the four variants: the others differ only in the loss weights (and cost two VGG16 compiles)
    out = run_script(sys.executable, "benchmarks/perceptual_cost.py", "--config=configs/refine.py:smoke", "--steps=1",
                     "--variants=base,lpips")
    rows = out.strip().splitlines()[-2:]
    assert [r.split("  ")[0] for r in rows] == ["base terms", "+ patch-lpips"]
    assert all(float(r.split()[-2]) > 0 for r in rows)


def test_kill_resume(tmp_path):
    out = run_script(sys.executable, "benchmarks/kill_resume.py", "--kills=1", f"--root={tmp_path}", "--seed=3",
                     "--config=configs/refine.py:smoke")
    assert len([line for line in out.splitlines() if line.startswith("attempt 1/1: resumed from step 0")]) == 1
    assert out.strip().splitlines()[-1] == "after 1 kills: final train state identical, metrics.jsonl identical"


def test_dry_run_table():
    out = run_script(sys.executable, "benchmarks/dry_run_table.py", "--config=configs/refine.py:smoke", "--devices=2",
                     "--sizes=32", "--rows=data,spatial_remat")
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| 32²")]
    assert [(r[1], r[2]) for r in rows] == [("data", "1"), ("spatial_remat", "1/2")]
    assert all(len(r) == 9 and all(float(x) >= 0 for x in r[3:8]) for r in rows)  # 0.00 GiB and TFLOPs at 32²


def test_cpu_options():
    out = run_script(sys.executable, "benchmarks/cpu_options.py", "--config=configs/refine.py:smoke", "--steps=1",
                     "--warmup=1", "--setting=reduce", "--setting=xla_default", "--setting=none")
    rows = [r.split(" | ") for r in out.splitlines() if r.startswith("| ") and not r.startswith(("| xla_cpu", "| ---"))]
    assert [r[0] for r in rows] == ["| reduce", "| xla_default", "| none"]
    assert all(float(r[1].split()[0]) > 0 and float(r[2].split()[0]) > 0 for r in rows)
    assert float(rows[0][3].rstrip(" |")) == 0 and all(float(r[3].rstrip(" |")) < 1e-5 for r in rows)
    r = subprocess.run([sys.executable, "benchmarks/cpu_options.py", "--config=configs/refine.py:smoke",
                        "--setting=conv"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("cpu_options: error: xla_cpu_ynn")


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
