"""Stage 1, AlbedoNet: lit face texture → light-normalised diffuse albedo.

Variants (`--config=configs/albedo.py:VARIANT`):

  default (paper scale: 512², widths 64-128-256-512-512, bottleneck at 32²):
    python -m maginet_jax.train --config=configs/albedo.py --workdir=runs/albedo

  demo (128², narrow; trains on 2 CPU cores in under 10 minutes):
    python -m maginet_jax.train --config=configs/albedo.py:demo --workdir=runs/albedo_demo

  smoke (tiny, for tests):
    python -m maginet_jax.train --config=configs/albedo.py:smoke --workdir=/tmp/albedo_smoke

  fine-tuned on your FFHQ-UV-Intrinsics copy, from a run on the synthetic data:
    python -m maginet_jax.train --config=configs/albedo.py --workdir=runs/albedo_ffhq \
        --config.init.from_workdir=runs/albedo --config.data.source=ffhq_uv_intrinsics \
        --config.data.root=/path/to/FFHQ-UV-Intrinsics --config.data.uv_maps_dir=/path/to/FFHQ-UV/uv-maps

Any key can be overridden, e.g. `--config.batch_size=16 --config.model.attention=none`.
Data: the embedded synthetic generator unless `data.source` / `data.root` point elsewhere.
"""

import ml_collections

from configs import common


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Returns the stage-1 config; `arg` picks a variant from common.VARIANTS."""
    common.check_variant(arg, "albedo")
    c = common.base_config("albedo", resolution=512)

    # Fine-tuning: AlbedoNet starts from the parameters of an earlier albedo run of the same architecture (its
    # optimizer state and step start afresh), e.g. one trained on the synthetic data, tuned on FFHQ-UV-Intrinsics.
    c.init = ml_collections.ConfigDict()
    c.init.from_workdir = ""
    c.init.from_step = 0  # its checkpoint; 0: the latest when this run starts (recorded in its config.json)

    c.model = ml_collections.ConfigDict()
    c.model.arch = "maginet"  # maginet (AlbedoNet) | unet (the plain baseline, configs/unet_baseline.py)
    c.model.widths = (64, 128, 256, 512, 512)
    c.model.blocks_per_level = 1
    c.model.bottleneck_blocks = 2
    c.model.decoder_blocks = 1
    c.model.norm = "group"  # group | instance | none
    c.model.activation = "relu"  # relu | leaky_relu | gelu | silu
    c.model.attention = "cbam"  # cbam | channel | spatial | none
    c.model.attention_reduction = 16
    c.model.spatial_kernel = 7
    c.model.fusion = "adaptive"  # adaptive | concat | sum
    # Compute dtype of the convs: float32 | bfloat16 (parameters, optimizer state, norms and losses stay
    # float32).
    c.model.dtype = "float32"
    # Activation memory: none | blocks (each block keeps its conv outputs for the backward pass and
    # recomputes the rest) | full (each block keeps only its input and recomputes everything).
    c.model.remat = "none"

    # Loss weights; 0 switches a term off.
    c.losses = ml_collections.ConfigDict()
    c.losses.mse = 1.0  # masked MSE
    c.losses.edge = 0.5  # L1 between Sobel gradients
    c.losses.side = 0.5  # deep supervision: masked MSE of each side output at its scale
    c.losses.vgg = 0.05  # VGG perceptual (Pix2PixHD layer weights, ImageNet-normalised inputs)
    c.losses.lpips = 0.2  # patch-based LPIPS

    if arg == "demo":
        common.apply_demo(c, resolution=128, steps=400)
        c.model.widths = (16, 32, 64, 64)
        c.model.attention_reduction = 8
        # VGG16 adds ~1.5 s to a ~0.75 s step on a 2-core CPU (benchmarks/perceptual_cost.py), which would
        # take the demo to ~15 minutes; patch-LPIPS (4 patches of 64²) costs too little to measure, so it stays.
        c.losses.vgg = 0.0
        c.optim.learning_rate = 2e-3
        c.optim.warmup_steps = 50
    elif arg == "smoke":
        common.apply_smoke(c, resolution=40, crop_size=32)
        c.model.widths = (8, 16, 16)
        c.model.attention_reduction = 4
        # Compiling VGG16 doubles a smoke run, and patch-LPIPS's AlexNet adds ~30% to compiling AlbedoNet's train
        # step and triples RefinementNet's: tests switch them on where they need them.
        c.losses.vgg = c.losses.lpips = 0.0
        c.optim.learning_rate = 3e-3
        c.optim.warmup_steps = 2
    return c
