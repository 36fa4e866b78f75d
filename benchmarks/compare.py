r"""JAX against its PyTorch twin (benchmarks/torch_twin) on one stage: train step, inference, input pipeline.

    python -m benchmarks.compare --stage albedo --config=configs/albedo.py:demo --json /tmp/albedo.json
    python -m benchmarks.compare --stage refine --config=configs/refine.py:demo --json /tmp/refine.json
    python -m benchmarks.compare --stage passes --config=configs/passes.py:demo --json /tmp/passes.json

Variants: JAX (the project's own jitted train step, donated state, as `python -m maginet_jax.train` runs it);
PyTorch eager and `torch.compile`, NCHW and channels_last. All start from the same weights (copied from JAX)
and take the same batch from the grain pipeline, at the config's batch size, resolution and dtype. After
`--warmup` steps (their time, compilation included, is `warmup_s`), `--steps` rounds each time one step of every
variant in turn, so the machine's noise hits all alike; a step's time runs until its results are computed
(`block_until_ready`; PyTorch on a GPU: `torch.cuda.synchronize`). The pipeline is timed alone, reading as the
config says (workers, threads), against what the JAX train step consumes, once the batches its workers made
ahead are drawn (`pipeline_rate`).

Precision on a GPU: JAX computes float32 convolutions and matmuls in TF32 at its default precision; PyTorch is set
to do the same (`allow_tf32` for cuDNN and cuBLAS), and the loss networks must be at
`perceptual.precision=default` on both sides, or `bfloat16` (the twin's loss networks then run under autocast).
`model.dtype=bfloat16` is JAX's mixed precision (bfloat16 convs, float32 parameters, norms and losses) and the
twin's `torch.autocast` around the trained networks. MFU is XLA's
FLOP count of the step over its time and the devices' dense peak for the dtype (TF32 for float32). The count is
taken from the lowered program, before XLA's GPU passes turn convolutions into cuDNN calls, which its compiled
cost analysis leaves out: on an H100 the compiled count of the albedo step was 3.4e11, the lowered one 1.65e13
(on a CPU the two agree to 1%).

Peak memory of the train step: JAX's is XLA's buffer assignment for it (arguments + outputs + temporaries −
donated), exact for the program on any device; PyTorch's, on a GPU, is what the variant holds (its networks, loss
networks and batch, as allocated when it was built) plus how far the allocator's peak over its warm-up steps rose
above what was allocated when they began (`torch.cuda.max_memory_allocated`, reset before them): the other variants'
networks and optimizer states, live beside it, are left out (committed reports before 2026-11-28 counted them); on
a CPU, where PyTorch keeps no allocator
statistics, the most bytes of tensors live at once over one more train step, by its memory profiler. Both
frameworks share the GPU (the rounds interleave in one process), so a run whose JAX train step alone needs more
than 45% of its memory stops with one error line before any PyTorch work. Progress lines with their times go to
stderr, so a run cut off still says where its time went, and the report is written once the train steps are timed
(inference then reads "not timed"; JAX compiles its inference program only after that), again with inference, and
again after the input pipeline's timing.

Writes the JSON (device, versions, command, config, one object per variant in `results`) and, beside it,
`<stage>.md` (a Markdown table) and `<stage>.png` (a bar chart), named by `compare_report.stem`; with
`--out_dir=benchmarks/results`, under `benchmarks/results/<device>/`, where the committed ones are (so an ad-hoc or
smoke run no longer overwrites them). A run of the pipeline alone (`--variants=`) writes the JSON and prints its
line, no table.

The variants themselves (the JAX and PyTorch steps, their peak memory, the first batch) are
`benchmarks/compare_variants.py`; this file has the flags, the checks, the interleaved timing and the report.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import platform
import shutil
import sys
import tempfile
import time

# Both frameworks share the GPU in one process. JAX's allocator would otherwise take 75% of its memory (at start,
# or, without preallocation, as XLA's autotuner asks for scratch while compiling, and it never gives it back),
# leaving PyTorch too little: cap it at half.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
# Compilation is timed cold on both sides. JAX keeps no compiled programs between runs unless asked to (a
# persistent cache is opt-in); torch.compile keeps Inductor's (and on a GPU Triton's) in a shared directory by
# default, so it gets a fresh one for the run, removed at exit. A directory given in the environment is kept.
_TORCH_CACHE = tempfile.mkdtemp(prefix="compare-torch-cache-")
atexit.register(shutil.rmtree, _TORCH_CACHE, ignore_errors=True)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(_TORCH_CACHE, "inductor"))
os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(_TORCH_CACHE, "triton"))

import jax  # noqa: E402 (after the allocator setting)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import compare_report, datasheets, layer_timing, provenance  # noqa: E402
from benchmarks.compare_variants import JaxVariant, TorchVariant, first_batch, progress, synced  # noqa: E402
from data_pipeline import loader  # noqa: E402
from maginet_jax import train  # noqa: E402
from maginet_jax.errors import UserError  # noqa: E402

_STAGE = flags.DEFINE_enum("stage", None, ["albedo", "refine", "passes"], "The stage to time (must be the config's).")
_JSON = flags.DEFINE_string("json", None, "Where to write the results JSON.")
_STEPS = flags.DEFINE_integer("steps", 15, "Timed rounds (one step of every variant each).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per variant first (at least 1: compilation, allocator "
                                "warm-up).")
_VARIANTS = flags.DEFINE_list("variants", "jax,torch_eager,torch_eager_channels_last,torch_compile,"
                              "torch_compile_channels_last", "Which variants to time (empty: only the pipeline).")
_PIPELINE_BATCHES = flags.DEFINE_integer("pipeline_batches", 20, "Batches of the input pipeline to time, rounded up "
                                          "to whole rounds of one a worker (0: skip).")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Table and chart go to <out_dir>/<device>/ (default: beside --json); "
                               "benchmarks/results is where the committed ones are.")

VARIANTS = ("jax", "torch_eager", "torch_eager_channels_last", "torch_compile", "torch_compile_channels_last")
GPU_SHARE = 0.45  # of the GPU's memory JAX's train step may need (PyTorch's twin takes about as much beside it)


def device_name() -> str:
    """A directory-friendly name of the accelerator (or CPU and core count) the figures come from."""
    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"cpu-{os.cpu_count()}-cores"
    return d.device_kind.lower().replace(" ", "-")


def check_counts(variants: list[str], steps: int, warmup: int, pipeline_batches: int) -> None:
    """UserError for counts that leave nothing to time (cpu_options.py's --steps and --warmup too)."""
    if variants and steps < 1:
        raise UserError(f"--steps={steps}: time at least one round")
    if variants and warmup < 1:
        raise UserError(f"--warmup={warmup}: at least one untimed step (it compiles)")
    if pipeline_batches < 0 or not (variants or pipeline_batches):
        raise UserError(f"--pipeline_batches={pipeline_batches}: 0 skips the pipeline, more times it; with no "
                        "--variants, at least 1")


def check_flags(variants: list[str], steps: int, warmup: int, pipeline_batches: int, json_path: str,
                out_dir: str | None = None) -> None:
    """UserError for flags that leave nothing to time or nowhere to write; creates --json's directory and
    --out_dir/<device>/ (before any timing, so a report is not lost at the end)."""
    check_counts(variants, steps, warmup, pipeline_batches)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    except OSError as e:
        raise UserError(f"--json={json_path}: cannot make its directory ({e.strerror})") from None
    layer_timing.check_output_file("--json", json_path)
    if out_dir is not None:
        if not out_dir.strip():  # it would be the current directory
            raise UserError("--out_dir is empty: name a directory, or leave the flag out (beside --json)")
        tables = os.path.join(out_dir, device_name())
        try:
            os.makedirs(tables, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out_dir={out_dir}: cannot make {tables} ({e.strerror})") from None


def check(config, stage: str, variants: list[str]) -> None:
    """UserError for what the comparison cannot do."""
    if config.stage != stage:
        raise UserError(f"--stage={stage} but the config is of the {config.stage!r} stage")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise UserError(f"--variants {unknown}: choose from {VARIANTS} (none: the input pipeline alone)")
    if config.model.get("arch", "maginet") != "maginet":
        raise UserError("the PyTorch twin has AlbedoNet, not the U-Net baseline (model.arch=unet)")
    if config.losses.get("vgg", 0) > 0 and config.perceptual.vgg_backbone != "vgg16":
        raise UserError("the PyTorch twin's VGG loss is VGG16's (perceptual.vgg_backbone=vgg16)")
    if config.grad_accum_steps != 1:
        raise UserError("the PyTorch twin steps on whole batches: leave grad_accum_steps at 1")
    if stage == "passes" and (config.init.albedo_workdir or config.init.refine_workdir):
        raise UserError("the PyTorch twin conditions stage 3 on the ground-truth albedo: leave init.*_workdir empty")
    on_cpu = jax.devices()[0].platform == "cpu"
    if config.model.get("dtype", "float32") != "float32" and on_cpu:
        raise UserError("on a CPU, compare in float32 (model.dtype): bfloat16 convolutions are emulated there")
    perceptual = config.losses.get("vgg", 0) > 0 or config.losses.get("lpips", 0) > 0
    if perceptual and not on_cpu and config.perceptual.precision == "highest":
        raise UserError("on a GPU, compare with --config.perceptual.precision=default (or bfloat16): PyTorch's loss "
                        "networks run in TF32 there (bfloat16 under autocast), as JAX's do only at those precisions")
    if perceptual and on_cpu and config.perceptual.precision == "bfloat16":
        raise UserError("on a CPU, compare with float32 loss networks (perceptual.precision): bfloat16 convolutions "
                        "are emulated there")
    train.validate(config)


def check_memory(need: int, total: int) -> None:
    """UserError when JAX's train step alone needs more than its share (GPU_SHARE) of the GPU's `total` bytes:
    both frameworks live in one process (the rounds interleave), so each must fit in about half."""
    if need > GPU_SHARE * total:
        raise UserError(f"JAX's train step alone needs {need / 2**30:.1f} GiB of the GPU's {total / 2**30:.1f}, and "
                        f"PyTorch needs about as much in the same process: lower --config.batch_size")


def time_interleaved(variants: list, method: str, warmup: int, rounds: int) -> dict[str, dict]:
    """{variant: {warmup_s, warmup_peak, times}}: `warmup` untimed calls each (on a GPU, `warmup_peak` is how far
    PyTorch's allocator peak over them rose above what was allocated when they began), then `rounds` rounds of one
    call per variant."""
    runs, out = {v.name: synced(getattr(v, method)) for v in variants}, {}
    for v in variants:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
        t = time.perf_counter()
        for _ in range(warmup):
            runs[v.name]()
        out[v.name] = {"warmup_s": time.perf_counter() - t, "times": [],
                       "warmup_peak": (int(torch.cuda.max_memory_allocated() - start) if torch.cuda.is_available()
                                       else None)}
        progress(f"{v.name}: {method} warm-up {out[v.name]['warmup_s']:.1f} s")
    for _ in range(rounds):
        for v in variants:
            t = time.perf_counter()
            runs[v.name]()
            out[v.name]["times"].append(time.perf_counter() - t)
    progress(f"{method}: {rounds} rounds timed")
    return out


def pipeline_rate(config, num_batches: int) -> float:
    """Training images per second the grain pipeline delivers alone, as the config configures it, once running.

    The workers start together, and while the first batch is awaited each makes its own, up to its buffer
    (`data.worker_buffer_size` batches): after two batches had been drawn, the next worker_count − 2 came at once,
    and a short window (3 batches of 12 workers, as a GPU run timed) measured nothing but that. So the buffers'
    worth is drawn untimed, and the clock then runs over whole rounds of one batch a worker (grain takes them in
    turn), `num_batches` rounded up."""
    workers = max(config.data.worker_count, 1)
    it = iter(loader.training_loader(config, config.batch_size))
    for _ in range(workers * config.data.worker_buffer_size + 1):
        next(it)
    timed = -(-num_batches // workers) * workers
    t = time.perf_counter()
    for _ in range(timed):
        next(it)
    return timed * config.batch_size / (time.perf_counter() - t)


def build(config, variants: list[str]) -> tuple[list, dict, int]:
    """(the variants to time, JAX first; XLA's FLOPs per train and inference step; devices in JAX's mesh)."""
    if torch.cuda.is_available():  # TF32, as JAX's default precision on the GPU (see the module docstring)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if not variants:
        return [], {"train": 0.0, "infer": 0.0}, 1
    batch = first_batch(config)
    progress(f"the batch is ready ({config.batch_size} at {config.data.crop_size}²)")
    jax_variant = JaxVariant(config, batch)  # built first: the twins start from its weights
    if torch.cuda.is_available():  # before any PyTorch work
        check_memory(jax_variant.train_bytes, torch.cuda.get_device_properties(0).total_memory)
    runners = [jax_variant] if "jax" in variants else []
    runners += [TorchVariant(n, config, batch, jax_variant.networks()) for n in VARIANTS[1:] if n in variants]
    return runners, jax_variant.flops(), jax_variant.mesh.size


def make_report(config, runners: list, timings: dict, memory: dict, flops: dict, devices: int, rounds: int,
                warmup: int) -> dict:
    """The JSON report of the modes timed so far (`timings`: {"train"[, "infer"]: `time_interleaved`'s result};
    `memory`: {variant: its `memory()`})."""
    spec = datasheets.lookup(jax.devices()[0].device_kind)
    peak = spec.flops if spec else {}
    results = []
    for v in runners:
        row = {"framework": v.name.replace("_channels_last", ""), "variant": v.name, "layout": v.layout,
               "dtype": config.model.get("dtype", "float32")}
        for mode, t in timings.items():
            times = t[v.name]["times"]
            row.update({f"{mode}_step_s": float(np.median(times)), f"{mode}_step_min_s": float(np.min(times)),
                        f"{mode}_step_max_s": float(np.max(times)),
                        f"{mode}_warmup_s": t[v.name]["warmup_s"] + v.compile_s[mode],
                        f"{mode}_images_per_s": config.batch_size / float(np.median(times)),
                        f"{mode}_tflops_per_s": flops[mode] / float(np.median(times)) / 1e12})
            if row["dtype"] in peak:
                row[f"{mode}_mfu"] = row[f"{mode}_tflops_per_s"] * 1e12 / (peak[row["dtype"]] * devices)
        row.update(memory[v.name])
        results.append(row)
    return {"stage": config.stage, "device": device_name(), "device_kind": jax.devices()[0].device_kind,
            "versions": {"python": platform.python_version(), "jax": jax.__version__, "torch": torch.__version__},
            "threads": {"torch": torch.get_num_threads(), "cpu_count": os.cpu_count()},
            "precision": {"jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
                          "torch_tf32": torch.cuda.is_available() and torch.backends.cudnn.allow_tf32,
                          "perceptual": config.perceptual.precision},
            "command": " ".join(["python -m benchmarks.compare", *sys.argv[1:]]), "commit": provenance.commit(),
            "batch_size": config.batch_size, "resolution": config.data.crop_size, "rounds": rounds, "warmup": warmup,
            "flops_per_step": flops, "results": results, "config": json.loads(config.to_json_best_effort())}


def pipeline_report(config, num_batches: int, results: list[dict]) -> dict:
    """What the input pipeline delivers against what JAX's train step consumes (images/s)."""
    delivered = pipeline_rate(config, num_batches)
    consumed = next((r["train_images_per_s"] for r in results if r["variant"] == "jax"), None)
    return {"images_per_s": delivered, "jax_train_step_images_per_s": consumed,
            "ratio": delivered / consumed if consumed else None, "worker_count": config.data.worker_count}


def save(report: dict) -> str | None:
    """Writes the JSON (--json) and, when a variant was timed, the table and the chart (beside the JSON, or under
    --out_dir/<device>/); returns the table's path."""
    with open(_JSON.value, "w") as f:
        json.dump(report, f, indent=2)
    if not report["results"]:  # the pipeline alone: no table, nor one overwritten with an empty one
        progress(f"wrote {_JSON.value}")
        return None
    directory = (os.path.join(_OUT_DIR.value, report["device"]) if _OUT_DIR.value
                 else os.path.dirname(os.path.abspath(_JSON.value)))
    table, chart = compare_report.write(report, directory)
    progress(f"wrote {_JSON.value}, {table}, {chart}")
    return table


def main(argv) -> None:
    if len(argv) > 1:
        sys.exit(f"benchmarks.compare: error: unexpected arguments {argv[1:]}")
    config = train.CONFIG.value  # --config and its overrides, as train.py defines them
    try:
        check(config, _STAGE.value, _VARIANTS.value)
        check_flags(_VARIANTS.value, _STEPS.value, _WARMUP.value, _PIPELINE_BATCHES.value, _JSON.value,
                    _OUT_DIR.value)
        runners, flops, devices = build(config, _VARIANTS.value)
    except UserError as e:
        sys.exit(f"benchmarks.compare: error: {e}")
    timings = {"train": time_interleaved(runners, "train_step", _WARMUP.value, _STEPS.value)}
    memory = {v.name: v.memory(timings["train"][v.name]["warmup_peak"]) for v in runners}
    report = make_report(config, runners, timings, memory, flops, devices, _STEPS.value, _WARMUP.value)
    save(report)  # the train steps, kept if inference's compilation below is cut off
    timings["infer"] = time_interleaved(runners, "infer_step", _WARMUP.value, _STEPS.value)
    report = make_report(config, runners, timings, memory, flops, devices, _STEPS.value, _WARMUP.value)
    table = save(report)
    if _PIPELINE_BATCHES.value:
        progress(f"timing the input pipeline ({_PIPELINE_BATCHES.value} batches)")
        report["pipeline"] = pipeline_report(config, _PIPELINE_BATCHES.value, report["results"])
        table = save(report)
    print(open(table).read() if table else compare_report.pipeline_line(report["pipeline"]))


if __name__ == "__main__":
    flags.mark_flags_as_required(["stage", "config", "json"])
    app.run(main, flags_parser=functools.partial(train.parse_flags, prog="benchmarks.compare"))
