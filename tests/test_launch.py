"""Launch scripts: they parse, `tpu_pod.sh --dry_run` prints the gcloud commands, bad arguments are one line."""

import os
import re
import shlex
import signal
import subprocess
import sys
import time

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
     "gcloud compute tpus tpu-vm ssh pod --project=proj --zone=us-central2-b --worker=all '--command=if pgrep -f "
     "'\\''[p]ython -m maginet_jax.train'\\'' > /dev/null; then echo \"$(hostname): a training run is already going "
     "(tpu_pod.sh stop ends it)\" >&2; exit 1; fi'\n"
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


def test_tpu_pod_run_refuses_a_worker_with_a_run_going(tmp_path):
    """run's first worker command, run here with a stand-in pgrep (the suite's own training processes would
    answer a real one): it fails, naming the host, while a run is going (a second run would share the chips and
    the workdir), and passes otherwise; its pattern finds a run, and not the check's own command line."""
    r = _tpu("run", *WHERE, "--workdir=/w", "--dry_run", "--", "--config=c")
    assert r.returncode == 0, r.stderr
    check = shlex.split(r.stdout.splitlines()[0])[-1][len("--command="):]
    (tmp_path / "pgrep").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/args\nexec test -e {tmp_path}/going\n')
    (tmp_path / "pgrep").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    run = lambda: subprocess.run(["bash", "-c", check], env=env, capture_output=True, text=True, timeout=30)
    assert run().returncode == 0
    (tmp_path / "going").touch()
    r = run()
    assert r.returncode == 1 and r.stderr.strip().endswith(": a training run is already going (tpu_pod.sh stop "
                                                           "ends it)"), r.stderr
    flag, pattern = (tmp_path / "args").read_text().splitlines()
    assert flag == "-f" and re.search(pattern, "python -m maginet_jax.train --distributed --workdir=gs://b/r")
    assert not re.search(pattern, check)


