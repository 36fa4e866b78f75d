"""The three MAGINet training stages, each a class the generic loop (`training.loop`) drives.

A stage provides `initial_state` (sharded), `state_sharding`, jitted `train_step(state, batch)` and
`eval_step(state, batch) -> (metrics, images)`, `data_passes` (what the loader reads), `columns` and
`image_groups` (the sample grids), `overview(state)` and `eval_message(scalars)`.
"""

from __future__ import annotations

from maginet_jax.errors import UserError

STAGES = ("albedo", "refine", "passes")


def make_stage(config, mesh):
    """The stage `config.stage` names, built (networks initialised, steps jitted) on `mesh`."""
    if config.stage == "albedo":
        from maginet_jax.stages.supervised import AlbedoStage
        return AlbedoStage(config, mesh)
    if config.stage == "refine":
        from maginet_jax.stages.supervised import RefineStage
        return RefineStage(config, mesh)
    if config.stage == "passes":
        from maginet_jax.stages.passes import PassesStage
        return PassesStage(config, mesh)
    raise UserError(f"stage={config.stage!r} is not one of {STAGES}")


def validate(config) -> None:
    """The stage's own config checks (models, inputs from earlier stages); UserError on the first problem."""
    from maginet_jax.stages import passes, supervised
    checks = {"albedo": supervised.validate_albedo, "refine": supervised.validate_refine,
              "passes": passes.validate_passes}
    if config.stage not in checks:
        raise UserError(f"stage={config.stage!r} is not one of {STAGES}")
    checks[config.stage](config)
