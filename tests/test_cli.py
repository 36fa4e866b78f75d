"""The train CLI on bad input: one error line, exit status 1, nothing in the workdir touched."""

import hashlib
import os
import subprocess
import sys

import pytest

from conftest import REPO


def _snapshot(root):
    """{relative path: sha1} of every file below root."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha1(fh.read()).hexdigest()
    return out


def _train(*args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "-m", "maginet_jax.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def existing_workdir(tmp_path):
    wd = tmp_path / "run"
    (wd / "checkpoints").mkdir(parents=True)
    (wd / "metrics.jsonl").write_text('{"step": 0, "eval/albedo_mse": 0.1}\n')
    (wd / "config.json").write_text("{}")
    return str(wd)


@pytest.mark.parametrize("args,message", [
    (["--config.num_train_stepz=5"], "unknown config key 'num_train_stepz'; did you mean \"num_train_steps\""),
    (["--config.model.widthz=(8,16)"], "unknown config key 'widthz'"),
    (["--config.data.crop_size=34"], "data.crop_size 34 is not divisible by 4"),
    (["--config.data.source=ffhq_uv_intrinsics", "--config.data.root=/nonexistent/ffhq"],
     "data.root '/nonexistent/ffhq' does not exist"),
    (["--config.data.source=ffhq_uv_intrinsics"], "needs data.root"),
    (["--config.data.root=/tmp"], "data.source='synthetic' reads no files"),
    (["--config.model.norm=batch"], "model.norm='batch' is not one of"),
    (["--config.batch_size=0"], "batch_size must be >= 1"),
    (["--config.losses.style=1.0"], "unknown config key 'style'"),
])
def test_bad_config_is_one_line_and_touches_nothing(existing_workdir, args, message):
    before = _snapshot(existing_workdir)
    r = _train("--config=configs/albedo.py:smoke", f"--workdir={existing_workdir}", *args)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr
    assert lines[-1].startswith("maginet_jax.train: error: ") and message in lines[-1], r.stderr
    assert sum("error" in line.lower() for line in lines) == 1
    assert _snapshot(existing_workdir) == before


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    r = _train("--config=configs/albedo.py:smoke", f"--workdir={blocker}/run")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"maginet_jax.train: error: cannot write to workdir '{blocker}/run': Not a directory")
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("config,message", [
    ("configs/albedo.py:nope", "unknown variant 'nope'"),
    ("configs/missing.py", "cannot load the config file: [Errno 2] No such file or directory"),
])
def test_bad_config_file_or_variant(tmp_path, config, message):
    r = _train(f"--config={config}", f"--workdir={tmp_path}/run")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert message in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()