@pytest.mark.parametrize("args,message", [
    (["create", *WHERE, "--version=v2"], "create needs --accelerator_type"),
    (["run", "--project=proj", "--name=pod", "--workdir=/w", "--", "--config=c"], "run needs --zone"),
    (["run", *WHERE, "--workdir=/w"], "run needs the training arguments after --"),
    (["reboot", *WHERE], "unknown command 'reboot'"),
    (["bogus"], "unknown command 'bogus'"),  # not "bogus needs --project"
    (["stop", *WHERE, "--worker=3"], "stop takes no --worker (it takes: project zone name)"),  # was ignored
    (["run", *WHERE, "--workdri=/w", "--", "--config=c"], "run takes no --workdri"),
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


_STUB = """#!/bin/bash
# `python` for launch/local_multiprocess.sh: -c goes to the real one (the free port); a training process
# behaves as $STUB says.
if [[ "$1" == -c ]]; then exec {python} "$@"; fi
for a in "$@"; do [[ "$a" == --process_id=* ]] && id=${{a#--process_id=}}; done
case "$STUB" in
  fail1) if [[ $id == 1 ]]; then echo "process 1: disk full" >&2; exit 3; fi; exec sleep 30 ;;
  hello) echo "process $id says hello"; exit 0 ;;
  stubborn) trap '' TERM; exec sleep 30 ;;  # ignores SIGTERM, as a process does before its first step
  polite) trap 'echo "process $id stops"; exit 0' TERM; while :; do sleep 0.1; done ;;
esac
"""


def _local(tmp_path, stub, *, stdout=subprocess.PIPE):
    (tmp_path / "bin").mkdir(exist_ok=True)
    (tmp_path / "bin" / "python").write_text(_STUB.format(python=sys.executable))
    (tmp_path / "bin" / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}/bin:{os.environ['PATH']}", "STUB": stub}
    return subprocess.Popen(["bash", "launch/local_multiprocess.sh", "2", "--", f"--workdir={tmp_path}/run"],
                            cwd=REPO, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_local_multiprocess_shows_why_another_process_failed(tmp_path):
    """Process 1's last lines when it fails (its output used to be dropped unless LOG_ALL=1); its status is the
    launcher's, and process 0 is stopped."""
    p = _local(tmp_path, "fail1")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 3
    assert err.splitlines()[-2:] == ["local_multiprocess.sh: process 1 exited with status 3; the end of its log:",
                                     "process 1: disk full"]


def test_local_multiprocess_appends_to_its_output(tmp_path):
    """Process 0 writes to the launcher's own output: appended to a log, it used to reopen /dev/stdout and write
    over the file from its start."""
    log = tmp_path / "run.log"
    log.write_text("earlier\n")
    with open(log, "a") as f:
        p = _local(tmp_path, "hello", stdout=f)
        p.communicate(timeout=60)
    assert p.returncode == 0 and log.read_text() == "earlier\nprocess 0 says hello\n"


@pytest.mark.parametrize("stub, signals, status, said", [
    ("polite", [signal.SIGHUP], 0, "process 0 stops"),  # SIGHUP used to leave them running
    ("stubborn", [signal.SIGINT, signal.SIGINT], 128 + signal.SIGKILL, ""),  # a second one kills them
])
def test_local_multiprocess_signals(tmp_path, stub, signals, status, said):
    p = _local(tmp_path, stub)
    time.sleep(2)  # both started
    for s in signals:
        os.kill(p.pid, s)
        time.sleep(1)
    out, _ = p.communicate(timeout=20)
    assert p.returncode == status and out.strip() == said
    left = subprocess.run(["pgrep", "-s", str(p.pid)], capture_output=True, text=True).stdout.split()
    assert left == []  # nothing of the session left running


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_local_multiprocess_killed_stops_its_processes(tmp_path):
    """SIGKILL to the launcher (an OOM killer, a scheduler's hard kill) left its processes training, orphaned;
    they now get SIGTERM and stop as on a forwarded one. (It used util-linux's setpriv, and did nothing where that
    was not installed; it needs no package now.)"""
    p = _local(tmp_path, "polite")
    time.sleep(2)  # both started
    os.kill(p.pid, signal.SIGKILL)
    out, _ = p.communicate(timeout=20)
    for _ in range(50):  # the orphans' exits (not zombies, which only wait for init to reap them)
        ps = subprocess.run(["ps", "-o", "stat=", "--sid", str(p.pid)], capture_output=True, text=True).stdout
        running = [stat for stat in ps.split() if not stat.startswith("Z")]
        if not running:
            break
        time.sleep(0.2)
    assert p.returncode == -signal.SIGKILL and running == [] and out.strip() == "process 0 stops"


_SRUN = """#!/bin/bash
# srun for launch/slurm_gpu.sbatch: one task here, on this machine's CPU, which says what JAX made of it.
exec {python} -c '
import os
from jax._src import config
from maginet_jax.training import processes
processes.initialize_distributed(True, None, None, None)
print(config._read("jax_cuda_visible_devices"), os.environ["SRUN_CPUS_PER_TASK"])'
"""


def test_slurm_process_drives_every_gpu_of_its_node(tmp_path):
    """launch/slurm_gpu.sbatch under a stand-in srun and SLURM's variables for one node of 8 GPUs: JAX, detecting
    SLURM, gives the node's one process all 8 (it gave it the GPU of its local task id, 0 alone), and srun gets
    the job's CPUs a task."""
    (tmp_path / "srun").write_text(_SRUN.format(python=sys.executable))
    (tmp_path / "srun").chmod(0o755)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_GPUS_ON_NODE": "8", "SLURM_CPUS_PER_TASK": "32"}
    env = {**os.environ, **slurm, "PATH": f"{tmp_path}:{os.environ['PATH']}", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run(["bash", "launch/slurm_gpu.sbatch", "--config=c", "--workdir=w"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["0,1,2,3,4,5,6,7", "32"]
    del env["SLURM_GPUS_ON_NODE"]
    r = subprocess.run(["bash", "launch/slurm_gpu.sbatch", "--config=c", "--workdir=w"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "ask for GPUs with --gpus-per-node" in r.stderr.strip().splitlines()[-1]
