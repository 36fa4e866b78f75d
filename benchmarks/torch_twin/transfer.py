"""Weights from the JAX networks into their PyTorch twins, and gradients back into the JAX layout.

AlbedoNet and RefinementNet: a parameter at NNX path `a/b/kernel` is the twin's `a.b.weight` (convs HWIO →
OIHW, linears (in, out) → (out, in)); `scale` is a norm's `weight`. pix2pixHD's networks name their layers as
the original does (`torch_layers()`, the same table the PyTorch checkpoint import reads); a transposed conv's
(kh, kw, out, in) kernel becomes (in, out, kh, kw). Loading is strict: a parameter on one side only is an error.
"""

from __future__ import annotations

import jax
import numpy as np
import torch
from flax import nnx


def _to_torch_layout(name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    if name == "kernel":
        if value.ndim == 4:
            return "weight", value.transpose(3, 2, 0, 1)
        return "weight", value.T
    return ("weight" if name == "scale" else name), value


def jax_named_arrays(module: nnx.Module) -> dict[str, np.ndarray]:
    """{PyTorch state-dict key: array in PyTorch's layout} of every parameter of a JAX network."""
    if hasattr(module, "torch_layers"):  # pix2pixHD
        out = {}
        for prefix, layer in module.torch_layers().items():
            out[f"{prefix}.weight"] = np.asarray(layer.kernel[...]).transpose(3, 2, 0, 1)
            out[f"{prefix}.bias"] = np.asarray(layer.bias[...])
        return out
    flat = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    out = {}
    for path, value in flat:
        keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        name, array = _to_torch_layout(keys[-1], np.asarray(value))
        out[".".join([*keys[:-1], name])] = array
    return out


def load_from_jax(torch_module: torch.nn.Module, jax_module: nnx.Module) -> torch.nn.Module:
    """Copies every parameter of `jax_module` into its twin (strict); returns the twin."""
    state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in jax_named_arrays(jax_module).items()}
    torch_module.load_state_dict(state, strict=True)
    return torch_module


def gradients_in_torch_layout(jax_module: nnx.Module, grads: nnx.State) -> dict[str, np.ndarray]:
    """A gradient (an nnx.State shaped like the module's parameters) under the twin's keys and layouts."""
    like = nnx.clone(jax_module)
    nnx.update(like, grads)
    return jax_named_arrays(like)


def torch_gradients(torch_module: torch.nn.Module) -> dict[str, np.ndarray]:
    """{state-dict key: .grad} of a twin after backward (zeros where a parameter got none)."""
    return {k: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().cpu().float().numpy()
            for k, p in torch_module.named_parameters()}
