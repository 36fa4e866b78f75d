"""How far a GPU train step is from what its program allows: each op's time against its roofline bound.

    python -m benchmarks.roofline --from_trace=DIR [--device="H100 PCIe"] [--top 15]

DIR is what `python -m benchmarks.step_profile --trace_dir=DIR` kept on a GPU (the trace and the compiled HLO). For
every op the trace timed, this counts from the HLO what it must do at the least: its FLOPs (convolutions, from the
shapes of cuDNN's calls; dots, from their contracting dimensions; nothing else counts) and the bytes it must move
(every operand read once, every output written once; a library call's scratch space left out). Its bound is the
larger of FLOPs over the device's dense peak (bfloat16, or TF32 where a convolution or dot reads float32) and bytes
over its memory bandwidth. The sum of the bounds is the step's floor under this program: its ops, as XLA fused them,
each at its roofline, the GPU never idle. FLOPs over the floor is the MFU that floor allows, the ceiling for this
program (MFU here is over the dense bfloat16 peak, as `benchmarks.compare` reports it in bfloat16).

What it cannot see: an op that reads a slice of an operand is charged for the whole operand, so a bound can be too
high (never too low otherwise); and a cheaper program (other fusions, layouts, fewer passes over memory) has another
floor. So the tables say which ops are far from their bound (the kernels to look at) and how much of the step is
memory traffic that only a change of program can remove.
"""

from __future__ import annotations

import argparse
import collections
import math
import re
import sys

from benchmarks import datasheets, step_profile
from benchmarks.layer_timing import positive_int

_ARRAY = re.compile(r"\b(pred|bf16|f8e\w+|[subf]\d+)\[([\d,]*)\]")
_LINE = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = ((?:\(.*?\)|\S+)) ([\w\-]+)\(([^)]*)\)(.*)$", re.M)


