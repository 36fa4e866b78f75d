"""`train.validate` on numeric settings out of range: one UserError naming the key, before any work.

Each case was a traceback deep inside a run (a layer constructor, grain's sampler, a KeyError in the joint step),
a failure only at the first train step (NaN losses), or silently accepted (a negative learning rate trains
uphill; NaN passes both `< 0` and `> 0`, so NaN loss weights and rates went through the old sign checks)."""

import math

import pytest

from conftest import smoke
from maginet_jax import train
from maginet_jax.errors import UserError, check_number

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("stage,overrides,message", [
    # the keys every stage shares
    ("albedo", {"data.crop_size": 0}, "data.crop_size must be an integer >= 1, got 0"),
    ("albedo", {"data.resolution": 0}, "data.resolution must be an integer >= 1, got 0"),
    ("albedo", {"seed": -1}, "seed must be an integer >= 0 and < 4294967296, got -1"),
    ("albedo", {"seed": 2**32}, "seed must be an integer >= 0 and < 4294967296"),
    ("albedo", {"data.seed": -1}, "data.seed must be an integer >= 0"),
    ("albedo", {"optim.learning_rate": NAN}, "optim.learning_rate must be a finite number >= 0, got nan"),
    ("albedo", {"optim.learning_rate": -1e-3}, "optim.learning_rate must be a finite number >= 0, got -0.001"),
    ("albedo", {"optim.learning_rate": INF}, "optim.learning_rate must be a finite number >= 0, got inf"),
    ("albedo", {"optim.end_learning_rate_factor": -0.5}, "optim.end_learning_rate_factor must be"),
    ("albedo", {"optim.b1": 1.0}, "optim.b1 must be a finite number >= 0 and < 1, got 1.0"),
    ("albedo", {"optim.b2": -0.1}, "optim.b2 must be a finite number >= 0 and < 1"),
    ("albedo", {"optim.weight_decay": -0.01}, "optim.weight_decay must be a finite number >= 0"),
    ("albedo", {"optim.grad_clip_norm": NAN}, "optim.grad_clip_norm must be a finite number >= 0, got nan"),
    ("albedo", {"data.test_fraction": 1.0}, "data.test_fraction must be a finite number > 0 and < 1"),
    ("albedo", {"num_sample_images": 33}, "num_sample_images must be an integer >= 0 and <= 32, got 33"),
    ("albedo", {"sharding.fsdp_min_size": -5}, "sharding.fsdp_min_size must be an integer >= 0, got -5"),
    ("albedo", {"profile_num_steps": 0}, "profile_num_steps must be an integer >= 1, got 0"),
    ("albedo", {"keep_checkpoints_every_steps": 9},
     "keep_checkpoints_every_steps=9 is not a multiple of checkpoint_every_steps=6: the steps it keeps would have"),
    ("albedo", {"keep_best_checkpoints": -1}, "keep_best_checkpoints must be an integer >= 0, got -1"),
    ("albedo", {"profile_first_step": 13}, "profile_first_step=13 is past num_train_steps=12: no step would be"),
    # loss and perceptual weights
    ("albedo", {"losses.mse": NAN}, "losses.mse must be a finite number >= 0, got nan"),
    ("albedo", {"losses.edge": INF}, "losses.edge must be a finite number >= 0, got inf"),
    ("albedo", {"perceptual.vgg_layer_weights": (1.0, 1.0, 1.0, 1.0, -1.0)},
     "perceptual.vgg_layer_weights[4] must be a finite number >= 0, got -1.0"),
    ("albedo", {"perceptual.vgg_layer_weights": (1.0, 1.0)}, "perceptual.vgg_layer_weights needs 5 values"),
    # AlbedoNet
    ("albedo", {"model.widths": (8, 0, 16)}, "model.widths[1] must be an integer >= 1, got 0"),
    ("albedo", {"model.widths": (8, "16", 16)}, "model.widths[1] must be an integer >= 1, got '16'"),
    ("albedo", {"model.widths": (8, 16.0, 16)}, "model.widths[1] must be an integer >= 1, got 16.0"),
    ("albedo", {"model.attention_reduction": 0}, "model.attention_reduction must be an integer >= 1, got 0"),
    ("albedo", {"model.spatial_kernel": 0}, "model.spatial_kernel must be an integer >= 1, got 0"),
    ("albedo", {"model.spatial_kernel": 4}, "model.spatial_kernel must be odd, got 4"),
    ("albedo", {"model.blocks_per_level": -1}, "model.blocks_per_level must be an integer >= 0, got -1"),
    ("unet_baseline", {"data.crop_size": 30}, "data.crop_size 30 is not divisible by 4: a 3-level U-Net halves"),
    # RefinementNet, and the upstream step without its run
    ("refine", {"model.widths": (8, -8)}, "model.widths[1] must be an integer >= 1, got -8"),
    ("refine", {"init.albedo_step": 3}, "init.albedo_step=3 is set but init.albedo_workdir is empty"),
    ("refine", {"init.albedo_step": -3}, "init.albedo_step must be an integer >= 0, got -3"),
    ("albedo", {"init.from_step": 3}, "init.from_step=3 is set but init.from_workdir is empty"),
    # Pix2PixHD
    ("passes", {"model.n_downsample_global": -1}, "model.n_downsample_global must be an integer >= 0, got -1"),
    ("passes", {"model.num_D": 0}, "model.num_D must be an integer >= 1, got 0"),
    ("passes", {"model.netG": "local", "model.n_local_enhancers": 0}, "model.n_local_enhancers must be an integer"),
    ("passes", {"model.ngf": 0}, "model.ngf must be an integer >= 1, got 0"),
    ("passes", {"passes": ("normal", "specular", "normal")}, "names a pass twice"),
    ("passes", {"pass_mse_weights.normal": INF}, "pass_mse_weights.normal must be a finite number >= 0, got inf"),
])
def test_out_of_range_setting_is_one_error(stage, overrides, message):
    with pytest.raises(UserError) as e:
        train.validate(smoke(stage, **overrides), read_data=False)
    assert message in str(e.value)


def test_the_smoke_configs_pass():
    for stage in ("albedo", "refine", "passes", "unet_baseline"):
        train.validate(smoke(stage), read_data=False)


def test_check_number():
    check_number("k", 0, integer=True, at_least=0)
    check_number("k", 0.5, above=0, below=1)
    check_number("k", 3, at_most=3)
    for value, bounds in ((True, dict(integer=True)), (2.0, dict(integer=True)), (NAN, {}), (-INF, {}),
                          ("1", {}), (None, {}), (0, dict(above=0)), (1, dict(below=1)), (4, dict(at_most=3))):
        with pytest.raises(UserError, match="^k must be"):
            check_number("k", value, **bounds)
