"""What `python -m maginet_jax.train --dry_run` reports: a compiled train step's per-device memory and FLOPs,
from XLA's own memory and cost analyses (figures for the backend it compiled for: sizes compiled on virtual
CPU devices, `use_virtual_devices`, approximate an accelerator's, whose compiler fuses and lays out
differently)."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from data_pipeline.synthetic import SyntheticSource
from maginet_jax.errors import UserError


def abstract_batch(config, batch_sharding: NamedSharding) -> dict[str, jax.ShapeDtypeStruct]:
    """The global training batch as shapes: every source yields the same keys and channels, and a small
    synthetic record is the cheapest to ask (a dry run reads no data)."""
    passes = ("albedo", *config.get("passes", ()))
    record = SyntheticSource(num_records=1, resolution=32, passes=passes)[0]
    crop = config.data.crop_size
    return {k: jax.ShapeDtypeStruct((config.batch_size, crop, crop, v.shape[-1]), jnp.float32,
                                    sharding=batch_sharding) for k, v in record.items()}


def report(lowered, compiled, mesh: Mesh, counted=None) -> dict:
    """{"mesh", "flops_per_step", "flops_per_device", "bytes_per_device": {arguments, outputs, temporaries,
    total}} of an SPMD train step. `flops_per_step` is XLA's count of the lowered (global) program: the same on
    every backend. `flops_per_device` is its count of the compiled per-device program (halo exchange and other
    partitioning work included), which on a GPU leaves out the convolutions XLA hands to cuDNN. `total` counts
    donated outputs (the new state, written over the old) once.

    With microbatches (grad_accum_steps > 1) XLA counts the loop's body once: `counted` is then the step lowered
    whole, whose count is the step's, and the per-device count is NaN (not counted)."""
    memory = compiled.memory_analysis()
    arguments, outputs = memory.argument_size_in_bytes, memory.output_size_in_bytes
    temporaries, aliased = memory.temp_size_in_bytes, memory.alias_size_in_bytes
    return {"mesh": {name: int(size) for name, size in mesh.shape.items()},
            "devices": mesh.size,
            "platform": mesh.devices.flat[0].platform,
            "flops_per_step": flops(lowered if counted is None else counted),
            "flops_per_device": flops(compiled) if counted is None else float("nan"),
            "bytes_per_device": {"arguments": arguments, "outputs": outputs, "temporaries": temporaries,
                                 "total": arguments + outputs - aliased + temporaries}}


def flops(stage) -> float:
    """XLA's FLOP count of a lowered or compiled jax.stages program (NaN if XLA gives none)."""
    cost = stage.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per program
    if cost is None and isinstance(stage, jax.stages.Lowered):
        cost = cpu_cost_analysis(stage)
    return float("nan") if cost is None else float(cost.get("flops", 0.0))


def cpu_cost_analysis(lowered: jax.stages.Lowered) -> dict:
    """XLA's cost analysis of a lowered program by the CPU backend. On a GPU (jax 0.11.2, a PJRT plugin) a
    lowered program has no cost analysis of its own (`cost_analysis()` is None), but before any backend's passes
    the program, and its count, is the same for every backend."""
    # What Lowered.cost_analysis calls, with the CPU client. Private, so imported on this path alone: a jax that
    # moves it breaks this count and nothing else.
    from jax._src.lib import _jax
    return _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, lowered.compiler_ir("hlo").as_hlo_module())


def describe(report: dict) -> str:
    """The report as a few aligned lines."""
    b = report["bytes_per_device"]
    gib = lambda n: f"{n / 2**30:.3f} GiB" if n >= 2**30 else f"{n / 2**20:.3f} MiB"
    return "\n".join([f"  mesh            {report['mesh']} ({report['devices']} {report['platform']} devices)",
                      f"  FLOPs per step  {report['flops_per_step']:.4g} ("
                      + ("per device not counted: microbatches" if math.isnan(report["flops_per_device"]) else
                         f"{report['flops_per_device']:.4g} per device, as compiled") + ")",
                      *(f"  {k:<15} {gib(b[k])} per device" for k in ("arguments", "outputs", "temporaries", "total"))])


# Above the largest pod slices (a v5p-17920 slice is 8,960 devices). A mistyped count was no error: 100,000 virtual
# devices took minutes to set up before anything was compiled.
MAX_VIRTUAL_DEVICES = 16384


def use_virtual_devices(n: int, dry: bool) -> None:
    """`n` virtual CPU devices in place of the accelerators, for --dry_run; before any backend starts."""
    if not dry:
        raise UserError("--dry_run_devices needs --dry_run")
    if not 1 <= n <= MAX_VIRTUAL_DEVICES:
        raise UserError(f"--dry_run_devices={n} must be in [1, {MAX_VIRTUAL_DEVICES}]")
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", n)
    # XLA's CPU scheduler orders for concurrency, not memory (albedo :smoke at 256²: 838 MiB of temporaries,
    # 658 MiB with this); TPU and GPU compilers schedule for memory, so a dry run should too.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_enable_concurrency_optimized_scheduler=false").strip()
