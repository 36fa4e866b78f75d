"""XLA's compile options for the config's jitted steps (`jax.jit(..., compiler_options=compiler.options(config))`):
the train step, the held-out evaluation (`maginet_jax.evaluator`), and the chained inference of
`maginet_jax.predict` and `benchmarks.compare`.

One setting so far, `config.xla_cpu_ynn_fusions`: which kinds of work XLA:CPU hands to the YNNPACK library.
XLA's default gives it convolutions too, and on the project's 2-core Zen 4 machine those made every train step
slower than XLA's own (Eigen) convolutions: with reductions alone left to YNNPACK the demo steps went from 651 to
535 ms (albedo), 483 to 336 (refine) and 491 to 475 (passes), each stage in one process (`python
benchmarks/cpu_options.py`, benchmarks/results/cpu-2-cores/cpu_options.md). The option is experimental in XLA: a
jax that does not know it (or one of its values) compiles without it, with a warning, since a speed setting must
not stop a run. Other backends never get it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from absl import logging

from maginet_jax.errors import UserError

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# XLA's LibraryFusionType names, as XLA_FLAGS spells them.
YNN_FUSIONS = ("dot", "eltwise", "individual_convolution", "individual_dot", "reduce")
XLA_DEFAULT = "xla_default"  # pass no option: XLA's own choice
NONE = "none"  # YNNPACK gets nothing
DEFAULT = "reduce"  # configs/common.py's; also for the saved configs of runs made before the key existed


def setting(config) -> str:
    """`config.xla_cpu_ynn_fusions`, or DEFAULT for a config saved before the key existed."""
    return config.get("xla_cpu_ynn_fusions", DEFAULT)


def ynn_fusion_types(value: str) -> tuple[str, ...] | None:
    """The fusion kinds a `config.xla_cpu_ynn_fusions` value names (None for XLA_DEFAULT, () for NONE); UserError
    for anything else."""
    if value == XLA_DEFAULT:
        return None
    names = () if value == NONE else tuple(n.strip() for n in value.split(","))
    unknown = [n for n in names if n not in YNN_FUSIONS]
    if unknown or not value:
        raise UserError(f"xla_cpu_ynn_fusions={value!r}: expected {NONE!r}, {XLA_DEFAULT!r} or comma-separated "
                        f"names from {YNN_FUSIONS}")
    return names


def ynn_options(value: str) -> dict[str, str]:
    """The compile option that sets XLA:CPU's YNNPACK fusions to `value` (no option for XLA_DEFAULT)."""
    names = ynn_fusion_types(value)
    if names is None:
        return {}
    return {YNN_OPTION: ",".join(f"LIBRARY_FUSION_TYPE_{n.upper()}" for n in names)}


@functools.cache
def _accepted(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jax's XLA compiles with `options` (it raises, naming the option, if not)."""
    try:
        jax.jit(jnp.negative).lower(jnp.zeros(2)).compile(compiler_options=dict(options))
    except jax.errors.JaxRuntimeError as e:
        logging.warning("compiling without %s: this jax's XLA does not take it (%s)", dict(options),
                        str(e).splitlines()[0])
        return False
    return True


def options(config) -> dict[str, str]:
    """Compile options for the jitted steps of `config` on the default backend (none off a CPU)."""
    if jax.default_backend() != "cpu":
        return {}
    opts = ynn_options(setting(config))
    return opts if opts and _accepted(tuple(sorted(opts.items()))) else {}
