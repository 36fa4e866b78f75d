"""GroupNorm + ReLU, forward and backward, in three formulations: which one a device runs fastest.

    python benchmarks/norm_kernels.py [--batch 16] [--shapes 512:64,256:128,128:256,64:512] [--dtype bfloat16]
        [--rounds 20]

Each shape is SIZE:CHANNELS, a (batch, SIZE, SIZE, CHANNELS) activation; the defaults are AlbedoNet's at the
paper config (512², widths 64-128-256-512, batch 16), where GroupNorm and the activations around it took about a
fifth of the H100's albedo train step (benchmarks/results/nvidia-h100-80gb-hbm3/profile_albedo_bfloat16.md). The
groups are the model's (`make_norm("group", ...)`). Timed, jitted, in interleaved rounds (medians): ReLU(GroupNorm(x))
and the gradients with respect to x, scale and bias, a train step's work. The floor is memory: forward reads x and
writes y, backward reads x and dy and writes dx, five activations at least; the table gives each variant's time
against it where the device's bandwidth is known.

Variants, all float32 statistics and normalisation with the output in the activation dtype:
- ours: maginet_jax.models.layers.GroupNorm (means over the pixels, as two XLA reductions).
- flax: flax.nnx.GroupNorm with the same groups.
- dot: the pixel sums of x and x² as matrix-vector products with ones (float32, HIGHEST), which XLA may hand to a
  GEMM kernel instead of its column-reduction emitter.
Before the timing, each variant's output and gradients are checked against ours (relative L2 error under 1e-2 in
bfloat16, 1e-5 in float32); a mismatch stops the run with one error line.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import datasheets  # noqa: E402
from benchmarks.layer_timing import forward_backward, median_ms, positive_int, relative_l2, tolerance  # noqa: E402
from maginet_jax.models.layers import GroupNorm, make_norm  # noqa: E402

PAPER_SHAPES = "512:64,256:128,128:256,64:512"


def dot_group_norm(x, scale, bias, groups: int, epsilon: float = 1e-6):
    """GroupNorm as layers.GroupNorm computes it, its pixel sums as products with a vector of ones."""
    b, c = x.shape[0], x.shape[-1]
    pixels = x.reshape(b, -1, c).astype(jnp.float32)
    ones = jnp.ones((pixels.shape[1],), jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    sums = jnp.einsum("bpc,p->bc", pixels, ones, precision=hi)
    squares = jnp.einsum("bpc,p->bc", pixels * pixels, ones, precision=hi)
    count = pixels.shape[1] * (c // groups)
    mean = jnp.repeat(sums.reshape(b, groups, -1).sum(-1) / count, c // groups, axis=-1)
    var = jnp.maximum(jnp.repeat(squares.reshape(b, groups, -1).sum(-1) / count, c // groups, axis=-1) - mean ** 2,
                      0.0)
    mul = jax.lax.rsqrt(var + epsilon) * scale
    shape = (b,) + (1,) * (x.ndim - 2) + (c,)
    return (x.astype(jnp.float32) * mul.reshape(shape) + (bias - mean * mul).reshape(shape)).astype(x.dtype)


VARIANTS = ("ours", "flax", "dot")


def variants(channels: int, dtype) -> dict:
    """{name: f(x, scale, bias) -> ReLU(GroupNorm(x))} for one width, with the model's groups."""
    model_norm = make_norm("group", channels, dtype=dtype, rngs=nnx.Rngs(0))
    groups, eps = model_norm.num_groups, model_norm.epsilon

    def module(make):
        # Built inside the traced function: NNX variables can only be set at the trace level they were made at.
        def f(x, scale, bias):
            norm = make()
            norm.scale.value, norm.bias.value = scale, bias
            return jax.nn.relu(norm(x))
        return f

    return {"ours": module(lambda: GroupNorm(channels, groups, epsilon=eps, dtype=dtype, rngs=nnx.Rngs(0))),
            "flax": module(lambda: nnx.GroupNorm(channels, num_groups=groups, epsilon=eps, dtype=dtype,
                                                 param_dtype=jnp.float32, rngs=nnx.Rngs(0))),
            "dot": lambda x, scale, bias: jax.nn.relu(dot_group_norm(x, scale, bias, groups, eps))}


def timings(batch: int, size: int, channels: int, dtype, rounds: int) -> dict[str, float]:
    """Median milliseconds of each variant's forward + backward at one shape, after checking them against ours."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, size, size, channels)) * 2 + 0.5, dtype)
    dy = jnp.asarray(rng.standard_normal((batch, size, size, channels)), dtype)
    scale = jnp.asarray(rng.uniform(0.5, 1.5, channels), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(channels) * 0.1, jnp.float32)
    calls = {name: forward_backward(f) for name, f in variants(channels, dtype).items()}
    results = {name: jax.block_until_ready(call(x, scale, bias, dy)) for name, call in calls.items()}
    for name, got in results.items():
        for what, g, want in zip(("output", "dx", "dscale", "dbias"), got, results["ours"]):
            if relative_l2(g, want) > tolerance(dtype):
                raise ValueError(f"{name}'s {what} at {size}²×{channels} is {relative_l2(g, want):.2e} off ours")
    return median_ms({name: lambda call=call: jax.block_until_ready(call(x, scale, bias, dy))
                      for name, call in calls.items()}, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=positive_int, default=16)
    parser.add_argument("--shapes", default=PAPER_SHAPES, help="SIZE:CHANNELS, comma-separated")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--rounds", type=positive_int, default=20)
    args = parser.parse_args()
    try:
        shapes = [tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")]
        if any(len(s) != 2 or min(s) < 1 for s in shapes):
            raise ValueError
    except ValueError:
        sys.exit(f"norm_kernels.py: error: --shapes={args.shapes!r}: each must be SIZE:CHANNELS, positive integers")
    dtype = jnp.dtype(args.dtype)
    kind = jax.devices()[0].device_kind
    spec = datasheets.lookup(kind)
    bandwidth = spec.bandwidth if spec else None
    print(f"batch {args.batch}, {args.dtype}, {args.rounds} interleaved rounds; jax {jax.__version__} on {kind}")
    print("| activation | " + " | ".join(f"{n} ms" for n in VARIANTS) + " | memory floor ms |")
    print("|---" * (len(VARIANTS) + 2) + "|")
    try:
        for size, channels in shapes:
            t = timings(args.batch, size, channels, dtype, args.rounds)
            floor = 5 * args.batch * size * size * channels * dtype.itemsize / bandwidth * 1e3 if bandwidth else None
            print(f"| {size}²×{channels} | " + " | ".join(f"{t[n]:.3f}" for n in VARIANTS) +
                  f" | {f'{floor:.3f}' if floor else 'n/a'} |")
    except ValueError as e:
        sys.exit(f"norm_kernels.py: error: {e}")


if __name__ == "__main__":
    main()
