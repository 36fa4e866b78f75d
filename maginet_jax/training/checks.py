"""The checks of the config sections every stage shares, and of a config against its device mesh: one UserError
on the first problem, before any work (`train.validate` adds each stage's own)."""

from __future__ import annotations

from data_pipeline import loader
from maginet_jax.errors import UserError, check_choices, check_divisible, check_number
from maginet_jax.models import layers
from maginet_jax.training import compiler, sharding
from maginet_jax.training.state import SCHEDULES

# The numeric settings every stage has, and their ranges (for `errors.check_number`).
SHARED_RANGES = {
    **{key: dict(integer=True, at_least=1) for key in (
        "num_train_steps", "batch_size", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
        "eval.batch_size", "eval.num_examples", "data.num_train_examples", "max_checkpoints_to_keep",
        "data.resolution", "data.crop_size", "data.read_threads", "data.worker_buffer_size",
        "data.read_buffer_size", "grad_accum_steps", "profile_num_steps")},
    **{key: dict(integer=True, at_least=0) for key in (
        "data.worker_count", "eval.worker_count", "optim.warmup_steps", "optim.decay_steps", "sharding.fsdp_min_size",
        "profile_first_step", "keep_checkpoints_every_steps", "keep_best_checkpoints")},
    # Rows of one grid image, gathered on the host with every image the evaluator shows (at 1024² with every pass,
    # about 0.2 GB a row).
    "num_sample_images": dict(integer=True, at_least=0, at_most=32),
    # grain's shuffle takes a 32-bit seed, the synthetic generator's numpy one a non-negative one.
    **{key: dict(integer=True, at_least=0, below=2**32) for key in ("seed", "data.seed")},
    # 0 holds a network fixed (the joint stage) or switches clipping or weight decay off.
    **{key: dict(at_least=0) for key in ("optim.learning_rate", "optim.end_learning_rate_factor",
                                         "optim.weight_decay", "optim.grad_clip_norm")},
    "optim.b1": dict(at_least=0, below=1), "optim.b2": dict(at_least=0, below=1),
    "data.test_fraction": dict(above=0, below=1),
}


def check_shared(config, *, read_data: bool = True) -> None:
    """The run, data, optimizer, sharding and compiler settings, the `init.*_step`s, and (unless `read_data` is
    False) that the data source opens."""
    d, o = config.data, config.optim
    for key, bounds in SHARED_RANGES.items():
        section, _, name = key.rpartition(".")
        value = (config[section] if section else config).get(name)  # None in configs saved by older versions
        if value is not None:
            check_number(key, value, **bounds)
    if config.get("profile_first_step", 0) > config.num_train_steps:
        raise UserError(f"profile_first_step={config.profile_first_step} is past num_train_steps="
                        f"{config.num_train_steps}: no step would be profiled")
    keep_every = config.get("keep_checkpoints_every_steps", 0)
    if keep_every and keep_every % config.checkpoint_every_steps:
        raise UserError(f"keep_checkpoints_every_steps={keep_every} is not a multiple of checkpoint_every_steps="
                        f"{config.checkpoint_every_steps}: the steps it keeps would have no checkpoint")
    if d.crop_size > d.resolution:
        raise UserError(f"data.crop_size {d.crop_size} exceeds data.resolution {d.resolution}")
    for key, step in config.get("init", {}).items():
        if key.endswith("_step"):
            check_number(f"init.{key}", step, integer=True, at_least=0)
            if step and not config.init.get(key[:-len("_step")] + "_workdir"):
                raise UserError(f"init.{key}={step} is set but init.{key[:-len('_step')]}_workdir is empty")
    check_choices({"optim.schedule": (o.schedule, SCHEDULES), "data.source": (d.source, loader.SOURCES)})
    check_compute(config.model, "model.")
    sharding.check_rules(config.sharding.rules)
    compiler.ynn_fusion_types(compiler.setting(config))
    after_warmup = max(config.num_train_steps - min(o.warmup_steps, config.num_train_steps), 1)
    if o.schedule == "constant_then_linear" and not 0 <= o.decay_steps <= after_warmup:
        raise UserError(f"optim.decay_steps={o.decay_steps} must be in [0, {after_warmup}] (the steps after warm-up)")
    if d.source == "synthetic" and d.root:
        raise UserError("data.root is set but data.source='synthetic' reads no files; "
                        "did you mean --config.data.source=ffhq_uv_intrinsics?")
    for split, n in (("train", d.num_train_examples), ("test", config.eval.num_examples)) if read_data else ():
        try:
            loader.make_source(d, split, n, ("albedo",))
        except ValueError as e:
            raise UserError(str(e)) from None


def check_compute(model_config, prefix: str) -> None:
    """A network's compute dtype and remat setting (`prefix` names its section, e.g. "albedo.model.")."""
    check_choices({f"{prefix}dtype": (model_config.dtype, layers.DTYPES),
                   f"{prefix}remat": (model_config.get("remat", "none"), layers.REMATS)})


def check_mesh(config, num_processes: int, mesh) -> None:
    """Global batches (and their microbatches) must split evenly over processes and over the mesh's data × fsdp
    devices, and images over its spatial axis."""
    shards = sharding.batch_size_divisor(mesh)
    for key, size in (("batch_size", config.batch_size), ("eval.batch_size", config.eval.batch_size)):
        if size % num_processes or size % shards:
            raise UserError(f"{key}={size} must be divisible by the {num_processes} processes and by the "
                            f"{shards} shards of the mesh's data × fsdp axes")
    check_divisible("data.crop_size", config.data.crop_size, mesh.shape[sharding.SPATIAL_AXIS],
                    "the mesh's spatial axis splits the image height")
    accum = config.grad_accum_steps
    if accum > 1 and config.batch_size % (shards * accum):  # each microbatch spread over the devices as a batch is
        raise UserError(f"batch_size={config.batch_size} must be divisible by grad_accum_steps × the mesh's data × "
                        f"fsdp shards ({accum} × {shards}): each microbatch is split over the devices as a batch is")
