r"""Imports NVIDIA pix2pixHD PyTorch weights as a starting point for the passes stage.

    python -m maginet_jax.tools.import_pix2pixhd --generator latest_net_G.pth [--discriminator latest_net_D.pth] \
        --netG global|local [--ngf 64 --n_downsample_global 4 ... (pix2pixHD's option names)] --out DIR

then train from it:

    python -m maginet_jax.train --config=configs/passes.py --workdir=runs/passes --config.init.pix2pixhd=DIR \
        --config.model.netG=... (the same architecture options)

The options mean what they mean in pix2pixHD (`--input_nc` is the condition's channels, 3 for the refined
albedo; `--output_nc` the passes' channels together, 9 for the default five passes). DIR receives
`config.json` (the architecture) and `params/` (an orbax tree {"params": {"generator": ...}}, with
"discriminator" too when one is given, as in a passes run's checkpoint). A state dict that does not fit the
architecture is one error line listing the missing, unexpected and mismatched keys, and one with a NaN or infinite
weight is refused. The options and DIR are checked before any file is read: an existing DIR is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from maginet_jax import cli
from maginet_jax.errors import UserError, check_number
from maginet_jax.models import pix2pixhd
from maginet_jax.stages.passes import IMPORT_STAGE, check_counts
from maginet_jax.torch_interop import read_state_dict


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.ArgumentParser("maginet_jax.tools.import_pix2pixhd",
                           description="Import pix2pixHD PyTorch weights for configs/passes.py.")
    p.add_argument("--generator", required=True, help="the generator's state-dict file (latest_net_G.pth)")
    p.add_argument("--discriminator", default="", help="the discriminator's state-dict file (latest_net_D.pth)")
    p.add_argument("--netG", required=True, choices=("global", "local"))
    p.add_argument("--out", required=True, help="output directory (must not exist yet, or be empty)")
    p.add_argument("--input_nc", type=int, default=3)
    p.add_argument("--output_nc", type=int, default=9)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--n_downsample_global", type=int, default=4)
    p.add_argument("--n_blocks_global", type=int, default=9)
    p.add_argument("--n_local_enhancers", type=int, default=1)
    p.add_argument("--n_blocks_local", type=int, default=3)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--n_layers_D", type=int, default=3)
    p.add_argument("--num_D", type=int, default=2)
    p.add_argument("--no_ganFeat_loss", action="store_true",
                   help="the discriminator was built without intermediate features (getIntermFeat=False)")
    return p.parse_args(argv)


def check_out(out: str) -> None:
    """UserError unless `out` can become the import: a new or empty directory, in one we may write to.

    Proved by making and removing a temporary directory where `out`'s first missing part would go: os.access
    says yes to root for anything, /proc included."""
    if not out.strip():  # os.path.abspath("") is the current directory
        raise UserError("--out is empty: give a directory")
    try:
        if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
            raise UserError(f"--out {out!r} already exists and is not an empty directory")
        parent = os.path.abspath(out)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        os.rmdir(tempfile.mkdtemp(prefix=".write_test_", dir=parent))
    except OSError as e:
        raise UserError(f"cannot write to --out {out!r}: {e.strerror or e}") from None


def import_weights(args: argparse.Namespace) -> str:
    """Checks the options, reads and checks the weights, writes them; returns the output directory. UserError on
    bad input, before anything is written."""
    model = ml_collections.ConfigDict(dict(
        netG=args.netG, ngf=args.ngf, n_downsample_global=args.n_downsample_global,
        n_blocks_global=args.n_blocks_global, n_local_enhancers=args.n_local_enhancers,
        n_blocks_local=args.n_blocks_local, ndf=args.ndf, n_layers_D=args.n_layers_D, num_D=args.num_D,
        getIntermFeat=not args.no_ganFeat_loss, dtype="float32"))
    # The bounds a passes run puts on its config.model, so that one can start from the import.
    for key in ("input_nc", "output_nc"):
        check_number(f"--{key}", getattr(args, key), integer=True, at_least=1)
    check_counts(model, "--")
    check_out(args.out)
    # Built abstractly: every weight comes from the file (a strict import), so none is initialised for nothing.
    generator = nnx.eval_shape(lambda: pix2pixhd.build_generator(model, args.input_nc, args.output_nc,
                                                                 rngs=nnx.Rngs(0)))
    pix2pixhd.import_torch_state_dict(generator, read_state_dict(args.generator))
    params = {"generator": nnx.split(generator, nnx.Param)[1]}
    if args.discriminator:
        discriminator = nnx.eval_shape(lambda: pix2pixhd.build_discriminator(model, args.input_nc + args.output_nc,
                                                                             rngs=nnx.Rngs(0)))
        pix2pixhd.import_torch_state_dict(discriminator, read_state_dict(args.discriminator))
        params["discriminator"] = nnx.split(discriminator, nnx.Param)[1]
    os.makedirs(args.out, exist_ok=True)
    with ocp.PyTreeCheckpointer() as checkpointer:  # writes to a temporary name, renamed when complete
        checkpointer.save(os.path.abspath(os.path.join(args.out, "params")), args=ocp.args.PyTreeSave({"params": params}))
    info = {"stage": IMPORT_STAGE, "model": model.to_dict(), "input_nc": args.input_nc, "output_nc": args.output_nc,
            "has_discriminator": bool(args.discriminator),
            "sources": {"generator": os.path.abspath(args.generator),
                        "discriminator": os.path.abspath(args.discriminator) if args.discriminator else None}}
    with open(os.path.join(args.out, "config.json"), "w") as f:  # last: a directory without it is no import
        json.dump(info, f, indent=2)
    return args.out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        out = import_weights(args)
    except UserError as e:
        sys.exit(f"maginet_jax.tools.import_pix2pixhd: error: {e}")
    print(f"wrote {out}: start a passes run from it with --config.init.pix2pixhd={out}")


if __name__ == "__main__":
    main()
