"""Stage 2, RefinementNet: the stage-1 albedo upsampled ×2 and refined at full resolution (the paper's 1024²).

Its input albedo comes from a finished stage-1 run (frozen), or, when none is given, from the ground-truth
albedo degraded by area-downsampling ×2 (RefinementNet upsamples it back itself).

  default (1024², stage 1 at 512²):
    python -m maginet_jax.train --config=configs/refine.py --workdir=runs/refine \
        --config.init.albedo_workdir=runs/albedo

  demo (256², stage 1 from the albedo demo at 128²; 2 CPU cores, minutes):
    python -m maginet_jax.train --config=configs/refine.py:demo --workdir=runs/refine_demo \
        --config.init.albedo_workdir=runs/albedo_demo

  smoke (tiny, for tests):
    python -m maginet_jax.train --config=configs/refine.py:smoke --workdir=/tmp/refine_smoke
"""

import ml_collections

from configs import common


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Returns the stage-2 config; `arg` picks a variant from common.VARIANTS."""
    common.check_variant(arg, "refine")
    c = common.base_config("refine", resolution=1024)
    c.batch_size = 8
    c.num_train_steps = 50_000
    c.optim.warmup_steps = 500

    c.init = ml_collections.ConfigDict()
    c.init.albedo_workdir = ""  # a finished stage-1 run; empty: degraded ground-truth albedo
    # Its checkpoint to use; 0: the latest when this run starts, recorded in its config.json and kept on resume.
    c.init.albedo_step = 0
    # Fine-tuning: RefinementNet starts from an earlier refine run's parameters (as configs/albedo.py's).
    c.init.from_workdir = ""
    c.init.from_step = 0  # its checkpoint; 0: the latest when this run starts (recorded in its config.json)

    c.model = ml_collections.ConfigDict()
    c.model.widths = (32, 32)  # the two hidden widths of the three 3×3 convs
    c.model.activation = "relu"
    # Compute dtype of the convs: float32 | bfloat16 (parameters, optimizer state, norms and losses stay
    # float32).
    c.model.dtype = "float32"
    # Activation memory: none | blocks (each block keeps its conv outputs for the backward pass and
    # recomputes the rest) | full (each block keeps only its input and recomputes everything).
    c.model.remat = "none"

    # The stage-1 loss family (no deep supervision: RefinementNet has no side outputs); 0 switches a term off.
    c.losses = ml_collections.ConfigDict()
    c.losses.mse = 1.0
    c.losses.edge = 0.5
    c.losses.vgg = 0.05
    c.losses.lpips = 0.2

    if arg == "demo":
        common.apply_demo(c, resolution=256, steps=200, batch_size=4)
        c.eval.batch_size = 8
        c.losses.vgg = 0.0  # see configs/albedo.py: VGG16 triples a CPU step
        c.optim.learning_rate = 1e-3
        c.optim.warmup_steps = 20
    elif arg == "smoke":
        common.apply_smoke(c, resolution=40, crop_size=32)
        c.model.widths = (8, 8)
        c.losses.vgg = c.losses.lpips = 0.0  # as configs/albedo.py:smoke
        c.optim.learning_rate = 3e-3
        c.optim.warmup_steps = 2
    return c
