"""The device mesh from `config.mesh`, and the shardings of the train state and the batches."""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from maginet_jax.errors import UserError

DATA_AXIS = "data"
# The axes something is sharded over. Another axis would only split the devices and repeat the work on each
# part, so it is refused until a sharding strategy uses it.
AXES = (DATA_AXIS,)


def make_mesh(axes: Sequence[tuple[str, int]], devices=None) -> Mesh:
    """A mesh of `axes`, (name, size) pairs as in `config.mesh = (("data", -1),)`; size -1 takes the devices
    left over. Axes are `Auto` (jax.make_mesh defaults to `Explicit`, under which NNX convs need output
    shardings)."""
    devices = list(jax.devices() if devices is None else devices)
    try:
        names, sizes = zip(*[(str(name), int(size)) for name, size in axes])
    except (TypeError, ValueError):
        raise UserError(f"mesh {axes!r} must be (axis, size) pairs, e.g. (('data', -1),)") from None
    unknown = [n for n in names if n not in AXES]
    if unknown:
        raise UserError(f"mesh axis {unknown[0]!r} is not used by maginet_jax; the axes it shards over: {AXES}")
    if len(set(names)) != len(names) or DATA_AXIS not in names:
        raise UserError(f"mesh {axes!r} must name {DATA_AXIS!r} once (the batch is split over it)")
    sizes = list(sizes)
    if sizes.count(-1) > 1 or any(s < 1 and s != -1 for s in sizes):
        raise UserError(f"mesh sizes {tuple(sizes)} must be positive, with at most one -1")
    if -1 in sizes:
        rest = math.prod(s for s in sizes if s != -1)
        if len(devices) % rest:
            raise UserError(f"mesh {axes!r} does not divide the {len(devices)} devices")
        sizes[sizes.index(-1)] = len(devices) // rest
    if math.prod(sizes) != len(devices):
        raise UserError(f"mesh {axes!r} needs {math.prod(sizes)} devices; {len(devices)} available")
    return Mesh(np.asarray(devices).reshape(sizes), names, axis_types=(AxisType.Auto,) * len(names))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state, networks that are not trained)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def to_global(local_batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's numpy batch → global jax.Arrays sharded over the data axis (multi-host safe)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
