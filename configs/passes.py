"""Stage 3, the Pix2PixHD pass translator: refined albedo → ambient occlusion, normal, specular, translucency
and raw diffuse, with a multi-scale discriminator, feature matching, VGG and masked MSE.

The condition is the refined albedo from finished stage-1 and stage-2 runs (frozen), or the ground-truth
albedo when none are given. `init.pix2pixhd` starts G (and D) from `python -m maginet_jax.tools.import_pix2pixhd`
output or from an earlier passes run.

  default (1024², global+local generator, as the paper):
    python -m maginet_jax.train --config=configs/passes.py --workdir=runs/passes \
        --config.init.albedo_workdir=runs/albedo --config.init.refine_workdir=runs/refine

  demo (256², global generator; 2 CPU cores):
    python -m maginet_jax.train --config=configs/passes.py:demo --workdir=runs/passes_demo \
        --config.init.albedo_workdir=runs/albedo_demo --config.init.refine_workdir=runs/refine_demo

  smoke (tiny, for tests):
    python -m maginet_jax.train --config=configs/passes.py:smoke --workdir=/tmp/passes_smoke
"""

import ml_collections

from configs import common


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Returns the stage-3 config; `arg` picks a variant from common.VARIANTS."""
    common.check_variant(arg, "passes")
    c = common.base_config("passes", resolution=1024)
    c.batch_size = 8
    c.num_train_steps = 100_000

    c.init = ml_collections.ConfigDict()
    c.init.albedo_workdir = ""  # a finished stage-1 run
    c.init.refine_workdir = ""  # a finished stage-2 run; with neither: ground-truth albedo
    # Their checkpoints to use; 0: the latest when this run starts, recorded in its config.json and kept on resume.
    c.init.albedo_step = c.init.refine_step = 0
    c.init.pix2pixhd = ""  # start G (and D) from an import_pix2pixhd directory or a passes run

    # Predicted passes, in output-channel order, and the channels of each (1: grey, 3: RGB).
    c.passes = ("ambient_occlusion", "normal", "specular", "translucency", "raw_diffuse")
    c.pass_channels = ml_collections.ConfigDict(
        dict(ambient_occlusion=1, normal=3, specular=1, translucency=1, raw_diffuse=3))

    # pix2pixHD's options, same names (define_G / define_D).
    c.model = ml_collections.ConfigDict()
    c.model.netG = "local"  # global | local (global generator + local enhancer)
    c.model.ngf = 32
    c.model.n_downsample_global = 4
    c.model.n_blocks_global = 9
    c.model.n_local_enhancers = 1
    c.model.n_blocks_local = 3
    c.model.ndf = 64
    c.model.n_layers_D = 3
    c.model.num_D = 2
    c.model.getIntermFeat = True  # needed by feature matching
    # Generator upsampling: transpose (pix2pixHD's stride-2 transposed convs, what imported checkpoints hold) |
    # resize (×2 resize_method, then a 3×3 conv: no checkerboard).
    c.model.upsample = "transpose"
    c.model.resize_method = "nearest"  # nearest | bilinear
    # Compute dtype of the convs: float32 | bfloat16 (parameters, optimizer state, norms and losses stay
    # float32).
    c.model.dtype = "float32"
    # Activation memory: none | blocks (each block keeps its conv outputs for the backward pass and
    # recomputes the rest) | full (each block keeps only its input and recomputes everything).
    c.model.remat = "none"

    c.gan = ml_collections.ConfigDict()
    c.gan.mode = "lsgan"  # lsgan | hinge

    c.losses = ml_collections.ConfigDict()
    c.losses.fm = 10.0  # feature matching (pix2pixHD's lambda_feat and layer weighting)
    c.losses.vgg = 10.0  # VGG perceptual per pass (pix2pixHD's weight)
    c.losses.mse = 10.0  # masked MSE per pass
    # Each pass's share of the masked-MSE term: sum(weight · MSE of the pass) / number of passes.
    c.pass_mse_weights = ml_collections.ConfigDict(
        dict(ambient_occlusion=1.0, normal=1.0, specular=1.0, translucency=1.0, raw_diffuse=1.0))

    # pix2pixHD: Adam(2e-4, β1 0.5), constant, then linear decay to 0 over the last decay_steps steps.
    c.optim.learning_rate = 2e-4
    c.optim.b1 = 0.5
    c.optim.warmup_steps = 0
    c.optim.schedule = "constant_then_linear"
    c.optim.decay_steps = 50_000
    c.optim.end_learning_rate_factor = 0.0
    c.optim.grad_clip_norm = 0.0
    c.optim.niter_fix_global = 0  # netG=local: train only the local enhancer for this many steps first

    if arg == "demo":
        common.apply_demo(c, resolution=256, steps=300, batch_size=4)
        c.eval.batch_size = 8
        c.model.netG = "global"
        c.model.ngf = 8  # ngf=ndf=16 runs at 0.24 steps/s on 2 CPU cores; 8 at 0.8
        c.model.n_downsample_global = 3
        c.model.n_blocks_global = 3
        c.model.ndf = 8
        c.losses.vgg = 0.0  # five passes through VGG16 would dominate a CPU step (configs/albedo.py)
        # AO and specular are nearly flat maps with fine, unpredictable detail: feature matching at pix2pixHD's 10
        # makes G paint detail of the right statistics in the wrong places, about twice the error of a constant
        # (AO 11.9 ×1e-3 against the oracle constant's 4.36 at step 300). Feature matching at 2 and MSE weighted
        # 4× on those two passes: 3.92 and 5.49 (constants 4.36 and 6.49), the other passes better too.
        # upsample=resize with these settings left AO at 6.10 after 300 steps (README, "The three-stage demo").
        c.losses.fm = 2.0
        c.pass_mse_weights.ambient_occlusion = 4.0
        c.pass_mse_weights.specular = 4.0
        c.optim.learning_rate = 1e-3
        c.optim.decay_steps = 150
    elif arg == "smoke":
        common.apply_smoke(c, resolution=40, crop_size=32)
        c.model.netG = "global"
        c.model.ngf = 4
        c.model.n_downsample_global = 2
        c.model.n_blocks_global = 1
        c.model.n_blocks_local = 1
        c.model.ndf = 4
        c.model.n_layers_D = 2
        c.losses.vgg = 0.0
        c.optim.decay_steps = 6
    return c
