"""Reading PyTorch state-dict files and tensors into numpy, for importing pretrained or foreign weights."""

from __future__ import annotations

import os

import numpy as np

from maginet_jax.errors import UserError


def to_numpy(value) -> np.ndarray:
    """A torch tensor (any float dtype, e.g. bfloat16) or array-like → float32 numpy."""
    if hasattr(value, "detach"):
        return value.detach().cpu().float().numpy()
    return np.asarray(value, np.float32)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """{key: float32 array} from a PyTorch state-dict file (a bare dict or {"state_dict": dict}).

    Loaded with `weights_only=True` (tensors and containers only). Anything else, or a NaN or infinite weight (a
    diverged run's, which training would only spread), is one UserError.
    """
    try:
        import torch  # optional (the test extra): only reading PyTorch files needs it
    except ModuleNotFoundError:
        raise UserError(f"reading the PyTorch file {path!r} needs torch (pip install torch==2.13.0)") from None
    if not os.path.isfile(path):  # (torch.load's error would call it "not a state-dict file")
        raise UserError(f"{path!r} {'is a directory' if os.path.isdir(path) else 'does not exist'}: give a PyTorch "
                        "state-dict file")
    try:
        # torch raises many types for a file that is not a state dict (IndexError for an empty file,
        # KeyError for text), so all of them mean the same thing here.
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001
        raise UserError(f"{path!r} is not a PyTorch state-dict file (torch.load with weights_only=True "
                        f"could not read it)") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise UserError(f"{path!r} holds an object of type {type(sd).__name__}, not a state dict")
    complex_key = next((k for k, v in sd.items() if hasattr(v, "is_complex") and v.is_complex()), None)
    if complex_key is not None:  # to_numpy would drop the imaginary parts, torch only warning of it
        raise UserError(f"{path!r}: {complex_key} holds complex numbers, which no network here has")
    weights = {k: to_numpy(v) for k, v in sd.items() if hasattr(v, "detach")}
    bad = next((key for key, value in weights.items() if not np.isfinite(value).all()), None)
    if bad is not None:
        raise UserError(f"{path!r}: {bad} holds NaN or infinite values")
    return weights
