"""The three MAGINet training stages, each a class the generic loop (`training.loop`) drives.

A stage provides `initial_state` (sharded), `state_sharding`, jitted `train_step(state, batch)` and
`eval_step(state, batch) -> (metrics, images)`, `data_passes` (what the loader reads), `columns` and
`image_groups` (the sample grids), `overview(state)` and `eval_message(scalars)`.
"""

from __future__ import annotations

import importlib

from maginet_jax.errors import check_choices

# stage → (module, stage class, config check)
_STAGES = {"albedo": ("supervised", "AlbedoStage", "validate_albedo"),
           "refine": ("supervised", "RefineStage", "validate_refine"),
           "passes": ("passes", "PassesStage", "validate_passes")}
STAGES = tuple(_STAGES)


def _lookup(config, which: int):
    check_choices({"stage": (config.stage, STAGES)})
    module, *names = _STAGES[config.stage]
    return getattr(importlib.import_module(f"maginet_jax.stages.{module}"), names[which])


def make_stage(config, mesh):
    """The stage `config.stage` names, built (networks initialised, steps jitted) on `mesh`."""
    return _lookup(config, 0)(config, mesh)


def validate(config) -> None:
    """The stage's own config checks (models, inputs from earlier stages); UserError on the first problem."""
    _lookup(config, 1)(config)
