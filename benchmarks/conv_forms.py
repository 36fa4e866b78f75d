"""Equivalent forms of one convolution layer, forward and backward: the lowering XLA runs well on this device.

    python benchmarks/conv_forms.py [--cases up,up_global,disc] [--dtype bfloat16] [--batch 1] [--scale 1]
        [--rounds 10]

A layer's gradient is itself a convolution, and XLA picks how to run it from the layer's form: on an H100, the
kernel gradient of pix2pixHD's transposed convolution took 280 of the passes step's 367 ms
(benchmarks/results/nvidia-h100-80gb-hbm3/profile_passes_bfloat16.md). Each case is a passes-stage layer at the
paper's size (batch 1 at 1024², sides divided by --scale), run in two forms that compute the same function with
the same parameters; timed, jitted, in interleaved rounds (medians): the output and the gradients with respect to
the input and the parameters, a train step's work.
- up: the local enhancer's upsampling, 64 → 32 channels, 512² → 1024²: flax's ConvTranspose (`transposed`) against
  `SubpixelConvTranspose` (`subpixel`, what the model uses).
- up_global: the global generator's last upsampling, 128 → 64 channels, 256² → 512², the same two forms.
- disc: the discriminator's 4×4 stride-1 convolution, 256 → 512 channels at 129² (its fourth layer at full
  resolution): padding 2 in the convolution (`padded`, what the model does) against an explicit pad and a VALID
  convolution (`valid`); on the H100 that layer's kernel gradient ran as a forward convolution over a 129×129
  window.
- disc_s2: the discriminator's second layer, 4×4 stride 2, 64 → 128 channels at 513², the same two forms.
Before the timing, each pair's outputs and gradients are compared (relative L2 under 1e-2 in bfloat16, 1e-5 in
float32); a mismatch stops the run with one error line.
"""

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maginet_jax.models.layers import Conv, ConvTranspose, SubpixelConvTranspose

INIT = nnx.initializers.normal(0.02)
CASES = ("up", "up_global", "disc", "disc_s2")


class PaddedConv(Conv):
    """A 4×4 convolution with its padding of 2 made an explicit pad and the convolution VALID."""

    def __call__(self, x):
        return super().__call__(jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))))


def forms(case: str, dtype, seed: int = 0) -> tuple[int, int, dict[str, nnx.Module]]:
    """(input side at full size, input channels, {form: layer}), the layers sharing their parameters."""
    if case in ("up", "up_global"):
        cin, cout, side = (64, 32, 512) if case == "up" else (128, 64, 256)
        sub = SubpixelConvTranspose(cin, cout, kernel_init=INIT, dtype=dtype, rngs=nnx.Rngs(seed))
        ref = ConvTranspose(cin, cout, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)), transpose_kernel=True,
                            kernel_init=INIT, dtype=dtype, rngs=nnx.Rngs(seed))
        return side, cin, {"transposed": ref, "subpixel": sub}
    cin, cout, side, stride = (256, 512, 129, 1) if case == "disc" else (64, 128, 513, 2)
    padded = Conv(cin, cout, (4, 4), strides=stride, padding=((2, 2), (2, 2)), kernel_init=INIT, dtype=dtype,
                  rngs=nnx.Rngs(seed))
    valid = PaddedConv(cin, cout, (4, 4), strides=stride, padding="VALID", kernel_init=INIT, dtype=dtype,
                       rngs=nnx.Rngs(seed))
    return side, cin, {"padded": padded, "valid": valid}


def train_fn(layer: nnx.Module):
    """jit(x, params, dy ↦ (y, dx, dparams)) for `layer`."""
    graphdef, params = nnx.split(layer)

    def run(x, params, dy):
        y, vjp = jax.vjp(lambda x, p: nnx.merge(graphdef, p)(x), x, params)
        return y, *vjp(dy)

    return jax.jit(run), params


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def time_case(case: str, dtype, batch: int, scale: int, rounds: int) -> dict[str, float]:
    """{form: median ms of output and gradients} for one case; exits with one line if the forms disagree."""
    side, cin, layers = forms(case, dtype)
    side = max(side // scale, 2)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, side, side, cin)), dtype)
    runs = {name: train_fn(layer) for name, layer in layers.items()}
    y_shape = next(iter(layers.values()))(x).shape
    dy = jnp.asarray(rng.standard_normal(y_shape), dtype)
    outs = {name: jax.block_until_ready(f(x, params, dy)) for name, (f, params) in runs.items()}
    (first, want), *others = outs.items()
    tol = 1e-2 if dtype == jnp.bfloat16 else 1e-5
    for name, got in others:
        errors = [rel_l2(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want))]
        if max(errors) > tol:
            sys.exit(f"conv_forms.py: error: {case}: {name} differs from {first} (relative L2 {max(errors):.2g})")
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (f, params) in runs.items():
            t = time.perf_counter()
            jax.block_until_ready(f(x, params, dy))
            times[name].append(time.perf_counter() - t)
    return {name: 1e3 * float(np.median(v)) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--scale", type=int, default=1, help="divide the layers' sides by this (tests)")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    cases = args.cases.split(",")
    if any(c not in CASES for c in cases) or args.batch < 1 or args.scale < 1 or args.rounds < 1:
        sys.exit(f"conv_forms.py: error: --cases must be from {','.join(CASES)}, --batch, --scale and --rounds "
                 "positive")
    dtype = jnp.dtype(args.dtype)
    print(f"batch {args.batch}, {args.dtype}, sides / {args.scale}, {args.rounds} interleaved rounds; jax "
          f"{jax.__version__} on {jax.devices()[0].device_kind}")
    print("| case | form | ms, output and gradients | against the first form |")
    print("|---|---|---|---|")
    for case in cases:
        ms = time_case(case, dtype, args.batch, args.scale, args.rounds)
        base = next(iter(ms.values()))
        for name, t in ms.items():
            print(f"| {case} | {name} | {t:.3f} | {t / base:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
