r"""Kills a training run with SIGKILL at random moments, restarts it each time, and checks that the final state
and metrics equal an uninterrupted run's, bit for bit.

    python benchmarks/kill_resume.py --kills 10 [--config=configs/albedo.py:smoke] [--root=runs/kill_resume] \
        [--seed=0] [-- --config.key=value ...]

Runs `python -m maginet_jax.train` (with `--config.log_every_steps=1`, to follow its progress) in
`<root>/uninterrupted`, then in `<root>/killed`, where each of the `--kills` attempts is killed at a random
moment before it would finish: during start-up (restoring, compiling) with the share of the uninterrupted
run's time start-up took, else a random time into a random remaining train step (which may fall in an
evaluation or a checkpoint write); a last attempt runs to the end. Exit status 0 when the two runs' final
checkpoints (parameters, optimizer state, step, RNG) and metrics.jsonl are identical. Both runs start afresh: an
earlier attempt's `<root>/uninterrupted` and `<root>/killed` are removed first, and anything else there is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.layer_timing import positive_int  # noqa: E402


def _train(workdir: str, config: str, overrides: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "maginet_jax.train", f"--config={config}",
                             f"--workdir={workdir}", *overrides, "--config.log_every_steps=1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


_STEP = re.compile(r"\] step (\d+)/(\d+) ")


def _follow(proc: subprocess.Popen, until_step: int | None = None) -> tuple[list[str], dict[int, float]]:
    """Reads `proc`'s log as it comes: (lines, {step: seconds after now when its line arrived}), stopping
    early once the line of `until_step` arrives."""
    lines, seen, t0 = [], {}, time.time()
    for line in proc.stderr:
        lines.append(line)
        m = _STEP.search(line)
        if m:
            seen[int(m.group(1))] = time.time() - t0
            if until_step is not None and int(m.group(1)) >= until_step:
                break
    return lines, seen


def _finish(proc: subprocess.Popen, what: str) -> dict[int, float]:
    lines, seen = _follow(proc)
    if proc.wait() != 0:
        sys.exit(f"kill_resume.py: error: {what} failed (exit {proc.returncode})"
                 + (f": {lines[-1].strip()}" if lines else ""))
    return seen


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


def removable(workdir: str) -> bool:
    """Whether `workdir` is absent, empty or a training run's (its config.json): what an earlier attempt left."""
    if not os.path.lexists(workdir):
        return True
    return os.path.isdir(workdir) and not os.path.islink(workdir) and (
        not os.listdir(workdir) or os.path.isfile(os.path.join(workdir, "config.json")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=positive_int, default=10)
    parser.add_argument("--config", default="configs/albedo.py:smoke")
    parser.add_argument("--root", default="runs/kill_resume")
    parser.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    reference, killed = (os.path.join(args.root, d) for d in ("uninterrupted", "killed"))
    for d in (reference, killed):
        if not removable(d):
            sys.exit(f"kill_resume.py: error: {d} is not a training run: choose another --root (it would be removed)")
    for d in (reference, killed):
        shutil.rmtree(d, ignore_errors=True)

    t0 = time.time()
    seen = _finish(_train(reference, args.config, overrides), "the uninterrupted run")
    wall, last = time.time() - t0, max(seen)
    startup = seen[min(seen)] - (seen[last] - seen[min(seen)]) / max(last - min(seen), 1)  # before step 1
    step_time = (wall - startup) / last
    print(f"uninterrupted run: {wall:.1f} s ({startup:.1f} s to the first step, then {step_time:.2f} s/step), "
          f"{last} steps", flush=True)

    rng = random.Random(args.seed)
    for i in range(args.kills):
        start = _latest(killed) or 0
        proc = _train(killed, args.config, overrides)
        if start >= last - 1 or rng.random() < startup / wall:  # nothing left to run, or drawn in start-up
            at, where = rng.uniform(0.0, startup), "in start-up"
            try:
                proc.wait(timeout=at)
            except subprocess.TimeoutExpired:
                pass
        else:
            step = rng.randint(start + 1, last - 1)
            _follow(proc, until_step=step)
            at, where = rng.uniform(0.0, step_time), f"after step {step}"
            time.sleep(at)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        print(f"attempt {i + 1}/{args.kills}: resumed from step {start}, killed {where} (+{at:.2f} s); "
              f"newest checkpoint now: step {_latest(killed) or 0}", flush=True)
    _finish(_train(killed, args.config, overrides), "the last restart")

    same_state = all(np.array_equal(a, b) for a, b in zip(_final_state(reference), _final_state(killed),
                                                           strict=True))
    same_metrics = _metrics(reference) == _metrics(killed)
    print(f"after {args.kills} kills: final train state {'identical' if same_state else 'DIFFERENT'}, "
          f"metrics.jsonl {'identical' if same_metrics else 'DIFFERENT'}")
    sys.exit(0 if same_state and same_metrics else 1)


if __name__ == "__main__":
    main()
