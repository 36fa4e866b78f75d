"""A stage's jitted train and inference steps compiled under several XLA:CPU settings, timed in one process.

    python benchmarks/cpu_options.py --config=configs/albedo.py:demo \
        [--setting=xla_default --setting=none --setting=reduce ...] [--steps=15] [--warmup=2]

Each --setting is a value of `config.xla_cpu_ynn_fusions` (maginet_jax/training/compiler.py: which kinds of work
XLA:CPU hands to the YNNPACK library; `xla_default` is XLA's own choice). The step is lowered once, as
`benchmarks.compare_variants.JaxVariant` lowers it (it takes `benchmarks.compare`'s --steps and --warmup), and compiled once per setting; each round
then runs one train step and one inference step of every setting in turn (`layer_timing.median_ms`), so the
machine's noise hits all alike, and the medians are printed as a Markdown table, with the largest difference of
each setting's inference outputs from the first's (the same parameters: a setting changes kernels, never the
function). CPU only: other backends ignore these options.
"""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import compare, compare_variants  # noqa: E402
from benchmarks.layer_timing import median_ms  # noqa: E402
from maginet_jax import train  # noqa: E402
from maginet_jax.errors import UserError  # noqa: E402
from maginet_jax.training import compiler  # noqa: E402

_SETTINGS = flags.DEFINE_multi_string("setting", [compiler.XLA_DEFAULT, compiler.NONE, compiler.DEFAULT],
                                      "Values of config.xla_cpu_ynn_fusions to compare.")


def max_difference(a, b) -> float:
    """The largest absolute difference between two pytrees of arrays."""
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main(argv) -> None:
    if len(argv) > 1:
        sys.exit(f"cpu_options: error: unexpected arguments {argv[1:]}")
    config = train.CONFIG.value
    try:
        # benchmarks.compare's flags come with it: --steps and --warmup are taken, the rest would do nothing here.
        unused = [f"--{name}" for name in ("stage", "json", "variants", "pipeline_batches", "out_dir")
                  if flags.FLAGS[name].present]
        if unused:
            raise UserError(f"{', '.join(unused)}: benchmarks.compare's, not taken here (--steps and --warmup are)")
        compare.check_counts(["jax"], compare._STEPS.value, compare._WARMUP.value, 0)
        if jax.default_backend() != "cpu":
            raise UserError(f"these are XLA:CPU settings; this jax runs on {jax.default_backend()} "
                            "(JAX_PLATFORMS=cpu for the CPU)")
        options = {s: compiler.ynn_options(s) for s in _SETTINGS.value}
        compare.check(config, config.stage, ["jax"])
    except UserError as e:
        sys.exit(f"cpu_options: error: {e}")
    config.xla_cpu_ynn_fusions = compiler.XLA_DEFAULT  # lowered without options; each compile adds its own
    variant = compare_variants.JaxVariant(config, compare_variants.first_batch(config))
    with jax.set_mesh(variant.mesh):
        steps = {s: {mode: variant.lowered[mode].compile(compiler_options=opts) for mode in ("train", "infer")}
                 for s, opts in options.items()}
    state, batch, frozen = {"now": variant.state}, variant.batch, variant.frozen
    outputs = {s: jax.device_get(c["infer"](state["now"].params, frozen, batch)) for s, c in steps.items()}

    def train_step(step):  # donates the state, so each setting's step continues from the last one's
        state["now"], scalars = step(state["now"], batch, frozen)
        jax.block_until_ready(scalars)

    def infer_step(step):
        jax.block_until_ready(step(state["now"].params, frozen, batch))

    calls = {(s, mode): functools.partial(train_step if mode == "train" else infer_step, c[mode])
             for s, c in steps.items() for mode in ("train", "infer")}
    for _ in range(compare._WARMUP.value):
        for call in calls.values():
            call()
    ms = median_ms(calls, compare._STEPS.value)
    first = _SETTINGS.value[0]
    print(f"{config.stage}: batch {config.batch_size} at {config.data.crop_size}², {jax.device_count()} CPU "
          f"device(s), median of {compare._STEPS.value} interleaved rounds (jax {jax.__version__})\n")
    print(f"| xla_cpu_ynn_fusions | train step | inference step | inference outputs, max diff from {first} |")
    print("| --- | --- | --- | --- |")
    for s in steps:
        print(f"| {s} | {ms[s, 'train']:.0f} ms | {ms[s, 'infer']:.0f} ms | "
              f"{max_difference(outputs[s], outputs[first]):.1e} |")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=functools.partial(train.parse_flags, prog="cpu_options"))
