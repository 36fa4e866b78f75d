"""The device mesh from `config.mesh`, and how the train state, the batches and the activations lie on it.

Three axes, each a sharding strategy (a mesh that does not name one has it at size 1):
    data     the batch is split, parameters and optimizer state are replicated;
    fsdp     the batch is split too, and parameters and optimizer state are sharded by `config.sharding.rules`;
    spatial  the image height of activations is split (one large image spans several devices).
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from maginet_jax.errors import UserError

DATA_AXIS, FSDP_AXIS, SPATIAL_AXIS = "data", "fsdp", "spatial"
AXES = (DATA_AXIS, FSDP_AXIS, SPATIAL_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # the batch is split over both
STRATEGIES = ("fsdp", "replicate")  # what a `config.sharding.rules` entry may ask for


def make_mesh(axes: Sequence[tuple[str, int]], devices=None) -> Mesh:
    """A mesh of `axes`, (name, size) pairs as in `config.mesh = (("data", -1),)`; size -1 takes the devices
    left over. The mesh always has all of AXES, in that order (those not named at size 1), so shardings can
    name every axis. Axes are `Auto` (jax.make_mesh defaults to `Explicit`, under which NNX convs need output
    shardings)."""
    devices = list(jax.devices() if devices is None else devices)
    try:
        names, sizes = zip(*[(str(name), int(size)) for name, size in axes])
    except (TypeError, ValueError):
        raise UserError(f"mesh {axes!r} must be (axis, size) pairs, e.g. (('data', -1),)") from None
    unknown = [n for n in names if n not in AXES]
    if unknown:
        raise UserError(f"mesh axis {unknown[0]!r} is not used by maginet_jax; the axes it shards over: {AXES}")
    if len(set(names)) != len(names):
        raise UserError(f"mesh {axes!r} names an axis twice")
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
    shape = dict(zip(names, sizes))
    # Spatial innermost, then fsdp: the axes that exchange activations or parameters every layer get the
    # neighbouring devices (those of one host, on a pod).
    grid = np.asarray(devices).reshape([shape.get(a, 1) for a in AXES])
    return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def batch_size_divisor(mesh: Mesh) -> int:
    """Global batches must be multiples of this: the devices the batch is split over."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (networks that are not trained; the state on a data-only mesh)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 4) -> NamedSharding:
    """The leading (batch) axis split over data × fsdp; an image's height (NHWC) also over spatial."""
    return NamedSharding(mesh, P(BATCH_AXES, SPATIAL_AXIS) if ndim == 4 else P(BATCH_AXES))


def to_global(local_batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's numpy batch → global jax.Arrays sharded as `batch_sharding` (multi-host safe: each
    process gives its rows of the global batch, whole images)."""
    out = {}
    for k, v in local_batch.items():
        v = np.asarray(v)
        out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v,
                                                        (v.shape[0] * jax.process_count(), *v.shape[1:]))
    return out


# Fewer image rows per device than this, and an activation is kept whole along the height: XLA's SPMD
# partitioner (jax 0.10.2, CPU) returns wrong gradients for 4×4 stride-2 convs over 2-row slices (a pix2pixHD
# discriminator at 16² over 8 devices: 20% off; from 3 rows on they agree to 1e-5), and such maps are small.
MIN_ROWS_PER_DEVICE = 4


def constrain_activation(x: jax.Array) -> jax.Array:
    """Splits an NHWC activation's height over the 'spatial' axis of the mesh being traced under (and its
    batch over data × fsdp), at a block boundary of a network; GSPMD then exchanges the halos convs need and
    sums norm statistics across devices. Maps under MIN_ROWS_PER_DEVICE rows a device stay whole. Without a
    spatial axis it changes nothing."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or SPATIAL_AXIS not in mesh.axis_names or mesh.shape[SPATIAL_AXIS] == 1:
        return x
    split = -(-x.shape[1] // mesh.shape[SPATIAL_AXIS]) >= MIN_ROWS_PER_DEVICE
    return jax.lax.with_sharding_constraint(x, P(BATCH_AXES, SPATIAL_AXIS if split else None))


def check_rules(rules) -> None:
    """UserError unless `rules` is a sequence of (regex, strategy) pairs with a strategy in STRATEGIES."""
    for rule in rules:
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and rule[1] in STRATEGIES):
            raise UserError(f"sharding.rules entry {rule!r} must be a (regex, strategy) pair, strategy one of "
                            f"{STRATEGIES}")
        try:
            re.compile(rule[0])
        except (re.error, TypeError) as e:
            raise UserError(f"sharding.rules regex {rule[0]!r} does not compile: {e}") from None


def fsdp_spec(shape: Sequence[int], fsdp: int, min_size: int) -> P:
    """Shards an array's largest dimension divisible by `fsdp` (the last of equals: a conv kernel's output
    channels) over the fsdp axis; arrays below `min_size` elements, or with no such dimension, are replicated."""
    if fsdp == 1 or math.prod(shape) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: (-shape[d], -d)):
        if shape[dim] % fsdp == 0:
            return P(*[FSDP_AXIS if d == dim else None for d in range(len(shape))])
    return P()


def state_shardings(abstract_state, mesh: Mesh, rules, min_size: int):
    """A NamedSharding for every leaf of `abstract_state` (a pytree of ShapeDtypeStructs): the first rule whose
    regex matches the leaf's path ("params/model/enc/0/0/conv1/conv/kernel", "opt_state/model/1/0/mu/...") picks
    its strategy, "fsdp" by default (so an Adam moment lies like its parameter)."""

    def one(path, leaf):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        strategy = next((s for pattern, s in rules if re.search(pattern, name)), "fsdp")
        if strategy == "replicate":
            return replicated(mesh)
        return NamedSharding(mesh, fsdp_spec(leaf.shape, mesh.shape[FSDP_AXIS], min_size))

    return jax.tree_util.tree_map_with_path(one, abstract_state)
