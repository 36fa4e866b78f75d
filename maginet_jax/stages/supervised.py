"""Stages 1 and 2: one network trained on the albedo loss family; and finished runs of them as the frozen
inputs of later stages.

    albedo: AlbedoNet(image)                                        at data.crop_size
    refine: RefinementNet(stage-1 albedo at half size, image)       at data.crop_size (the paper's 1024²)

Every function takes the config; `graphdefs` are the trained networks' graph definitions ({"model": ...}) and
`frozen_nets` the networks used but not trained, as (graphdef, state) pairs: {"perceptual": {"vgg", "lpips"},
"upstream": {"albedo", "refine"}} (earlier stages). Without a finished run to start from, stage 2 refines the
ground-truth albedo degraded by area-downsampling ×2, and stage 3 is conditioned on the ground-truth albedo.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from maginet_jax import losses
from maginet_jax.errors import UserError, check_choices, check_divisible, check_number, check_numbers
from maginet_jax.models import attention, layers
from maginet_jax.models.albedo_net import ARCHS, FUSIONS, build_albedo_net, size_multiple
from maginet_jax.models.layers import resize_to
from maginet_jax.models.refinement_net import build_refinement_net
from maginet_jax.perceptual.losses import check_config, perceptual_nets
from maginet_jax.training import microbatches, runs
from maginet_jax.training.state import TrainState, init_state, make_optimizer, make_schedule

TERMS = ("mse", "edge", "side", "vgg", "lpips")


def networks(config) -> dict:
    """The trained network, {"model": build(rngs)}: AlbedoNet (or the U-Net baseline), or RefinementNet."""
    build = build_albedo_net if config.stage == "albedo" else build_refinement_net
    return {"model": lambda rngs: build(config.model, rngs=rngs)}


def optimizers(config) -> dict[str, optax.GradientTransformation]:
    return {"model": make_optimizer(config.optim, config.num_train_steps)}


def init(config, mesh: Mesh) -> tuple[dict[str, nnx.GraphDef], TrainState]:
    """A fresh state; with `init.from_workdir`, the network's parameters are that run's (fine-tuning).

    The earlier run is checked when a run starts (`runs.start_from`, also in `train.run` before the workdir is
    made), not in `validate`: evaluating the new run later must not need it.
    """
    directory = runs.start_from(config)
    graphdefs, state = init_state(networks(config), optimizers(config), config.seed, mesh, config.sharding)
    if directory is None:
        return graphdefs, state
    params = runs.restore_params(directory, {"model": state.params["model"]}, what="init.from_workdir")
    logging.info("%s stage: starting from the parameters in %s", config.stage, directory)
    return graphdefs, state.replace(params=params)


def frozen_nets(config, mesh: Mesh) -> dict:
    """The perceptual networks of the active loss terms and, for stage 2, the stage-1 run it refines."""
    weights = losses.active_weights(config.losses, TERMS)
    return {"perceptual": perceptual_nets(config.perceptual, vgg="vgg" in weights, lpips="lpips" in weights),
            "upstream": load_upstream(config.init, mesh) if config.stage == "refine" else {}}


def forward(params, frozen_nets, batch, *, config, graphdefs):
    """(albedo, side outputs, copy_input): copy_input is the albedo the network was given (the lit image in
    stage 1, the upsampled coarse albedo in stage 2), scored as if it were the output: the baseline."""
    net = nnx.merge(graphdefs["model"], params["model"])
    if config.stage == "albedo":
        albedo, sides = net(batch["image"])
        return albedo, sides, batch["image"]
    coarse = coarse_albedo(frozen_nets["upstream"], batch)
    return net(coarse, batch["image"]), [], resize_to(coarse, *batch["image"].shape[1:3])


def loss_terms(albedo, sides, batch, perceptual, rng, *, config) -> dict[str, jax.Array]:
    """Unweighted value of each active term (weight > 0 in `config.losses`; the others are not computed)."""
    target, mask = batch["albedo"], batch["mask"]
    compute = {
        "mse": lambda: losses.masked_mse(albedo, target, mask),
        "edge": lambda: losses.edge_loss(albedo, target, mask),
        "side": lambda: losses.deep_supervision_loss(sides, target, mask),
        "vgg": lambda: nnx.merge(*perceptual["vgg"])(albedo, target, mask),
        "lpips": lambda: nnx.merge(*perceptual["lpips"])(albedo, target, mask, rng),  # patches drawn from rng
    }
    return {k: compute[k]() for k in losses.active_weights(config.losses, TERMS, allow_none=True)}


def loss_fn(params, frozen_nets, batch, rng, *, config, graphdefs):
    """(weighted total, unweighted terms) of the network's albedo."""
    albedo, sides, _ = forward(params, frozen_nets, batch, config=config, graphdefs=graphdefs)
    terms = loss_terms(albedo, sides, batch, frozen_nets["perceptual"], rng, config=config)
    weights = losses.active_weights(config.losses, TERMS)
    return jnp.asarray(sum(weights[k] * v for k, v in terms.items()), jnp.float32), terms


