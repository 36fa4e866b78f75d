r"""Where a stage's compiled train step spends its time, op by op and source line by source line (XLA, CPU or GPU).

    python -m benchmarks.step_profile --config=configs/albedo.py:demo [--config.x=...] [--traced_steps 3] [--top 15]
        [--trace_dir DIR]
    python -m benchmarks.step_profile --from_trace=DIR [--top 15]

Compiles the stage's train step as the training loop does (`benchmarks.compare_variants.JaxVariant`, the JAX
variant compare.py times: same batch, donated state), runs `--traced_steps` steps under `jax.profiler.trace` with XLA's per-op trace events on
(`--xla_cpu_enable_xprof_traceme=true`, added to XLA_FLAGS before JAX starts), and sums each compiled op's time.
Three tables: by kind, by source line, the single ops. Kinds are what an op's HLO computes: convolutions (forward,
input gradient, weight gradient: on a CPU a weight gradient is a convolution whose window spans the image, here
wider than 11, the largest kernel of our networks and the loss networks; on a GPU, cuDNN's call says which), dots,
transposes and copies, reductions, the rest. The source line is the innermost frame in maginet_jax/ of the Python
stack that traced the op, from the stack-frame tables XLA prints after the compiled module.

On a CPU, op times are summed over XLA's threads, so their total can exceed the wall time of a step; the CPU
backend traces every compiled op, but most of the time of the convolutions it runs on its own (Eigen) kernels, the
project's default (`config.xla_cpu_ynn_fusions=reduce`), is missing from their events (refine's demo step: 198 ms
of op time for a 366 ms step, against 687 for 508 under YNNPACK): add `--config.xla_cpu_ynn_fusions=xla_default`
to see every convolution timed, in YNNPACK's kernels. On a GPU, the ops are the kernels on its streams, each
carrying its op's name (inside a command buffer, XLA's kernels are found by their names, a fusion's with its dots
as underscores; a library kernel there is grouped by what its name says: fprop, dgrad, wgrad, gemm). The GPU's
busy time, the union of its kernels' intervals, against the step's wall time says how much of a step the device
idles (launch gaps, host work). `--trace_dir` keeps the trace, the compiled HLO and the untraced time there
(`train_step.trace.json.gz`, `train_step.hlo.txt.gz`, `train_step.json`, flat), which `--from_trace` reads again,
on any machine; it refuses a directory that already holds one.
"""

from __future__ import annotations

import collections
import functools
import gzip
import json
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import jax  # noqa: E402 (after XLA_FLAGS)
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import compare_variants  # noqa: E402
from maginet_jax import train  # noqa: E402
from maginet_jax.errors import UserError  # noqa: E402

