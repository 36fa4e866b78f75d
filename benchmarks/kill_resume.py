r"""Kills a training run with SIGKILL at random moments, restarts it each time, and checks that the final state
and metrics equal an uninterrupted run's, bit for bit.

    python benchmarks/kill_resume.py --kills 10 [--config=configs/albedo.py:smoke] [--root=runs/kill_resume] \
        [--seed=0] [-- --config.key=value ...]

Runs `python -m maginet_jax.train` in `<root>/uninterrupted`, then in `<root>/killed`: each of the `--kills`
attempts is killed at a moment drawn uniformly over the uninterrupted run's wall time (start-up, compilation,
training, evaluation or a checkpoint write, wherever it lands), and a last attempt runs to the end. Exit status 0
when the two runs' final checkpoints (parameters, optimizer state, step, RNG) and metrics.jsonl are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp


def _train(workdir: str, config: str, overrides: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "maginet_jax.train", f"--config={config}",
                             f"--workdir={workdir}", *overrides], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, what: str) -> None:
    _, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"kill_resume: {what} failed (exit {proc.returncode}): {err.strip().splitlines()[-1:]}")


def _latest(workdir: str) -> int | None:
    root = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(root):
        return None
    with ocp.CheckpointManager(os.path.abspath(root)) as manager:
        return manager.latest_step()


def _final_state(workdir: str) -> list[np.ndarray]:
    """Every array of the newest checkpoint's train state, on this process's first device."""
    path = os.path.join(os.path.abspath(workdir), "checkpoints", str(_latest(workdir)), "state")
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.PyTreeCheckpointer() as ckpt:
        saved = ckpt.metadata(path).item_metadata.tree
        like = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), saved)
        state = ckpt.restore(path, args=ocp.args.PyTreeRestore(
            item=like, restore_args=jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=one), like)))
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def _metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--config", default="configs/albedo.py:smoke")
    parser.add_argument("--root", default="runs/kill_resume")
    parser.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    reference, killed = (os.path.join(args.root, d) for d in ("uninterrupted", "killed"))
    for d in (reference, killed):
        shutil.rmtree(d, ignore_errors=True)

    t0 = time.time()
    _finish(_train(reference, args.config, overrides), "the uninterrupted run")
    wall = time.time() - t0
    print(f"uninterrupted run: {wall:.1f} s, final step {_latest(reference)}", flush=True)

    rng = random.Random(args.seed)
    for i in range(args.kills):
        at = rng.uniform(0.0, wall)
        proc = _train(killed, args.config, overrides)
        try:
            proc.wait(timeout=at)
            outcome = f"finished before {at:.1f} s (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            outcome = f"killed at {at:.1f} s"
        print(f"attempt {i + 1}/{args.kills}: {outcome}; newest checkpoint: step {_latest(killed)}", flush=True)
    _finish(_train(killed, args.config, overrides), "the last restart")

    same_state = all(np.array_equal(a, b) for a, b in zip(_final_state(reference), _final_state(killed),
                                                           strict=True))
    same_metrics = _metrics(reference) == _metrics(killed)
    print(f"after {args.kills} kills: final train state {'identical' if same_state else 'DIFFERENT'}, "
          f"metrics.jsonl {'identical' if same_metrics else 'DIFFERENT'}")
    sys.exit(0 if same_state and same_metrics else 1)


if __name__ == "__main__":
    main()