def train_step(state: TrainState, batch, frozen_nets, *, config, graphdefs) -> tuple[TrainState, dict]:
    """One optimizer step on a global batch: the new state and this step's scalars."""
    rng, step_rng = jax.random.split(state.rng)
    grads, scalars = microbatches.accumulate(
        lambda micro, key: gradients(state.params, frozen_nets, micro, key, config=config, graphdefs=graphdefs),
        batch, step_rng, config.grad_accum_steps)
    scalars.update(grad_norm=optax.tree.norm(grads),
                   learning_rate=make_schedule(config.optim, config.num_train_steps)(state.step))
    return state.apply_gradients(grads, optimizers(config), rng), scalars


def gradients(params, frozen_nets, batch, rng, *, config, graphdefs) -> tuple[dict, dict]:
    """The loss's gradients on `batch` and its scalars (the loss and its unweighted terms)."""
    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, frozen_nets, batch, rng, config=config,
                                                                     graphdefs=graphdefs)
    return grads, {"loss": loss, **terms}


def predict(params, frozen_nets, batch, *, config, graphdefs):
    """({"albedo": prediction}, {"albedo": copy_input}), for the evaluator."""
    albedo, _, copy_input = forward(params, frozen_nets, batch, config=config, graphdefs=graphdefs)
    return {"albedo": albedo}, {"albedo": copy_input}


def report(config, rows: dict) -> tuple[dict[str, float], str]:
    """The evaluator's means → (eval/* scalars without the prefix, a log line)."""
    model, copy = rows["model"]["albedo"], rows["copy the input"]["albedo"]
    if config.stage == "albedo":
        baseline = "copy-the-input"
    else:
        baseline = f"input ({'stage-1' if config.init.albedo_workdir else 'degraded ground-truth'} albedo, upsampled)"
    return ({"albedo_mse": model["mse"], "psnr": model["psnr"], "copy_input_mse": copy["mse"]},
            f"albedo MSE {model['mse'] * 1e3:.3f} (x1e-3), PSNR {model['psnr']:.2f} dB; "
            f"{baseline} MSE {copy['mse'] * 1e3:.3f} (x1e-3)")


def samples(config) -> dict[str, tuple[str, ...]]:
    """Sample grids, {tag: columns of the evaluator's images}."""
    given = () if config.stage == "albedo" else ("albedo_copy",)
    return {"input_prediction_target": ("image", *given, "albedo_pred", "albedo")}


def validate_albedo(config, *, allow_no_loss: bool = False) -> None:
    """Checks stage 1's model against the crop size, and its losses (all zero only with `allow_no_loss`: the
    joint stage trains AlbedoNet through later losses too)."""
    m = config.model
    check_numbers("model.widths", m.widths, integer=True, at_least=1)
    levels = len(m.widths)
    if levels < 2:
        raise UserError(f"model.widths needs at least 2 levels, got {tuple(m.widths)}")
    for key, least in (("blocks_per_level", 0), ("bottleneck_blocks", 0), ("decoder_blocks", 0),
                       ("attention_reduction", 1), ("spatial_kernel", 1)):
        check_number(f"model.{key}", m[key], integer=True, at_least=least)
    if m.spatial_kernel % 2 == 0:  # as CBAM and the PyTorch twin: an even kernel would shift the gate by a pixel
        raise UserError(f"model.spatial_kernel must be odd, got {m.spatial_kernel}")
    check_divisible("data.crop_size", config.data.crop_size, size_multiple(m),
                    f"a {levels}-level {'U-Net' if m.get('arch') == 'unet' else 'AlbedoNet'} halves the image "
                    f"{levels - 1} times")
    check_choices({"model.arch": (m.get("arch", "maginet"), ARCHS), "model.norm": (m.norm, layers.NORMS),
                   "model.attention": (m.attention, attention.ATTENTIONS), "model.fusion": (m.fusion, FUSIONS),
                   "model.activation": (m.activation, layers.ACTIVATIONS)})
    if m.get("arch") == "unet" and config.losses.side > 0:
        raise UserError("losses.side must be 0 for model.arch=unet: the U-Net has no side outputs")
    _check_losses(config, allow_no_loss)


