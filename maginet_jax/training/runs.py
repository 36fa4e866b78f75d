"""Finished runs as inputs: a workdir's config and its latest parameters, for later stages and prediction.

A run's workdir holds `config.json` (written when training starts) and `checkpoints/<step>/state`. Only the
parameter subtree is read (orbax partial restore), so the optimizer state never reaches memory.
`tools.import_pix2pixhd` writes the same two things (`params/` instead of checkpoints) for imported weights.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from maginet_jax.errors import UserError
from maginet_jax.training import sharding
from maginet_jax.training.state import abstract_model


def read_config(workdir: str, *, expect_stage: str | tuple[str, ...], what: str) -> ml_collections.ConfigDict:
    """The config a run was trained with; UserError unless `workdir` holds a run of `expect_stage`.

    `what` names the setting that gave `workdir` (e.g. "init.albedo_workdir"), for the error message.
    """
    expected = (expect_stage,) if isinstance(expect_stage, str) else tuple(expect_stage)
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{what}={workdir!r} is not a maginet_jax run directory: it has no config.json")
    try:
        with open(path) as f:
            config = ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as e:
        raise UserError(f"{what}={workdir!r}: cannot read config.json ({e})") from None
    stage = config.get("stage")
    if stage not in expected:
        raise UserError(f"{what}={workdir!r} holds a {stage!r} run, not {' or '.join(map(repr, expected))}")
    return config


def params_dir(workdir: str, *, what: str) -> str:
    """The parameter tree to read: `<workdir>/params` (imported weights) or the latest checkpoint's state."""
    imported = os.path.join(workdir, "params")
    if os.path.isdir(imported):
        return imported
    root = os.path.join(workdir, "checkpoints")
    step = ocp.CheckpointManager(os.path.abspath(root)).latest_step() if os.path.isdir(root) else None
    if step is None:
        raise UserError(f"{what}={workdir!r} has no finished checkpoint yet")
    return os.path.join(os.path.abspath(root), str(step), "state")


def abstract_params(build: Callable[[nnx.Rngs], nnx.Module], mesh: Mesh) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, parameter shapes) of the module `build` makes, without allocating it; leaves are replicated."""
    graphdef, params = abstract_model(build)
    replicated = sharding.replicated(mesh)
    return graphdef, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), params)


def restore_params(directory: str, like: nnx.State, *, key: str = "params", what: str) -> nnx.State:
    """The subtree `key` of the saved state in `directory`, shaped, typed and sharded like `like` (arrays or
    ShapeDtypeStructs)."""
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), like)
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
                item={key: like}, restore_args={key: restore_args}, partial_restore=True))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what}: the checkpoint in {directory!r} does not fit the model its config.json "
                        f"describes: {first}") from None
    got = jax.tree.map(lambda x: tuple(x.shape), restored[key])
    want = jax.tree.map(lambda x: tuple(x.shape), like)
    if got != want:
        raise UserError(f"{what}: the checkpoint in {directory!r} does not fit the model its config.json describes")
    return restored[key]


def load_model_params(workdir: str, *, stage: str | tuple[str, ...], what: str, mesh: Mesh,
                      build: Callable[[ml_collections.ConfigDict, nnx.Rngs], nnx.Module], key: str = "params"):
    """(config, graphdef, params) of a finished run: `build(config, rngs)` rebuilds its model."""
    config = read_config(workdir, expect_stage=stage, what=what)
    graphdef, like = abstract_params(lambda rngs: build(config, rngs), mesh)
    return config, graphdef, restore_params(params_dir(workdir, what=what), like, key=key, what=what)
