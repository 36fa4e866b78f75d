r"""Where a stage's compiled train step spends its time, op by op (XLA on CPU).

    python -m benchmarks.step_profile --config=configs/albedo.py:demo [--config.x=...] [--traced_steps 3] [--top 15]

Compiles the stage's train step as the training loop does (benchmarks.compare's JAX variant: same batch, donated
state), runs `--traced_steps` steps under `jax.profiler.trace` with XLA's per-op trace events on
(`--xla_cpu_enable_xprof_traceme=true`, added to XLA_FLAGS before JAX starts), and sums each compiled op's time.
Ops are grouped by what their HLO computes: convolutions (forward, input gradient, weight gradient: a weight
gradient is a convolution whose window spans the image: here, wider than 11, the largest kernel of our networks
and the loss networks), dots, transposes and copies, reductions, the rest.
Op times are summed over XLA's threads, so their total can exceed the wall time of a step. Only what XLA's
thunks report is counted; the CPU backend traces every compiled op.
"""

from __future__ import annotations

import collections
import functools
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import jax  # noqa: E402 (after XLA_FLAGS)
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import compare  # noqa: E402
from maginet_jax import train  # noqa: E402

_STEPS = flags.DEFINE_integer("traced_steps", 3, "Traced train steps (after two untraced ones).")
_TOP = flags.DEFINE_integer("top", 15, "How many single ops to list.")

_INSTRUCTION = re.compile(r"^\s*%?([\w.\-]+) = \S+ ([\w\-]+)\(.*$", re.M)
_COMPUTATION = re.compile(r"^%?([\w.\-]+) \(.*?\) -> .*? \{\n(.*?)\n\}", re.M | re.S)


def op_kinds(hlo: str) -> dict[str, tuple[str, str]]:
    """{instruction name: (kind, what it computes)} for the compiled module's instructions."""
    bodies = {name: body for name, body in _COMPUTATION.findall(hlo)}
    kinds = {}
    for m in _INSTRUCTION.finditer(hlo):
        name, opcode, line = m.group(1), m.group(2), m.group(0)
        called = re.search(r"calls=%([\w.\-]+)", line)
        text = line + "\n" + (bodies.get(called.group(1), "") if called else "")
        window = re.search(r"window=\{size=(\d+)", text)
        shape = line.split(" = ", 1)[1].split(" ", 1)[0]
        if "convolution(" in text or opcode == "convolution":
            direction = ("weight gradient" if window and int(window.group(1)) > 11 else
                         "input gradient" if "transpose(jvp" in text else "forward")
            kinds[name] = (f"convolution, {direction}", shape)
        elif " dot(" in text or opcode == "dot":
            kinds[name] = ("dot", shape)
        elif opcode in ("transpose", "copy") or name.startswith(("transpose", "copy")):
            kinds[name] = ("transpose / copy", shape)
        elif "reduce" in text:
            kinds[name] = ("reduction", shape)
        else:
            kinds[name] = ("elementwise / other", shape)
    return kinds


def op_times(trace_dir: str, kinds: dict) -> collections.Counter:
    """{op name: microseconds} summed over the traced steps, for the ops of the compiled module."""
    path = next(Path(trace_dir).rglob("*.trace.json.gz"))
    events = json.load(gzip.open(path))["traceEvents"]
    times = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in kinds:
            times[e["name"]] += e["dur"]
    return times


def main(argv) -> None:
    del argv
    config = train.CONFIG.value
    variant = compare.JaxVariant(config, compare.first_batch(config))
    step = compare.synced(variant.train_step)
    step(), step()
    untraced = []
    for _ in range(5):
        t = time.perf_counter()
        step()
        untraced.append(time.perf_counter() - t)
    kinds = op_kinds(variant.train_compiled.as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(_STEPS.value):
                step()
        times = op_times(trace_dir, kinds)
    if not times:
        sys.exit("step_profile.py: error: the trace holds no XLA op events (this backend does not report them)")
    per_step = {name: us / 1e3 / _STEPS.value for name, us in times.items()}
    total = sum(per_step.values())
    by_kind = collections.Counter()
    for name, ms in per_step.items():
        by_kind[kinds[name][0]] += ms
    print(f"{config.stage} train step, batch {config.batch_size} at {config.data.crop_size}², on "
          f"{jax.devices()[0].device_kind}: {1e3 * np.median(untraced):.0f} ms a step (median of 5, untraced); "
          f"traced, {total:.0f} ms of op time a step over {len(per_step)} ops")
    print("| kind | ms a step | share of op time |\n|---|---|---|")
    for kind, ms in by_kind.most_common():
        print(f"| {kind} | {ms:.1f} | {100 * ms / total:.0f}% |")
    print(f"\n| op | kind | output | ms a step |\n|---|---|---|---|")
    for name, ms in sorted(per_step.items(), key=lambda kv: -kv[1])[:_TOP.value]:
        print(f"| {name} | {kinds[name][0]} | {kinds[name][1]} | {ms:.2f} |")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=functools.partial(train.parse_flags, prog="benchmarks.step_profile"))