_STEPS = flags.DEFINE_integer("traced_steps", 3, "Traced train steps (after two untraced ones).", lower_bound=1)
_TOP = flags.DEFINE_integer("top", 15, "How many source lines and single ops to list.", lower_bound=1)
_TRACE_DIR = flags.DEFINE_string("trace_dir", None, "Keep the trace and the compiled HLO here (default: dropped).")
_FROM_TRACE = flags.DEFINE_string("from_trace", None, "Summarise what an earlier --trace_dir kept (no --config).")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (?:\(.*?\)|\S+) ([\w\-]+)\(.*$", re.M)
# What --trace_dir keeps and --from_trace reads: the trace, the compiled HLO, the traced steps and header line.
_TRACE, _HLO, _META = "train_step.trace.json.gz", "train_step.hlo.txt.gz", "train_step.json"
_COMPUTATION = re.compile(r"^%?([\w.\-]+) \(.*?\) -> .*? \{\n(.*?)\n\}", re.M | re.S)


# XLA's library calls on a GPU, by their custom_call_target.
_CUSTOM_CALLS = (("convForward", "convolution, forward"), ("convBiasActivationForward", "convolution, forward"),
                 ("convBackwardInput", "convolution, input gradient"),
                 ("convBackwardFilter", "convolution, weight gradient"), ("gemm", "dot"), ("matmul", "dot"))


def op_kinds(hlo: str) -> dict[str, tuple[str, str]]:
    """{instruction name: (kind, what it computes)} for the compiled module's instructions."""
    bodies = {name: body for name, body in _COMPUTATION.findall(hlo)}
    kinds = {}
    for m in _INSTRUCTION.finditer(hlo):
        name, opcode, line = m.group(1), m.group(2), m.group(0)
        called = re.search(r"calls=%([\w.\-]+)", line)
        text = line + "\n" + (bodies.get(called.group(1), "") if called else "")
        # The opcodes of the op and of the computation it calls: not a word search of the text, where an operand
        # named %reduce.3 made an elementwise fusion that reads a reduction's result a reduction.
        opcodes = {opcode} | {op for _, op in _INSTRUCTION.findall(text)}
        window = re.search(r"window=\{size=(\d+)", text)
        shape = line.split(" = ", 1)[1].split(f" {opcode}(", 1)[0]
        target = re.search(r'custom_call_target="([^"]+)"', line)
        library = target and next((kind for key, kind in _CUSTOM_CALLS if key in target.group(1)), None)
        if library:
            kinds[name] = (library, shape)
        elif "convolution" in opcodes:
            direction = ("weight gradient" if window and int(window.group(1)) > 11 else
                         "input gradient" if "transpose(jvp" in text else "forward")
            kinds[name] = (f"convolution, {direction}", shape)
        elif "dot" in opcodes:
            kinds[name] = ("dot", shape)
        elif opcode in ("transpose", "copy") or name.startswith(("transpose", "copy")):
            kinds[name] = ("transpose / copy", shape)
        elif opcodes & {"reduce", "reduce-window"}:
            kinds[name] = ("reduction", shape)
        else:
            kinds[name] = ("elementwise / other", shape)
    return kinds


# Kernels in a command buffer that no op names, by what their names say they compute (cuDNN's convolutions, the
# matmul libraries', copies).
_LIBRARY_KERNELS = (("fprop", "convolution, forward"), ("dgrad", "convolution, input gradient"),
                    ("wgrad", "convolution, weight gradient"), ("gemm", "dot"), ("nvjet", "dot"),
                    ("memcpy", "transpose / copy"), ("memset", "elementwise / other"))


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


def op_sources(hlo: str) -> dict[str, str]:
    """{op name: "path:line function"}: the innermost frame in maginet_jax/ of the Python stack that traced each
    op, from the FileNames, FunctionNames, FileLocations and StackFrames tables XLA prints after the module."""
    tables = {name: body for name, body in re.findall(r"^(FileNames|FunctionNames|FileLocations|StackFrames)\n"
                                                       r"(.*?)(?=\n\n|\Z)", hlo, re.M | re.S)}
    files = dict(re.findall(r'^(\d+) "(.*)"$', tables.get("FileNames", ""), re.M))
    functions = dict(re.findall(r'^(\d+) "(.*)"$', tables.get("FunctionNames", ""), re.M))
    locations = {i: (f, fn, line) for i, f, fn, line in
                 re.findall(r"^(\d+) \{file_name_id=(\d+) function_name_id=(\d+) line=(\d+)", tables.get(
                     "FileLocations", ""), re.M)}
    # As printed, a frame's parent_frame_id is one more than its parent's id (0: none; seen with jax 0.10-0.11).
    frames = {i: (loc, str(int(parent) - 1)) for i, loc, parent in
              re.findall(r"^(\d+) \{file_location_id=(\d+) parent_frame_id=(\d+)\}", tables.get("StackFrames", ""),
                         re.M)}

    def innermost_own(frame: str) -> str:
        for _ in range(len(frames)):
            if frame not in frames:
                break
            loc, parent = frames[frame]
            f, fn, line = locations[loc]
            if "maginet_jax/" in files[f]:
                return f"{'maginet_jax/' + files[f].rsplit('maginet_jax/', 1)[1]}:{line} {functions[fn]}"
            frame = parent
        return ""

    return {name: innermost_own(frame) for name, frame in
            re.findall(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?stack_frame_id=(\d+)", hlo, re.M)}


def read_kept(trace_dir: str) -> tuple[str, dict, Path]:
    """(the compiled HLO, the header and traced steps, the trace's path) of what `profile` wrote into `trace_dir`;
    ValueError naming what is missing or unreadable."""
    if not trace_dir.strip():  # Path("") is the current directory
        raise ValueError("--from_trace is empty: name the directory --trace_dir kept")
    d = Path(trace_dir)
    missing = [n for n in (_TRACE, _HLO, _META) if not (d / n).is_file()]
    if missing:
        raise ValueError(f"--from_trace={d} lacks {', '.join(missing)} (what --trace_dir keeps)")
    try:
        hlo, meta = gzip.open(d / _HLO, "rt").read(), json.loads((d / _META).read_text())
    except (OSError, EOFError, ValueError) as e:  # not gzip, not JSON, not text
        raise ValueError(f"--from_trace={d}: cannot read what --trace_dir keeps ({e})") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("header"), str) and isinstance(meta.get("on_gpu"), bool)
            and isinstance(meta.get("steps"), int) and meta["steps"] > 0):
        raise ValueError(f"--from_trace={d}: {_META} is not what --trace_dir keeps (header, on_gpu, steps)")
    return hlo, meta, d / _TRACE


def read_timed(trace_dir: str) -> tuple[str, dict, dict, collections.Counter, dict[str, str], float]:
    """`read_kept`'s HLO and header, then `op_kinds` and `op_times` of its ops; ValueError for a trace that timed
    no op, or no GPU kernel where the header says the step ran on a GPU (a CPU's trace beside a GPU's HLO)."""
    hlo, meta, trace = read_kept(trace_dir)
    kinds = op_kinds(hlo)
    try:
        times, kind_of, busy = op_times(trace, kinds)
    except (OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--from_trace={trace_dir}: cannot read {_TRACE} ({e!r})") from None
    if meta["on_gpu"] and not busy:
        raise ValueError("the trace holds no GPU kernels (a CPU's trace, or the profiler had no CUPTI)")
    if not times:
        raise ValueError("the trace holds no XLA op events (this backend does not report them)")
    return hlo, meta, kinds, times, kind_of, busy


def summarize(trace_dir: str, top: int) -> str:
    """The three Markdown tables (by kind, by source line, single ops) of what `profile` wrote into `trace_dir`,
    under its header line."""
    hlo, meta, kinds, times, kind_of, busy = read_timed(trace_dir)
    sources = op_sources(hlo)
    per_step = {name: us / 1e3 / meta["steps"] for name, us in times.items()}
    total = sum(per_step.values())
    by_kind, by_source = collections.Counter(), collections.Counter()
    for name, ms in per_step.items():
        by_kind[kind_of[name]] += ms
        by_source[sources.get(name) or "(no maginet_jax/ frame)"] += ms
    lines = [meta["header"] + f"; traced, {total:.0f} ms of op time a step over {len(per_step)} ops" +
             (f", the GPU busy {busy / 1e3 / meta['steps']:.0f} ms a step" if busy else ""),
             "", "| kind | ms a step | share of op time |", "|---|---|---|"]
    lines += [f"| {kind} | {ms:.1f} | {100 * ms / total:.0f}% |" for kind, ms in by_kind.most_common()]
    lines += ["", "| source line | ms a step | share of op time |", "|---|---|---|"]
    lines += [f"| {src} | {ms:.1f} | {100 * ms / total:.0f}% |" for src, ms in by_source.most_common(top)]
    lines += ["", "| op | kind | output | source line | ms a step |", "|---|---|---|---|---|"]
    lines += [f"| {name[:80]} | {kind_of[name]} | {kinds.get(name, ('', ''))[1]} | {sources.get(name, '')} | "
              f"{ms:.2f} |" for name, ms in sorted(per_step.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(lines)


def profile(config, steps: int, trace_dir: str) -> None:
    """Runs the stage's train step (two steps, five timed, `steps` traced) and writes into `trace_dir`, flat, the
    trace, the compiled HLO and the traced steps with the header line (untraced time included)."""
    variant = compare_variants.JaxVariant(config, compare_variants.first_batch(config))
    step = compare_variants.synced(variant.train_step)
    step(), step()
    untraced, before = [], resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(5):
        t = time.perf_counter()
        step()
        untraced.append(time.perf_counter() - t)
    # The process's CPU time and page faults over those steps: on a CPU, what the kernel's side of a step costs
    # (XLA:CPU takes each step's temporaries from malloc afresh, and large blocks come from the kernel each time).
    after = resource.getrusage(resource.RUSAGE_SELF)
    used = {k: (getattr(after, k) - getattr(before, k)) / 5 for k in ("ru_utime", "ru_stime", "ru_minflt")}
    meta = {"steps": steps, "on_gpu": jax.devices()[0].platform == "gpu",
            "header": f"{config.stage} train step, batch {config.batch_size} at {config.data.crop_size}², on "
                      f"{jax.devices()[0].device_kind}: {1e3 * np.median(untraced):.0f} ms a step (median of 5, "
                      f"untraced; the process's CPU time {1e3 * used['ru_utime']:.0f} ms user and "
                      f"{1e3 * used['ru_stime']:.0f} ms system, {used['ru_minflt']:.0f} minor page faults a step)"}
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(steps):
                step()
        shutil.copy(next(Path(tmp).rglob("*.trace.json.gz")), os.path.join(trace_dir, _TRACE))
    with gzip.open(os.path.join(trace_dir, _HLO), "wt") as f:
        f.write(variant.train_compiled.as_text())
    with open(os.path.join(trace_dir, _META), "w") as f:
        json.dump(meta, f, indent=2)


def main(argv) -> None:
    if len(argv) > 1:
        sys.exit(f"step_profile.py: error: unexpected arguments {argv[1:]}")
    try:
        if (_FROM_TRACE.value is None) == (train.CONFIG.value is None):
            raise ValueError("give --config (to profile a stage) or --from_trace (to read a kept trace), one")
        if _FROM_TRACE.value is not None:
            if _TRACE_DIR.present or _STEPS.present:
                raise ValueError("--from_trace reads a kept trace: --trace_dir and --traced_steps are for --config")
            print(summarize(_FROM_TRACE.value, _TOP.value))
            return
        if _TRACE_DIR.value is not None and not _TRACE_DIR.value.strip():
            raise ValueError("--trace_dir is empty: name a directory, or leave the flag out to drop the trace")
        train.validate(train.CONFIG.value)
        with tempfile.TemporaryDirectory() as tmp:
            trace_dir = _TRACE_DIR.value or tmp
            try:  # before the profile, not after it
                os.makedirs(trace_dir, exist_ok=True)
            except OSError as e:
                raise ValueError(f"--trace_dir={trace_dir}: cannot make the directory ({e.strerror})") from None
            kept = [name for name in (_TRACE, _HLO, _META) if os.path.exists(os.path.join(trace_dir, name))]
            if kept:  # an earlier profile, perhaps the one a change is measured against
                raise ValueError(f"--trace_dir={trace_dir} already holds a kept trace ({', '.join(kept)}): name "
                                 "a new directory, or remove it")
            profile(train.CONFIG.value, _STEPS.value, trace_dir)
            print(summarize(trace_dir, _TOP.value))
    except (ValueError, UserError) as e:
        sys.exit(f"step_profile.py: error: {e}")

if __name__ == "__main__":
    app.run(main, flags_parser=functools.partial(train.parse_flags, prog="benchmarks.step_profile"))
