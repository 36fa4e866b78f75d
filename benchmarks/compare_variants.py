"""What benchmarks/compare.py times: the project's jitted JAX step (also step_profile's and cpu_options') and its
PyTorch twin's, eager or compiled, NCHW or channels_last, each with its train step, inference and peak memory."""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np
import torch
from flax import nnx

from benchmarks.torch_twin import steps, transfer
from data_pipeline import loader
from maginet_jax import train
from maginet_jax.training import compiler, dry_runs, sharding

_START = time.perf_counter()


def progress(message: str) -> None:
    """One line on stderr with the seconds since start: where a run's time goes, even if it is cut off."""
    print(f"benchmarks.compare [{time.perf_counter() - _START:6.1f} s] {message}", file=sys.stderr, flush=True)


def first_batch(config) -> dict:
    """The first training batch of `config`'s data, as the training loop would draw it: every variant's input."""
    source = loader.make_source(config.data, "train", config.batch_size, ("albedo", *config.get("passes", ())))
    return next(iter(loader.make_loader(source, batch_size=config.batch_size, crop_size=config.data.crop_size,
                                        train=True, seed=config.seed)))


def synced(fn):
    """Calls fn and waits for every result on the device: the time a step really takes."""
    def run():
        jax.block_until_ready(fn())
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return run


class JaxVariant:
    """The stage's jitted train step and prediction, exactly as the training loop and the evaluator run them."""

    name, layout = "jax", "NHWC"

    def __init__(self, config, batch):
        self.mesh = sharding.make_mesh(config.mesh)
        stage = train.STAGES[config.stage]
        self.graphdefs, self.state = stage.init(config, self.mesh)
        self.frozen = jax.device_put(stage.frozen_nets(config, self.mesh), sharding.replicated(self.mesh))
        self.batch = sharding.to_global(batch, self.mesh)
        step = train.jit_train_step(config, self.graphdefs, self.mesh, jax.tree.map(lambda x: x.sharding, self.state))
        predict = jax.jit(functools.partial(stage.predict, config=config, graphdefs=self.graphdefs),
                          compiler_options=compiler.options(config))
        # Lowered ahead, for XLA's FLOP count; the train step compiled ahead too, for its memory, and its time
        # counts as warm-up. Inference compiles in its first warm-up call (as torch.compile does), after the train
        # report is saved: on a GPU its compile is a fifth of the train step's, time a cut-off run would lose.
        with jax.set_mesh(self.mesh):
            self.lowered = {"train": step.lower(self.state, self.batch, self.frozen),
                            "infer": predict.lower(self.state.params, self.frozen, self.batch)}
            t = time.perf_counter()
            self.train_compiled = self.lowered["train"].compile()
            self.compile_s = {"train": time.perf_counter() - t, "infer": 0.0}
        self.infer_compiled = None
        self.train_bytes = self.memory(None)["peak_memory_bytes"]
        progress(f"jax: compiled the train step in {self.compile_s['train']:.1f} s; it needs "
                 f"{self.train_bytes / 2**30:.2f} GiB")

    def networks(self) -> dict:
        """The trained networks and stage 2's frozen stage-1 AlbedoNet, as NNX modules (to copy to PyTorch)."""
        nets = {n: nnx.merge(self.graphdefs[n], p) for n, p in self.state.params.items()}
        upstream = self.frozen["upstream"].get("albedo")
        return {**nets, "albedo": nnx.merge(*upstream)} if upstream else nets

    def train_step(self):
        self.state, scalars = self.train_compiled(self.state, self.batch, self.frozen)
        return scalars

    def infer_step(self):
        if self.infer_compiled is None:
            t = time.perf_counter()
            self.infer_compiled = self.lowered["infer"].compile()
            progress(f"jax: compiled inference in {time.perf_counter() - t:.1f} s")
        return self.infer_compiled(self.state.params, self.frozen, self.batch)

    def flops(self) -> dict[str, float]:
        """XLA's FLOPs of a train and an inference step, all devices together (the lowered programs: see the
        module docstring)."""
        return {k: dry_runs.flops(lowered) for k, lowered in self.lowered.items()}

    def memory(self, warmup_peak) -> dict:
        del warmup_peak  # PyTorch's measure; XLA's buffer assignment is exact
        m = self.train_compiled.memory_analysis()
        return {"peak_memory_bytes": int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                                         - m.alias_size_in_bytes), "memory_source": "XLA buffer assignment"}


class TorchVariant:
    """The twin's train step and inference, eager or compiled, NCHW or channels_last, from the JAX weights."""

    compile_s = {"train": 0.0, "infer": 0.0}  # torch.compile compiles in the first (warm-up) steps

    def __init__(self, name: str, config, batch, jax_networks: dict):
        self.name, self.config = name, config
        self.layout = "channels_last" if name.endswith("channels_last") else "NCHW"
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        before = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
        fmt = torch.channels_last if self.layout == "channels_last" else torch.contiguous_format
        self.nets = steps.build(config)
        for key, module in jax_networks.items():
            transfer.load_from_jax(self.nets[key], module)
        self.nets = steps.mixed_precision(self.nets, config)
        self.nets = {k: v.to(device=device, memory_format=fmt) if v is not None else None for k, v in self.nets.items()}
        self.opt = steps.Optimizers(config, self.nets, fused=True)
        if name.startswith("torch_compile"):
            self.nets = {k: torch.compile(v) if v is not None else None for k, v in self.nets.items()}
        self.batch = {k: torch.from_numpy(np.ascontiguousarray(np.asarray(v).transpose(0, 3, 1, 2))).to(
            device=device, memory_format=fmt) for k, v in batch.items() if np.ndim(v) == 4}
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.step = 0
        # What this variant keeps on the GPU (networks, loss networks, batch): its share of what is allocated when
        # its warm-up begins, beside the other variants' networks and optimizer states.
        self.state_bytes = torch.cuda.memory_allocated() - before if torch.cuda.is_available() else 0

    def train_step(self):
        self.step += 1
        return steps.train_step(self.nets, self.opt, self.batch, self.config, self.step, generator=self.generator)

    def infer_step(self):
        return steps.infer_step(self.nets, self.batch, self.config)

    def memory(self, warmup_peak) -> dict:
        if warmup_peak is None:  # a CPU: one more train step under the memory profiler
            return {"peak_memory_bytes": profiled_peak_bytes(self.train_step),
                    "memory_source": "memory profiler, live tensors"}
        return {"peak_memory_bytes": self.state_bytes + warmup_peak,
                "memory_source": "allocator peak, less the other variants' state"}


def profiled_peak_bytes(step) -> int:
    """The most bytes of tensors live at once during one call of `step`, by PyTorch's memory profiler: parameters,
    optimizer state and inputs it sees used, activations, gradients, temporaries. PyTorch keeps no peak for its
    CPU allocator, so on a CPU this stands in for the GPU allocator's peak (both leave out fragmentation)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True, record_shapes=True,
                                with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "timeline.json")
        prof.export_memory_timeline(path, device="cpu")
        with open(path) as f:
            _, sizes = json.load(f)  # per time stamp, bytes by category
    return int(max(sum(s) for s in sizes))
