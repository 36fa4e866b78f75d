"""The train CLI on bad input: one error line (the whole output), exit status 1, nothing in the workdir touched."""

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


def _assert_one_line(r, message: str) -> None:
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("maginet_jax.train: error: ") and message in lines[0], r.stderr


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
    (["--config.batch_size=0"], "batch_size must be an integer >= 1, got 0"),
    (["--config.data.worker_count=-1"], "data.worker_count must be an integer >= 0, got -1"),  # was grain's traceback
    (["--config.optim.warmup_steps=-3"], "optim.warmup_steps must be an integer >= 0, got -3"),  # was accepted
    (["--config.losses.style=1.0"], "unknown config key 'style'"),
    (["--config.mesh=(('data',-1),('model',2))"], "mesh axis 'model' is not used by maginet_jax"),
    (["--config.mesh.data=3"], "--config.mesh.data: tuple indices must be integers"),  # names the flag
    (["--config.optim.schedule=constant_then_linear", "--config.optim.decay_steps=99"], "optim.decay_steps=99"),
    (["--config.xla_cpu_ynn_fusions=convolution"], "xla_cpu_ynn_fusions='convolution': expected 'none'"),
])
def test_bad_config_is_one_line_and_touches_nothing(existing_workdir, args, message):
    before = _snapshot(existing_workdir)
    r = _train("--config=configs/albedo.py:smoke", f"--workdir={existing_workdir}", *args)
    _assert_one_line(r, message)
    assert _snapshot(existing_workdir) == before


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    r = _train("--config=configs/albedo.py:smoke", f"--workdir={blocker}/run")
    _assert_one_line(r, f"cannot write to --workdir='{blocker}/run': Not a directory")
    assert blocker.read_text() == "not a directory"


def test_empty_workdir_is_refused():
    """`--workdir=` (an unset shell variable) wrote dry_run.json and the run into the current directory."""
    from maginet_jax.errors import UserError
    from maginet_jax.training import runs
    with pytest.raises(UserError, match="--workdir is empty"):
        runs.prepare_workdir("")


@pytest.mark.parametrize("config,message", [
    ("configs/albedo.py:nope", "unknown variant 'nope'"),
    ("configs/missing.py", "cannot load the config file: [Errno 2] No such file or directory"),
])
def test_bad_config_file_or_variant(tmp_path, config, message):
    r = _train(f"--config={config}", f"--workdir={tmp_path}/run")
    _assert_one_line(r, message)
    assert not (tmp_path / "run").exists()


def test_resuming_with_another_model_is_one_line(chain, tmp_path):
    """A checkpoint of other shapes is refused before any array is read (a failed read used to leave orbax's
    pending reads spilling ~1,000 lines of 'Event loop is closed' tracebacks after the error)."""
    import shutil
    workdir = str(tmp_path / "run")
    shutil.copytree(chain["albedo"], workdir)
    before = _snapshot(workdir)
    r = _train("--config=configs/albedo.py:smoke", f"--workdir={workdir}", "--config.model.widths=(8,16,32)")
    _assert_one_line(r, "checkpoint 12 in")
    assert "does not fit this config" in r.stderr and "attention/channel/fc1/bias/value is (8,) here, (4,) there" in r.stderr
    assert _snapshot(workdir) == before
