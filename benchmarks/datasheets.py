"""The GPUs' dense peak FLOP/s and memory bandwidth, from NVIDIA's data sheets: what MFU (`compare`), the memory
floor (`norm_kernels`) and roofline bounds (`roofline`) divide by.

JAX's `device_kind` names a PCIe or NVL card as such ("NVIDIA H100 PCIe", "NVIDIA H100 NVL") and an SXM one by its
memory or not at all ("NVIDIA H100 80GB HBM3", "NVIDIA H200"). The PCIe and NVL parts run at lower clocks and power,
so they are matched first: matched on "H100" alone, an H100 PCIe was held to the SXM part's 989 TFLOP/s, not its
756, and its MFU read 24% low. Sparse figures are halved to dense; float32 runs in TF32.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    words: tuple[str, ...]  # all in a device_kind that is this part
    flops: dict[str, float]  # dense FLOP/s by the compute dtype ("float32": TF32)
    bandwidth: float  # memory bytes/s


def _flops(tf32: float, bf16: float) -> dict[str, float]:
    return {"float32": tf32 * 1e12, "bfloat16": bf16 * 1e12}


SPECS = (  # the most specific first
    Spec("H100 PCIe", ("H100", "PCIe"), _flops(378, 756.5), 2.0e12),
    Spec("H100 NVL", ("H100", "NVL"), _flops(417.5, 835.5), 3.9e12),
    Spec("H200 NVL", ("H200", "NVL"), _flops(417.5, 835.5), 4.8e12),
    Spec("H100 SXM", ("H100",), _flops(494.7, 989.4), 3.35e12),
    Spec("H200 SXM", ("H200",), _flops(494.7, 989.4), 4.8e12),
)


def lookup(device_kind: str) -> Spec | None:
    """The data sheet of the part `device_kind` names (JAX's, or a header line quoting it), or None."""
    return next((s for s in SPECS if all(w in device_kind for w in s.words)), None)


def by_name(name: str) -> Spec:
    """The data sheet called `name` (one of SPECS' names); ValueError for another."""
    spec = next((s for s in SPECS if s.name == name), None)
    if spec is None:
        raise ValueError(f"--device={name!r}: expected one of {[s.name for s in SPECS]}")
    return spec
