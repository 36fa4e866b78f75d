"""Launch scripts: they parse, `tpu_pod.sh --dry_run` prints the gcloud commands, bad arguments are one line."""

import os
import shlex
import subprocess

import pytest

from conftest import REPO

SCRIPTS = sorted(f for f in os.listdir(os.path.join(REPO, "launch")) if f.endswith((".sh", ".sbatch")))
WHERE = ["--project=proj", "--zone=us-central2-b", "--name=pod"]


def _tpu(*args):
    return subprocess.run(["bash", "launch/tpu_pod.sh", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
    r = subprocess.run(["bash", "-n", os.path.join("launch", script)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("command,extra,expected", [
    ("create", ["--accelerator_type=v5litepod-16", "--version=v2-alpha-tpuv5-lite", "--spot"],
     "gcloud compute tpus tpu-vm create pod --project=proj --zone=us-central2-b --accelerator-type=v5litepod-16 "
     "--version=v2-alpha-tpuv5-lite --spot"),
    ("run", ["--workdir=/mnt/runs/a", "--", "--config=configs/albedo.py", "--config.batch_size=64"],
     "gcloud compute tpus tpu-vm ssh pod --project=proj --zone=us-central2-b --worker=all '--command=cd "
     "~/maginet-jax && nohup python -m maginet_jax.train --distributed --workdir=/mnt/runs/a "
     "--config=configs/albedo.py --config.batch_size=64  > ~/maginet-train.log 2>&1 < /dev/null &'"),
    ("logs", ["--worker=3"], "gcloud compute tpus tpu-vm ssh pod --project=proj --zone=us-central2-b --worker=3 "
     "'--command=tail -n 200 -f ~/maginet-train.log'"),
    ("stop", [], "gcloud compute tpus tpu-vm ssh pod --project=proj --zone=us-central2-b --worker=all "
     "'--command=pkill -TERM -f '\\''[p]ython -m maginet_jax.train'\\'' || true'"),
    ("delete", [], "gcloud compute tpus tpu-vm delete pod --project=proj --zone=us-central2-b --quiet"),
])
def test_tpu_pod_dry_run(command, extra, expected):
    r = _tpu(command, "--dry_run", *WHERE, *extra)  # before any "--": what follows it goes to training
    assert r.returncode == 0 and r.stdout.strip() == expected, r.stdout + r.stderr


def test_tpu_pod_setup_checks_out_the_ref_as_the_repo_has_it(tmp_path):
    """setup's worker command, run here against a local repo (HOME in tmp_path, pip a stand-in that logs): it clones
    and installs the `tpu` extra; run again after the repo's main moved, it updates the clone to the new main (it
    used to check out the clone's own, older main)."""
    origin = tmp_path / "origin"
    git = lambda *a, cwd=origin: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=cwd,
                                               check=True, capture_output=True, text=True).stdout.strip()
    origin.mkdir()
    git("init", "-q", "-b", "main")
    git("commit", "-q", "--allow-empty", "-m", "one")
    r = _tpu("setup", *WHERE, f"--repo={origin}", "--ref=main", "--dry_run")
    assert r.returncode == 0, r.stderr
    command = next(a for a in shlex.split(r.stdout) if a.startswith("--command="))[len("--command="):]
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "pip").write_text(f'#!/bin/sh\necho "$PWD $@" >> {tmp_path}/pip.log\n')
    (tmp_path / "bin" / "pip").chmod(0o755)
    env = {**os.environ, "HOME": str(tmp_path / "home"), "PATH": f"{tmp_path}/bin:{os.environ['PATH']}"}
    (tmp_path / "home").mkdir()
    clone = tmp_path / "home" / "maginet-jax"
    for message in ("one", "two"):
        if message == "two":
            git("commit", "-q", "--allow-empty", "-m", "two")
        subprocess.run(["bash", "-c", command], env=env, check=True, capture_output=True, timeout=60)
        assert git("log", "-1", "--format=%s", cwd=clone) == message
    assert (tmp_path / "pip.log").read_text().splitlines() == [f"{clone} install -q -e .[tpu]"] * 2


@pytest.mark.parametrize("args,message", [
    (["create", *WHERE, "--version=v2"], "create needs --accelerator_type"),
    (["run", "--project=proj", "--name=pod", "--workdir=/w", "--", "--config=c"], "run needs --zone"),
    (["run", *WHERE, "--workdir=/w"], "run needs the training arguments after --"),
    (["reboot", *WHERE], "unknown command 'reboot'"),
    (["stop", *WHERE, "pod2"], "unexpected argument 'pod2'"),
])
def test_tpu_pod_bad_arguments_are_one_line(args, message):
    r = _tpu(args[0], "--dry_run", *args[1:])
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("tpu_pod.sh: error: ") and message in r.stderr


def test_local_multiprocess_usage():
    r = subprocess.run(["bash", "launch/local_multiprocess.sh", "two", "--", "--config=x"], cwd=REPO,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stderr.startswith("usage: ")