def _check_losses(config, allow_no_loss: bool = False) -> None:
    weights = losses.active_weights(config.losses, TERMS, allow_none=allow_no_loss)
    check_config(config.perceptual, config.data.crop_size, lpips="lpips" in weights)


def validate_refine(config) -> None:
    """Checks stage 2's model, its losses and the stage-1 run it refines."""
    validate_refinement_net(config)
    validate_inputs(config)


def validate_refinement_net(config, *, allow_no_loss: bool = False) -> None:
    """Checks RefinementNet's settings and its losses (as `validate_albedo`)."""
    check_numbers("model.widths", config.model.widths, integer=True, at_least=1)
    if len(config.model.widths) != 2:
        raise UserError(f"model.widths of RefinementNet are its two hidden widths, got {tuple(config.model.widths)}")
    check_choices({"model.activation": (config.model.activation, layers.ACTIVATIONS)})
    _check_losses(config, allow_no_loss)


# Finished stage-1 and stage-2 runs as inputs (stage 2 takes stage 1's albedo, stage 3 the refined one).

def validate_inputs(config) -> None:
    """The earlier runs in `config.init` exist, are of the right stage, and fit this crop size."""
    crop = config.data.crop_size
    check_divisible("data.crop_size", crop, 2, "stage 1 runs at half of it")
    if config.init.albedo_workdir:
        albedo = runs.read_config(config.init.albedo_workdir, expect_stage="albedo", what="init.albedo_workdir")
        check_divisible("half of data.crop_size", crop // 2, size_multiple(albedo.model),
                        "the stage-1 run in init.albedo_workdir needs it")
    if config.init.get("refine_workdir"):
        runs.read_config(config.init.refine_workdir, expect_stage="refine", what="init.refine_workdir")


def load_upstream(init_config, mesh: Mesh, *, label: str = "init.{}_workdir", hint: str = runs.UPSTREAM_HINT
                  ) -> dict:
    """The finished runs `init_config` names ({"albedo": (graphdef, params), "refine": ...}), replicated: each
    its checkpoint of `init.<stage>_step` (0: the latest; see `runs.pin_upstream`).

    `label` names the settings in error messages ("init.{}_workdir" in training, "--{}_workdir" in prediction),
    `hint` ends the error for a step a run does not have (`runs.params_dir`).
    """
    upstream = {}
    for stage in ("albedo", "refine"):
        workdir = init_config.get(f"{stage}_workdir")
        if workdir:
            _, graphdefs, params = runs.load_params(workdir, networks, stage=stage, what=label.format(stage),
                                                    mesh=mesh, step=init_config.get(f"{stage}_step") or 0, hint=hint)
            upstream[stage] = (graphdefs["model"], params["model"])
    return upstream


def describe_upstream(init_config) -> str:
    """What stage 3 is conditioned on, in words (for the log)."""
    albedo = "stage-1 AlbedoNet" if init_config.albedo_workdir else "degraded ground-truth albedo"
    if init_config.get("refine_workdir"):
        return f"RefinementNet on the {albedo}"
    return "stage-1 AlbedoNet" if init_config.albedo_workdir else "ground-truth albedo"


def coarse_albedo(upstream: dict, batch) -> jax.Array:
    """Stage 1's albedo at half the batch's resolution (the ground truth, area-downsampled, without a run)."""
    if "albedo" in upstream:
        net = nnx.merge(*upstream["albedo"])
        return jax.lax.stop_gradient(net(losses.area_downsample(batch["image"], 2))[0])
    return losses.area_downsample(batch["albedo"], 2)


def refined_albedo(upstream: dict, batch) -> jax.Array:
    """Stage 2's albedo at the batch's resolution (stage 3's condition)."""
    if "refine" in upstream:
        net = nnx.merge(*upstream["refine"])
        return jax.lax.stop_gradient(net(coarse_albedo(upstream, batch), batch["image"]))
    if "albedo" in upstream:
        return resize_to(coarse_albedo(upstream, batch), *batch["image"].shape[1:3])
    return batch["albedo"]
