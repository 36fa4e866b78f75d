r"""Where a stage's compiled train step spends its time, op by op (XLA on a CPU or a GPU).

    python -m benchmarks.step_profile --config=configs/albedo.py:demo [--config.x=...] [--traced_steps 3] [--top 15]
        [--trace_dir DIR]

Compiles the stage's train step as the training loop does (benchmarks.compare's JAX variant: same batch, donated
state), runs `--traced_steps` steps under `jax.profiler.trace` with XLA's per-op trace events on
(`--xla_cpu_enable_xprof_traceme=true`, added to XLA_FLAGS before JAX starts), and sums each compiled op's time.
Ops are grouped by what their HLO computes: convolutions (forward, input gradient, weight gradient: a weight
gradient is a convolution whose window spans the image: here, wider than 11, the largest kernel of our networks
and the loss networks), dots, transposes and copies, reductions, the rest.
On a CPU, op times are summed over XLA's threads, so their total can exceed the wall time of a step; the CPU
backend traces every compiled op. On a GPU, the ops are the kernels on its streams: a kernel XLA generated carries
its fusion's name (dots replaced by underscores); a library kernel (cuDNN, cuBLAS) is named by its library, and is
grouped by that name (fprop, dgrad, wgrad: forward, input and weight gradient). The GPU's busy time, the union of
its kernels' intervals, over the step's wall time says how much of a step the device idles (launch gaps, host
work). `--trace_dir` keeps the trace (`train_step.trace.json.gz`) and the compiled HLO (`train_step.hlo.txt.gz`)
there, flat, to read again later.
"""

from __future__ import annotations

import collections
import functools
import gzip
import json
import os
import re
import shutil
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
_TRACE_DIR = flags.DEFINE_string("trace_dir", None, "Keep the trace and the compiled HLO here (default: dropped).")

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


# Library kernels on a GPU, by what their names say they compute (cuDNN's convolutions, the matmul libraries').
_LIBRARY_KERNELS = (("fprop", "convolution, forward"), ("dgrad", "convolution, input gradient"),
                    ("wgrad", "convolution, weight gradient"), ("conv", "convolution, other"),
                    ("gemm", "dot"), ("memcpy", "transpose / copy"), ("memset", "elementwise / other"))


def device_events(events: list[dict]) -> tuple[list[dict], bool]:
    """(the complete events that ran ops, on a GPU): on a GPU, the kernels on its streams (not the timelines a
    profiler derives from them, whose events span modules and ops); on a CPU, every event."""
    meta = {(e["name"], e["pid"], e.get("tid")): e.get("args", {}).get("name", "") for e in events
            if e.get("ph") == "M"}
    gpus = {pid for (kind, pid, _), name in meta.items() if kind == "process_name" and name.startswith("/device:")}
    if not gpus:
        return [e for e in events if e.get("ph") == "X"], False
    streams = {(pid, tid) for (kind, pid, tid), name in meta.items()
               if kind == "thread_name" and pid in gpus and name.startswith("Stream")}
    return [e for e in events if e.get("ph") == "X" and e.get("pid") in gpus and
            (not streams or (e["pid"], e.get("tid")) in streams)], True


def attribute(event: dict, kinds: dict, sanitized: dict, on_gpu: bool) -> tuple[str, str] | None:
    """(name, kind) of what an event ran: a compiled op (its HLO name) or, on a GPU, a library kernel (its own
    name, the kind its name says); None for an event that is not one of the step's ops."""
    for name in (event.get("args", {}).get("hlo_op"), event["name"]):
        name = sanitized.get(name, name)
        if name in kinds:
            return name, kinds[name][0]
    if on_gpu:
        lowered = event["name"].lower()
        return event["name"], next((kind for key, kind in _LIBRARY_KERNELS if key in lowered), "kernel, other")
    return None


def busy_us(events: list[dict]) -> float:
    """Microseconds in which at least one of the events ran (the union of their intervals)."""
    total, end = 0.0, float("-inf")
    for e in sorted(events, key=lambda e: e["ts"]):
        start, stop = e["ts"], e["ts"] + e["dur"]
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def op_times(trace_path: Path, kinds: dict) -> tuple[collections.Counter, dict[str, str], float]:
    """({op or kernel name: microseconds}, {name: kind}, the GPU's busy microseconds or 0 on a CPU) over a trace."""
    events = json.load(gzip.open(trace_path))["traceEvents"]
    on_device, on_gpu = device_events(events)
    sanitized = {re.sub(r"[.\-]", "_", name): name for name in kinds}
    times, kind_of = collections.Counter(), {}
    for e in on_device:
        named = attribute(e, kinds, sanitized, on_gpu)
        if named is not None:
            times[named[0]] += e["dur"]
            kind_of[named[0]] = named[1]
    return times, kind_of, busy_us(on_device) if on_gpu else 0.0


def keep(trace_dir: str, trace_path: Path, hlo: str) -> None:
    """Copies the trace and writes the compiled HLO into `trace_dir`, flat (one folder, two files)."""
    os.makedirs(trace_dir, exist_ok=True)
    shutil.copy(trace_path, os.path.join(trace_dir, "train_step.trace.json.gz"))
    with gzip.open(os.path.join(trace_dir, "train_step.hlo.txt.gz"), "wt") as f:
        f.write(hlo)


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
    hlo = variant.train_compiled.as_text()
    kinds = op_kinds(hlo)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(_STEPS.value):
                step()
        trace_path = next(Path(trace_dir).rglob("*.trace.json.gz"))
        times, kind_of, busy = op_times(trace_path, kinds)
        if _TRACE_DIR.value:
            keep(_TRACE_DIR.value, trace_path, hlo)
    if jax.devices()[0].platform == "gpu" and not busy:
        sys.exit("step_profile.py: error: the trace holds no GPU kernels (the profiler needs CUPTI)")
    if not times:
        sys.exit("step_profile.py: error: the trace holds no XLA op events (this backend does not report them)")
    per_step = {name: us / 1e3 / _STEPS.value for name, us in times.items()}
    total = sum(per_step.values())
    by_kind = collections.Counter()
    for name, ms in per_step.items():
        by_kind[kind_of[name]] += ms
    print(f"{config.stage} train step, batch {config.batch_size} at {config.data.crop_size}², on "
          f"{jax.devices()[0].device_kind}: {1e3 * np.median(untraced):.0f} ms a step (median of 5, untraced); "
          f"traced, {total:.0f} ms of op time a step over {len(per_step)} ops" +
          (f", the GPU busy {busy / 1e3 / _STEPS.value:.0f} ms a step" if busy else ""))
    print("| kind | ms a step | share of op time |\n|---|---|---|")
    for kind, ms in by_kind.most_common():
        print(f"| {kind} | {ms:.1f} | {100 * ms / total:.0f}% |")
    print(f"\n| op | kind | output | ms a step |\n|---|---|---|---|")
    for name, ms in sorted(per_step.items(), key=lambda kv: -kv[1])[:_TOP.value]:
        print(f"| {name[:80]} | {kind_of[name]} | {kinds.get(name, ('', ''))[1]} | {ms:.2f} |")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=functools.partial(train.parse_flags, prog="benchmarks.step_profile"))
