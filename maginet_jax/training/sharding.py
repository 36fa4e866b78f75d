"""Device mesh from the config, and the shardings the train step uses."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from maginet_jax.errors import UserError

DATA_AXIS = "data"


def make_mesh(mesh_config, devices=None) -> Mesh:
    """A mesh of `mesh_config.shape` over `mesh_config.axes`; one -1 entry takes the remaining devices.

    Axes are `Auto` (jax.make_mesh defaults to `Explicit`, under which NNX convs need output shardings).
    """
    devices = list(jax.devices() if devices is None else devices)
    shape, axes = list(mesh_config.shape), tuple(mesh_config.axes)
    if len(shape) != len(axes):
        raise UserError(f"mesh.shape {tuple(shape)} and mesh.axes {axes} differ in length")
    if DATA_AXIS not in axes:
        raise UserError(f"mesh.axes {axes} must include {DATA_AXIS!r} (the batch is split over it)")
    if shape.count(-1) > 1:
        raise UserError(f"mesh.shape {tuple(shape)} may hold at most one -1")
    if -1 in shape:
        rest = math.prod(s for s in shape if s != -1)
        if rest <= 0 or len(devices) % rest:
            raise UserError(f"mesh.shape {tuple(shape)} does not divide the {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // rest
    if math.prod(shape) != len(devices):
        raise UserError(f"mesh.shape {tuple(shape)} needs {math.prod(shape)} devices; {len(devices)} available")
    return Mesh(np.asarray(devices).reshape(shape), axes, axis_types=(AxisType.Auto,) * len(axes))


def data_size(mesh: Mesh) -> int:
    """Number of batch shards."""
    return mesh.shape[DATA_AXIS]


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state, metrics)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def to_global(local_batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's numpy batch → global jax.Arrays sharded over the data axis (multi-host safe)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
