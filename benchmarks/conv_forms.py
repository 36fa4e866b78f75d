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
  resolution): padding 2 in the convolution (`padded`, what the model did) against an explicit pad and a VALID
  convolution (`valid`, what `NLayerDiscriminator` does now); on the H100 the padded layer's kernel gradient ran as
  a forward convolution over a 129×129 window.
- disc_s2: the discriminator's second layer, 4×4 stride 2, 64 → 128 channels at 513², the same two forms.
Before the timing, each pair's outputs and gradients are compared (relative L2 under 1e-2 in bfloat16, 1e-5 in
float32); a mismatch stops the run with one error line.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.layer_timing import forward_backward, median_ms, positive_int, relative_l2, tolerance  # noqa: E402
from maginet_jax.models.layers import Conv, ConvTranspose, SubpixelConvTranspose  # noqa: E402
from maginet_jax.models.pix2pixhd import zero_pad  # noqa: E402

INIT = nnx.initializers.normal(0.02)
CASES = ("up", "up_global", "disc", "disc_s2")
MAX_SCALE = 64  # the discriminator's 129² input at 2², the smallest side the forms take


class PaddedConv(Conv):
    """A 4×4 convolution with its padding of 2 made an explicit pad and the convolution VALID, as the
    discriminator applies it."""

    def __call__(self, x):
        return super().__call__(zero_pad(x, 2))


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


def as_function(layer: nnx.Module):
    """(x, params ↦ layer(x) with those parameters, the layer's parameters)."""
    graphdef, params = nnx.split(layer)
    return (lambda x, p: nnx.merge(graphdef, p)(x)), params


def time_case(case: str, dtype, batch: int, scale: int, rounds: int) -> dict[str, float]:
    """{form: median ms of output and gradients} for one case; exits with one line if the forms disagree."""
    side, cin, layers = forms(case, dtype)
    side //= scale
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, side, side, cin)), dtype)
    functions = {name: as_function(layer) for name, layer in layers.items()}
    forward, params = next(iter(functions.values()))
    dy = jnp.asarray(rng.standard_normal(jax.eval_shape(forward, x, params).shape), dtype)
    runs = {name: (forward_backward(g), p) for name, (g, p) in functions.items()}
    outs = {name: jax.block_until_ready(run(x, params, dy)) for name, (run, params) in runs.items()}
    (first, want), *others = outs.items()
    for name, got in others:
        errors = [relative_l2(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want))]
        if max(errors) > tolerance(dtype):
            sys.exit(f"conv_forms.py: error: {case}: {name} differs from {first} (relative L2 {max(errors):.2g})")
    return median_ms({name: lambda run=run, params=params: jax.block_until_ready(run(x, params, dy))
                      for name, (run, params) in runs.items()}, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--scale", type=positive_int, default=1,
                        help=f"divide the layers' sides by this, at most {MAX_SCALE} (tests)")
    parser.add_argument("--rounds", type=positive_int, default=10)
    args = parser.parse_args()
    cases = args.cases.split(",")
    if any(c not in CASES for c in cases):
        sys.exit(f"conv_forms.py: error: --cases must be from {','.join(CASES)}")
    if args.scale > MAX_SCALE:  # the printed sides / scale would not be the sides timed
        sys.exit(f"conv_forms.py: error: --scale={args.scale}: at most {MAX_SCALE}")
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
