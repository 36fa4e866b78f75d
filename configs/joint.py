"""End-to-end fine-tuning: AlbedoNet, RefinementNet and the pix2pixHD generator (with its discriminator) trained
together from finished runs of the three stages, the passes losses reaching both albedo networks.

The top-level sections are the passes stage's (configs/passes.py: `model` is G and D, `losses` G's terms,
`optim.learning_rate` G's and D's rate); `albedo` and `refine` hold each albedo network's architecture, loss
weights (on the stage-1 albedo at half size, and on the refined albedo) and learning rate (0 holds a network
fixed). Architectures must equal those of the runs in `init` (a difference is one error line naming the key).

  default (1024², the paper's networks):
    python -m maginet_jax.train --config=configs/joint.py --workdir=runs/joint \
        --config.init.albedo_workdir=runs/albedo --config.init.refine_workdir=runs/refine \
        --config.init.passes_workdir=runs/passes

  demo (256², the three demo runs; 2 CPU cores, minutes):
    python -m maginet_jax.train --config=configs/joint.py:demo --workdir=runs/joint_demo \
        --config.init.albedo_workdir=runs/albedo_demo --config.init.refine_workdir=runs/refine_demo \
        --config.init.passes_workdir=runs/passes_demo

  smoke (tiny, for tests; from the :smoke runs of the three stages):
    python -m maginet_jax.train --config=configs/joint.py:smoke --workdir=/tmp/joint_smoke \
        --config.init.albedo_workdir=... --config.init.refine_workdir=... --config.init.passes_workdir=...
"""

import ml_collections

from configs import albedo, common, passes, refine


def _network(stage_config, learning_rate: float) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(model=stage_config.model, losses=stage_config.losses,
                                          learning_rate=learning_rate))


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Returns the joint fine-tuning config; `arg` picks a variant from common.VARIANTS (each network as in the
    same variant of its own stage's config)."""
    common.check_variant(arg, "joint")
    c = passes.get_config(arg)
    c.stage = "joint"
    c.init = ml_collections.ConfigDict(dict(albedo_workdir="", refine_workdir="", passes_workdir=""))  # all required

    # Fine-tuning: every network starts trained, so the rates are a fraction of each stage's own.
    c.albedo = _network(albedo.get_config(arg), learning_rate=2e-5)
    c.refine = _network(refine.get_config(arg), learning_rate=2e-5)
    c.optim.learning_rate = 5e-5  # G and D
    c.optim.schedule = "constant_then_linear"  # (as the passes stage)
    if arg == "":
        c.num_train_steps = 20_000
        c.optim.decay_steps = 10_000
    elif arg == "demo":
        c.num_train_steps = 150
        c.optim.learning_rate = 2e-4
        c.optim.decay_steps = 75
        c.albedo.learning_rate = 2e-4
        c.refine.learning_rate = 2e-4
    elif arg == "smoke":
        c.optim.learning_rate = c.albedo.learning_rate = c.refine.learning_rate = 1e-3
    return c