def arrays(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    """[(dtype, dims)] of each array in an HLO shape (one, or a tuple's)."""
    return [(t, tuple(int(d) for d in dims.split(",") if d)) for t, dims in _ARRAY.findall(shape)]


def nbytes(dtype: str, dims: tuple[int, ...]) -> int:
    """Bytes of one array."""
    width = 1 if dtype == "pred" or dtype.startswith("f8") else 2 if dtype == "bf16" else max(int(dtype[1:]) // 8, 1)
    return width * math.prod(dims)


def computations(hlo: str) -> dict[str, dict[str, tuple[str, str, list[str], str]]]:
    """{computation: {instruction: (shape, opcode, operand names, attributes)}}; the entry is "ENTRY"."""
    out = {}
    for m in re.finditer(r"^(ENTRY )?%?([\w.\-]+) \(.*?\) -> .*? \{\n(.*?)\n\}", hlo, re.M | re.S):
        out["ENTRY" if m.group(1) else m.group(2)] = {
            name: (shape, opcode, re.findall(r"%([\w.\-]+)", operands), rest)
            for name, shape, opcode, operands, rest in _LINE.findall(m.group(3))}
    return out


def _conv_flops(target: str, out: list, ins: list, rest: str) -> int:
    """2 · (the forward output's elements) · (the kernel's elements per output feature), from a cuDNN call: the
    forward output is the call's result, or its first operand for an input gradient, its second for a weight
    gradient; the kernel is the second operand, or the result for a weight gradient."""
    labels = re.search(r"dim_labels=\w+_(\w+)->", rest)
    if "BackwardFilter" in target:
        y, w = ins[1], out[0]
    elif "BackwardInput" in target:
        y, w = ins[0], ins[1]
    else:
        y, w = out[0], ins[1]
    o = labels.group(1).index("o") if labels else 0
    return 2 * math.prod(y[1]) * math.prod(w[1]) // max(w[1][o], 1)


def _dot_flops(out_dims: tuple[int, ...], lhs_dims: tuple[int, ...], contracting: list[int]) -> int:
    return 2 * math.prod(out_dims) * math.prod(lhs_dims[d] for d in contracting)


def op_costs(hlo: str) -> dict[str, tuple[int, int, bool]]:
    """{entry op: (FLOPs, bytes, whether its math reads float32)} for every op of the compiled module's entry."""
    comps = computations(hlo)
    entry = comps["ENTRY"]
    costs = {}
    for name, (shape, opcode, operands, rest) in entry.items():
        if opcode in ("parameter", "get-tuple-element", "bitcast", "tuple", "constant"):
            continue
        target = re.search(r'custom_call_target="([^"]+)"', rest)
        out = arrays(shape)
        if opcode == "custom-call":  # a library call's scratch space is the tuple's last, u8 or s8, element
            out = [a for a in out if a[0] not in ("u8", "s8")] or out
        ins = [a for o in dict.fromkeys(operands) if o in entry for a in arrays(entry[o][0])]
        moved = sum(nbytes(*a) for a in out + ins)
        flops, fp32 = 0, False
        if target and "cudnn$conv" in target.group(1):
            flops, fp32 = _conv_flops(target.group(1), out, ins, rest), ins[0][0] == "f32"
        elif target and ("gemm" in target.group(1) or "matmul" in target.group(1)):
            lhs = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', rest)
            dims = [int(d) for d in re.findall(r"\d+", lhs.group(1))] if lhs else []
            flops, fp32 = _dot_flops(out[0][1], ins[0][1], dims), ins[0][0] == "f32"
        else:
            called = re.search(r"calls=%([\w.\-]+)", rest)
            body = comps.get(called.group(1), {}) if called else {}
            for shape_d, op_d, operands_d, rest_d in body.values():
                contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest_d)
                if op_d == "dot" and contracting and operands_d and operands_d[0] in body:
                    dtype, lhs = arrays(body[operands_d[0]][0])[0]
                    dims = [int(d) for d in contracting.group(1).split(",") if d]
                    flops += _dot_flops(arrays(shape_d)[0][1], lhs, dims)
                    fp32 = fp32 or dtype == "f32"
        costs[name] = (flops, moved, fp32)
    return costs


def device_spec(header: str) -> datasheets.Spec:
    """The data sheet of the GPU a trace's header line names."""
    spec = datasheets.lookup(header)
    if spec is None:
        raise ValueError(f"the trace's header names no GPU of {[s.name for s in datasheets.SPECS]}; give --device")
    return spec


def summarize(trace_dir: str, top: int, device: str | None = None) -> str:
    """The header line, the step's floor, and three Markdown tables: by kind, by source line and the single ops, the
    lines and ops furthest from their bounds first."""
    hlo, meta, kinds, times, kind_of, _ = step_profile.read_timed(trace_dir)
    if not meta["on_gpu"]:
        raise ValueError("the trace is from a CPU; a roofline needs a GPU's trace (its kernels timed alone)")
    spec = datasheets.by_name(device) if device is not None else device_spec(meta["header"])
    step = re.search(r": (\d+(?:\.\d+)?) ms a step", meta["header"])
    if step is None:
        raise ValueError(f"the trace's header gives no time a step (what step_profile writes): {meta['header']!r}")
    costs = op_costs(hlo)
    peak, bandwidth, device = spec.flops, spec.bandwidth, spec.name
    rows = []  # (name, kind, measured ms, bound ms, GFLOP, MB, bound by)
    for name, us in times.items():
        flops, moved, fp32 = costs.get(name, (0, 0, False))
        compute = flops / peak["float32" if fp32 else "bfloat16"]
        memory = moved / bandwidth
        rows.append((name, kind_of[name], us / 1e3 / meta["steps"], 1e3 * max(compute, memory), flops / 1e9,
                     moved / 1e6, "compute" if compute > memory else "memory"))
    measured, floor = sum(r[2] for r in rows), sum(r[3] for r in rows)
    flops = sum(r[4] for r in rows) * 1e9
    unmatched = sum(r[2] for r in rows if r[0] not in costs)
    step_ms = float(step.group(1))
    lines = [meta["header"],
             "",
             f"Counted from the HLO: {flops / 1e12:.3g} TFLOP a step in convolutions and dots; "
             f"{sum(r[5] for r in rows) / 1e3:.3g} GB moved at the least. At {device}'s peaks "
             f"({peak['bfloat16'] / 1e12:.0f} TFLOP/s bfloat16, {peak['float32'] / 1e12:.0f} TF32, "
             f"{bandwidth / 1e12:.2f} TB/s), the ops' bounds sum to {floor:.1f} ms, against {measured:.1f} ms of op "
             f"time and {step_ms:.0f} ms a step: MFU {100 * flops / (peak['bfloat16'] * step_ms / 1e3):.1f}% now, "
             f"at most {100 * flops / (peak['bfloat16'] * floor / 1e3):.1f}% with every op at its bound"
             + (f" ({unmatched:.1f} ms of op time in kernels no HLO op names, counted as free)" if unmatched else "")
             + ".",
             "", "| kind | ms a step | bound ms | of which compute-bound | TFLOP | GB moved | time over bound |",
             "|---|---|---|---|---|---|---|"]
    by_kind = collections.defaultdict(lambda: [0.0, 0.0, 0.0, 0.0, 0.0])
    for _, kind, ms, bound, gflop, mb, by in rows:
        k = by_kind[kind]
        k[0] += ms
        k[1] += bound
        k[2] += bound if by == "compute" else 0.0
        k[3] += gflop / 1e3
        k[4] += mb / 1e3
    for kind, (ms, bound, compute, tflop, gb) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"| {kind} | {ms:.1f} | {bound:.1f} | {compute:.1f} | {tflop:.2f} | {gb:.1f} | "
                     f"{ms / bound if bound else math.inf:.1f}× |")
    sources = step_profile.op_sources(hlo)
    by_source = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    for name, _, ms, bound, _, mb, _ in rows:
        k = by_source[sources.get(name) or "(no maginet_jax/ frame)"]
        k[0] += ms
        k[1] += bound
        k[2] += mb / 1e3
    lines += ["", "| source line | ms a step | bound ms | GB moved | ms over bound |", "|---|---|---|---|---|"]
    for src, (ms, bound, gb) in sorted(by_source.items(), key=lambda kv: kv[1][1] - kv[1][0])[:top]:
        lines.append(f"| {src} | {ms:.1f} | {bound:.1f} | {gb:.1f} | {ms - bound:.1f} |")
    lines += ["", "| op | kind | ms a step | bound ms | bound by | GFLOP | MB moved | ms over bound |",
              "|---|---|---|---|---|---|---|---|"]
    for name, kind, ms, bound, gflop, mb, by in sorted(rows, key=lambda r: r[3] - r[2])[:top]:
        lines.append(f"| {name[:60]} | {kind} | {ms:.2f} | {bound:.2f} | {by} | {gflop:.1f} | {mb:.0f} | "
                     f"{ms - bound:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="benchmarks.roofline", description=__doc__.splitlines()[0])
    parser.add_argument("--from_trace", required=True, help="what step_profile --trace_dir kept, on a GPU")
    parser.add_argument("--device", help=f"the GPU, one of {[s.name for s in datasheets.SPECS]} (default: from "
                        "the trace's header)")
    parser.add_argument("--top", type=positive_int, default=15, help="how many source lines and single ops to list")
    args = parser.parse_args()
    try:
        print(summarize(args.from_trace, args.top, args.device))
    except ValueError as e:
        sys.exit(f"roofline.py: error: {e}")


if __name__ == "__main__":
    main()
