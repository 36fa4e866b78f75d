"""benchmarks.step_profile and benchmarks.roofline: a tiny profile, the committed GPU profile read back, how ops
are classified and counted, and what the readers refuse."""

import gzip
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import H100_PROFILE, REPO, run_script


def test_step_profile(tmp_path):
    out = run_script(sys.executable, "-m", "benchmarks.step_profile", "--config=configs/refine.py:smoke",
                     "--traced_steps=1", "--top=2", f"--trace_dir={tmp_path}")
    # The smoke step's few small buffers can come back from malloc with no fault at all: the count may be 0 here.
    assert re.search(r"CPU time \d+ ms user and \d+ ms system, \d+ minor page faults a step\)", out)
    table = out[out.index("| kind |"):]
    kind_table, source_table, op_table = table.split("\n\n")[:3]
    kinds = {r.split(" | ")[0][2:]: float(r.split(" | ")[1]) for r in kind_table.splitlines()[2:]}
    convolutions = {"convolution, forward", "convolution, input gradient", "convolution, weight gradient"}
    assert convolutions <= set(kinds) and sum(kinds[k] for k in convolutions) > 0  # one kind may round to 0.0 ms
    sources = [r.split(" | ")[0][2:] for r in source_table.splitlines()[2:]]
    ours = [s for s in sources if s != "(no maginet_jax/ frame)"]  # that row sums what no line of ours made
    assert len(sources) == 2 and ours and all(s.startswith("maginet_jax/") and ".py:" in s for s in ours)
    ops = [r.split(" | ") for r in op_table.strip().splitlines()[2:]]
    # An op's line need not be among the --top source lines: which lines lead depends on the run's timings.
    assert len(ops) == 2 and all(r[1] in kinds and (r[3] == "" or r[3].startswith("maginet_jax/") and ".py:" in r[3])
                                 and float(r[4].rstrip(" |")) > 0 for r in ops)
    # a second profile into the same directory is refused before it runs: it would replace the first
    r = subprocess.run([sys.executable, "-m", "benchmarks.step_profile", "--config=configs/refine.py:smoke",
                        f"--trace_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
        f"step_profile.py: error: --trace_dir={tmp_path} already holds a kept trace (train_step.trace.json.gz, "
        "train_step.hlo.txt.gz, train_step.json): name a new directory, or remove it")
    # what --trace_dir kept reads back to the same tables
    again = run_script(sys.executable, "-m", "benchmarks.step_profile", f"--from_trace={tmp_path}", "--top=2")
    assert again[again.index("| kind |"):].strip() == table.strip()
    # (in this process: tests/test_benchmark_inputs.py runs the two CLIs' error lines)
    from benchmarks import roofline, step_profile
    with pytest.raises(ValueError, match=re.escape(
            f"--from_trace={tmp_path / 'none'} lacks train_step.trace.json.gz, train_step.hlo.txt.gz, "
            "train_step.json (what --trace_dir keeps)")):
        step_profile.summarize(str(tmp_path / "none"), 2)
    with pytest.raises(ValueError, match=re.escape(
            "the trace is from a CPU; a roofline needs a GPU's trace (its kernels timed alone)")):
        roofline.summarize(str(tmp_path), 2)


def test_step_profile_reads_gpu_traces(tmp_path):
    from benchmarks import step_profile
    gpu, host, stream, derived = 2, 1, 7, 8
    meta = [("process_name", host, None, "/host:CPU"), ("process_name", gpu, None, "/device:GPU:0 NVIDIA H100"),
            ("thread_name", gpu, stream, "Stream #13(Compute)"), ("thread_name", gpu, derived, "XLA Ops")]
    kernels = [(stream, "loop_add_fusion_3", 0, 10), (stream, "sm90_xmma_wgrad_implicit_gemm_bf16", 5, 10),
               (stream, "cutlass_80_gemm_nn", 30, 5), (stream, "nchwToNhwcKernel", 40, 2),
               (derived, "loop_add_fusion.3", 0, 40)]  # a derived timeline, which would count the fusion twice
    events = [{"ph": "M", "name": k, "pid": p, "tid": t, "args": {"name": n}} for k, p, t, n in meta]
    events += [{"ph": "X", "pid": gpu, "tid": t, "name": n, "ts": ts, "dur": d} for t, n, ts, d in kernels]
    events += [{"ph": "X", "pid": host, "tid": 1, "name": "loop_add_fusion.3", "ts": 0, "dur": 100}]
    path = tmp_path / "t.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    times, kind_of, busy = step_profile.op_times(path, {"loop_add_fusion.3": ("elementwise / other", "f32[8]")})
    assert times == {"loop_add_fusion.3": 10, "sm90_xmma_wgrad_implicit_gemm_bf16": 10, "cutlass_80_gemm_nn": 5,
                     "nchwToNhwcKernel": 2}
    assert kind_of == {"loop_add_fusion.3": "elementwise / other", "cutlass_80_gemm_nn": "dot",
                       "sm90_xmma_wgrad_implicit_gemm_bf16": "convolution, weight gradient",
                       "nchwToNhwcKernel": "kernel, other"}
    assert busy == 22  # 0-15, 30-35, 40-42


def test_committed_profile_reads_back():
    """The committed H100 profile is what --from_trace makes of its kept trace: the GPU path (cuDNN and cuBLAS
    calls by target, kernels inside command buffers by name, XLA's stack-frame tables) on a real trace."""
    d = os.path.join(REPO, "benchmarks", "results", "nvidia-h100-80gb-hbm3")
    out = run_script(sys.executable, "-m", "benchmarks.step_profile", f"--from_trace={d}/profile_albedo_bfloat16",
                     "--top=25")
    with open(os.path.join(d, "profile_albedo_bfloat16.md")) as f:
        committed = f.read()
    assert out.strip() == committed[committed.index("albedo train step"):].strip()
    assert "| maginet_jax/models/layers.py:" in out and "| convolution, weight gradient |" in out


_ROOFLINE_HLO = """HloModule m

%gemm_computation (parameter_0: bf16[4,8], parameter_1: bf16[8,16]) -> bf16[4,16] {
  %parameter_0 = bf16[4,8]{1,0} parameter(0)
  %parameter_1 = bf16[8,16]{1,0} parameter(1)
  ROOT %dot.1 = bf16[4,16]{1,0} dot(%parameter_0, %parameter_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%add_computation (p0: bf16[2,8,8,4], p1: bf16[2,8,8,4]) -> bf16[2,8,8,4] {
  %p0 = bf16[2,8,8,4]{3,2,1,0} parameter(0)
  %p1 = bf16[2,8,8,4]{3,2,1,0} parameter(1)
  ROOT %add.1 = bf16[2,8,8,4]{3,2,1,0} add(%p0, %p1)
}

ENTRY %main.1 (x: bf16[2,8,8,3], w: bf16[4,3,3,3], a: bf16[4,8], b: bf16[8,16], c: f32[4,8]) -> bf16[4,3,3,3] {
  %x = bf16[2,8,8,3]{3,2,1,0} parameter(0)
  %w = bf16[4,3,3,3]{3,2,1,0} parameter(1)
  %a = bf16[4,8]{1,0} parameter(2)
  %b = bf16[8,16]{1,0} parameter(3)
  %c = f32[4,8]{1,0} parameter(4)
  %cudnn-conv.1 = (bf16[2,8,8,4]{3,2,1,0}, u8[100]{0}) custom-call(%x, %w), window={size=3x3 pad=1_1x1_1}, \
dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"
  %y = bf16[2,8,8,4]{3,2,1,0} get-tuple-element(%cudnn-conv.1), index=0
  %cudnn-conv-bw-input.1 = (bf16[2,8,8,3]{3,2,1,0}, u8[7]{0}) custom-call(%y, %w), window={size=3x3 pad=1_1x1_1}, \
dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardInput"
  %cudnn-conv-bw-filter.1 = (bf16[4,3,3,3]{3,2,1,0}, u8[9]{0}) custom-call(%x, %y), window={size=3x3 pad=1_1x1_1}, \
dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter"
  %gemm_fusion_dot.1 = bf16[4,16]{1,0} fusion(%a, %b), kind=kCustom, calls=%gemm_computation
  %custom-call.2 = (f32[8,8]{1,0}, s8[64]{0}) custom-call(%c, %c), custom_call_target="__cublas$lt$matmul", \
backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_batch_dimensions":[], \
"lhs_contracting_dimensions":["0"]}}}
  %loop_add_fusion = bf16[2,8,8,4]{3,2,1,0} fusion(%y, %y), kind=kLoop, calls=%add_computation
  ROOT %out = bf16[4,3,3,3]{3,2,1,0} get-tuple-element(%cudnn-conv-bw-filter.1), index=0
}
"""  # a backslash ends a line that XLA prints as one


def test_roofline_counts():
    """FLOPs and bytes of each kind of op the roofline counts, by hand: a 3×3 convolution 3 → 4 channels over
    2×8×8 pixels and its two gradients, a dot in a fusion, a float32 cuBLAS call, an elementwise fusion; scratch
    space and repeated operands left out."""
    from benchmarks import roofline
    costs = roofline.op_costs(_ROOFLINE_HLO)
    conv = 2 * (2 * 8 * 8 * 4) * (3 * 3 * 3)  # 2 · output elements · kernel elements per output feature
    x, w, y = 2 * 8 * 8 * 3 * 2, 4 * 27 * 2, 2 * 8 * 8 * 4 * 2  # bfloat16 bytes
    assert costs["cudnn-conv.1"] == (conv, x + w + y, False)
    assert costs["cudnn-conv-bw-input.1"] == (conv, y + w + x, False)
    assert costs["cudnn-conv-bw-filter.1"] == (conv, x + y + w, False)
    assert costs["gemm_fusion_dot.1"] == (2 * 4 * 16 * 8, (4 * 8 + 8 * 16 + 4 * 16) * 2, False)
    assert costs["custom-call.2"] == (2 * 8 * 8 * 4, (8 * 8 + 4 * 8) * 4, True)  # %c read once
    assert costs["loop_add_fusion"] == (0, 2 * y, False)  # elementwise: no FLOPs counted
    assert set(costs) == {"cudnn-conv.1", "cudnn-conv-bw-input.1", "cudnn-conv-bw-filter.1", "gemm_fusion_dot.1",
                          "custom-call.2", "loop_add_fusion"}


_KINDS_HLO = """HloModule m

%fused_reduce (p0: f32[4,8]) -> f32[4] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %zero = f32[] constant(0)
  ROOT %reduce.1 = f32[4]{0} reduce(%p0, %zero), dimensions={1}, to_apply=%add
}

%fused_scale (reduce.2: f32[4], p1: f32[4]) -> f32[4] {
  %reduce.2 = f32[4]{0} parameter(0)
  %p1 = f32[4]{0} parameter(1)
  ROOT %multiply.1 = f32[4]{0} multiply(%reduce.2, %p1)
}

ENTRY %main (x: f32[4,8], y: f32[4]) -> f32[4] {
  %x = f32[4,8]{1,0} parameter(0)
  %y = f32[4]{0} parameter(1)
  %reduce_fusion = f32[4]{0} fusion(%x), kind=kInput, calls=%fused_reduce
  ROOT %scale_fusion = f32[4]{0} fusion(%reduce_fusion, %y), kind=kLoop, calls=%fused_scale
}
"""


def test_op_kinds_reads_opcodes_not_names():
    """A fusion is a reduction when it computes one, not when an operand's name says reduce (XLA names a fused
    computation's parameters after the ops that feed it)."""
    from benchmarks import step_profile
    kinds = step_profile.op_kinds(_KINDS_HLO)
    assert kinds["reduce_fusion"] == ("reduction", "f32[4]{0}")
    assert kinds["scale_fusion"] == ("elementwise / other", "f32[4]{0}")


def test_committed_roofline():
    """The committed roofline is what the script makes of the committed H100 profile, and the FLOPs it counts from
    cuDNN's and the dots' shapes are XLA's own count of that step (3.305e13, its profile's page) to 2%: the
    convolutions' count is right on a real module."""
    d = os.path.join(REPO, "benchmarks", "results", "nvidia-h100-80gb-hbm3")
    out = run_script(sys.executable, "-m", "benchmarks.roofline", f"--from_trace={H100_PROFILE}", "--top=25")
    with open(os.path.join(d, "roofline_albedo_bfloat16.md")) as f:
        committed = f.read().split("\n\n", 1)[1]  # after the line that says how it was made
    assert out.strip() == committed.strip()
    counted = float(re.search(r"Counted from the HLO: ([\d.]+) TFLOP", out).group(1)) * 1e12
    assert abs(counted / 3.305e13 - 1) < 0.02


def _kept(tmp_path, name, like=H100_PROFILE, **files) -> str:
    """A copy of a kept trace directory, some of its files replaced by `files` ({file name: bytes})."""
    import shutil
    d = tmp_path / name
    shutil.copytree(os.path.join(REPO, like), d)
    for file, data in files.items():
        (d / file.replace("__", ".")).write_bytes(data)
    return str(d)


def test_profile_readers_refuse_what_is_not_a_kept_trace(tmp_path):
    """step_profile --from_trace and roofline on files that are not what --trace_dir keeps: one line, not a
    traceback (BadGzipFile, KeyError, AttributeError, ZeroDivisionError); and a CPU's trace beside a GPU's HLO and
    header, which roofline used to read into a table of bounds."""
    from benchmarks import roofline, step_profile
    cpu_trace = gzip.compress(json.dumps({"traceEvents": [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
        {"ph": "X", "pid": 1, "tid": 1, "name": "loop_add_fusion", "ts": 0, "dur": 10}]}).encode())
    meta = json.loads(open(os.path.join(REPO, H100_PROFILE, "train_step.json")).read())
    cases = [
        (_kept(tmp_path, "gz", train_step__hlo__txt__gz=b"garbage"), "cannot read what --trace_dir keeps"),
        (_kept(tmp_path, "meta", train_step__json=b"{}"), "train_step.json is not what --trace_dir keeps"),
        (_kept(tmp_path, "cpu", train_step__trace__json__gz=cpu_trace), "the trace holds no GPU kernels"),
        (_kept(tmp_path, "empty", train_step__trace__json__gz=gzip.compress(b'{"traceEvents": []}')),
         "the trace holds no GPU kernels"),
    ]
    for d, error in cases:
        for summarize in (step_profile.summarize, roofline.summarize):
            with pytest.raises(ValueError, match=re.escape(error)):
                summarize(d, 5)
    meta["header"] = meta["header"].replace(" ms a step", " ms")
    d = _kept(tmp_path, "header", train_step__json=json.dumps(meta).encode())
    with pytest.raises(ValueError, match="the trace's header gives no time a step"):
        roofline.summarize(d, 5)
