"""One convolution at a time, JAX (XLA) against PyTorch (channels_last), forward and forward + backward.

    python benchmarks/conv_kernels.py [--batch 8] [--shapes 128:16:16:3,64:32:32:3,...] [--rounds 20]
        [--ynn reduce --ynn xla_default ...]

Each shape is SIZE:CIN:COUT:KERNEL, a stride-1 "same" convolution without bias on a (batch, SIZE, SIZE, CIN)
float32 input; the defaults are the 3×3 and 1×1 convolutions of the albedo demo (configs/albedo.py:demo, 128²,
widths 16-32-64-64). JAX runs each as one jitted program (`lax.conv_general_dilated`, NHWC/HWIO, as nnx.Conv
does), compiled once per --ynn value (`config.xla_cpu_ynn_fusions`: which work XLA:CPU hands to YNNPACK; the
project's default, then XLA's own choice, unless given); forward + backward is the output and the gradients with
respect to input and kernel, which is what a train step asks of the convolution; PyTorch computes the same with
`torch.autograd.grad` on channels_last tensors. Rounds interleave all the timings so the machine's noise hits all
alike; medians are printed, with the GFLOP/s each reaches (2·B·H·W·K²·Cin·Cout per pass: 1 forward, 3 forward +
backward).

It isolates what the whole-step comparison (`python -m benchmarks.compare`) cannot: how fast each framework's
convolution kernels are on this device, apart from everything around them. XLA flags (`XLA_FLAGS=...`) apply.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.layer_timing import forward_backward, median_ms, positive_int  # noqa: E402
from maginet_jax.errors import UserError  # noqa: E402
from maginet_jax.training import compiler  # noqa: E402

DEMO_SHAPES = "128:3:16:3,128:16:16:3,128:32:16:3,64:32:32:3,32:64:64:3,16:64:64:3,128:48:3:1"


def jax_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def torch_train(x, w, dy):
    y = torch.nn.functional.conv2d(x, w, padding=w.shape[-1] // 2)
    return y, *torch.autograd.grad(y, (x, w), dy)


def timings(batch: int, size: int, cin: int, cout: int, kernel: int, rounds: int,
            settings: list[str]) -> dict[str, dict[str, float]]:
    """{implementation: {"fwd": ms, "train": ms}}: median milliseconds for one convolution shape, JAX under each
    of `settings` (values of config.xla_cpu_ynn_fusions) and PyTorch."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, cin), np.float32)
    w = (rng.standard_normal((kernel, kernel, cin, cout)) / np.sqrt(kernel * kernel * cin)).astype(np.float32)
    dy = rng.standard_normal((batch, size, size, cout), np.float32)
    xj, wj, dyj = map(jnp.asarray, (x, w, dy))
    calls = {}
    for s in settings:
        options = compiler.ynn_options(s)
        fwd, train = jax.jit(jax_conv, compiler_options=options), forward_backward(jax_conv, options)
        calls[f"JAX, {s}", "fwd"] = lambda fwd=fwd: jax.block_until_ready(fwd(xj, wj))
        calls[f"JAX, {s}", "train"] = lambda train=train: jax.block_until_ready(train(xj, wj, dyj))
    last = dict(memory_format=torch.channels_last)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(**last).requires_grad_()
    wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).to(**last).requires_grad_()
    dyt = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()).to(**last)
    calls["PyTorch", "fwd"] = lambda: torch.nn.functional.conv2d(xt.detach(), wt.detach(), padding=kernel // 2)
    calls["PyTorch", "train"] = lambda: torch_train(xt, wt, dyt)
    for call in calls.values():  # compile, allocate
        call(), call()
    out = {}
    for (implementation, mode), ms in median_ms(calls, rounds).items():
        out.setdefault(implementation, {})[mode] = ms
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--shapes", default=DEMO_SHAPES, help="SIZE:CIN:COUT:KERNEL, comma-separated")
    parser.add_argument("--rounds", type=positive_int, default=20)
    parser.add_argument("--ynn", action="append", help="a config.xla_cpu_ynn_fusions value to compile JAX with "
                        f"(repeatable; default: {compiler.DEFAULT} and {compiler.XLA_DEFAULT})")
    args = parser.parse_args()
    settings = args.ynn or [compiler.DEFAULT, compiler.XLA_DEFAULT]
    try:
        shapes = [tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")]
        if any(len(s) != 4 or min(s) < 1 or s[3] % 2 == 0 for s in shapes):
            raise ValueError
    except ValueError:
        sys.exit(f"conv_kernels.py: error: --shapes={args.shapes!r}: each must be SIZE:CIN:COUT:KERNEL, positive "
                 "integers with an odd kernel")
    try:
        for s in settings:
            compiler.ynn_options(s)
    except UserError as e:
        sys.exit(f"conv_kernels.py: error: {e}")
    print(f"batch {args.batch}, float32, {args.rounds} interleaved rounds; jax {jax.__version__} on "
          f"{jax.devices()[0].device_kind}, torch {torch.__version__} with {torch.get_num_threads()} threads "
          f"(channels_last); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print("| conv | GFLOP fwd | implementation | fwd ms | fwd+bwd ms | GFLOP/s fwd, fwd+bwd |")
    print("|---|---|---|---|---|---|")
    for size, cin, cout, kernel in shapes:
        gflop = 2 * args.batch * size * size * kernel * kernel * cin * cout / 1e9
        for implementation, t in timings(args.batch, size, cin, cout, kernel, args.rounds, settings).items():
            print(f"| {size}² {cin}→{cout} {kernel}×{kernel} | {gflop:.4g} | {implementation} | {t['fwd']:.2f} | "
                  f"{t['train']:.2f} | {gflop / t['fwd'] * 1e3:.0f}, {3 * gflop / t['train'] * 1e3:.0f} |")


if __name__ == "__main__":
    main()
