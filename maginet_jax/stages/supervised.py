"""Stages 1 and 2: one network trained on the albedo loss family (MSE, edge, deep supervision, perceptual).

    albedo: AlbedoNet(image)                                     at data.crop_size
    refine: RefinementNet(stage-1 albedo at half size, image)    at data.crop_size (the paper's 1024²)
"""

from __future__ import annotations

import jax
from clu import parameter_overview
from flax import nnx
from jax.sharding import Mesh

from maginet_jax.errors import UserError, check_choices
from maginet_jax.models import attention, layers
from maginet_jax.models.albedo_net import ARCHS, FUSIONS, build_albedo_net
from maginet_jax.models.layers import resize_to
from maginet_jax.models.refinement_net import build_refinement_net
from maginet_jax.stages.inputs import Upstream
from maginet_jax.training import objectives, optim, runs, steps
from maginet_jax.training.objectives import AlbedoObjective
from maginet_jax.training.state import init_train_state


class SupervisedStage:
    """State, jitted steps and reporting of a single-network stage; `forward(graphdef)` is its model call."""

    data_passes = ("albedo",)
    model_name = "AlbedoNet"
    baseline = "copy-the-input"
    columns = ("input", "prediction", "target")
    loss_key = "loss"
    param_keys = ("params",)
    # evaluate's rows: {pass: (prediction column, target column)}, and the copy-the-input baseline's.
    scored = {"albedo": ("prediction", "target")}
    copy_input = {"albedo": ("start", "target")}

    def __init__(self, config, mesh: Mesh, build, forward, inputs=None):
        self.objective = AlbedoObjective(config.losses, config.perceptual)
        schedule = optim.make_schedule(config.optim, config.num_train_steps)
        tx = optim.make_optimizer(config.optim, config.num_train_steps)
        self.graphdef, self.initial_state = init_train_state(build, tx, config.seed, mesh)
        self.state_sharding = jax.tree.map(lambda x: x.sharding, self.initial_state)
        self.train_step, self.eval_step = steps.make_supervised_steps(
            forward(self.graphdef), self.objective, tx, schedule, mesh, self.state_sharding, inputs or {})
        self.image_groups = {"input_prediction_target": self.columns}

    def overview(self, state) -> str:
        return f"{self.model_name} parameters:\n" + parameter_overview.get_parameter_overview(
            nnx.to_pure_dict(state.params))

    def eval_message(self, s: dict[str, float]) -> str:
        return (f"albedo MSE {s['eval/albedo_mse'] * 1e3:.3f} (x1e-3), PSNR {s['eval/psnr']:.2f} dB; "
                f"{self.baseline} MSE {s['eval/copy_input_mse'] * 1e3:.3f} (x1e-3)")


class AlbedoStage(SupervisedStage):
    def __init__(self, config, mesh: Mesh):
        self.model_name = "U-Net" if config.model.get("arch") == "unet" else "AlbedoNet"
        super().__init__(config, mesh, lambda rngs: build_albedo_net(config.model, rngs=rngs), steps.albedo_forward)


class RefineStage(SupervisedStage):
    model_name = "RefinementNet"
    columns = ("input", "start", "prediction", "target")

    def __init__(self, config, mesh: Mesh):
        self.upstream = upstream = Upstream(config.init, mesh, refine=False)
        source = "stage-1 albedo" if upstream.params else "degraded ground-truth albedo"
        self.baseline = f"input ({source}, upsampled)"

        def forward(graphdef):
            def run(params, inputs, batch):
                net = nnx.merge(graphdef, params)
                coarse = upstream.coarse_albedo(inputs, batch)
                return net(coarse, batch["image"]), [], resize_to(coarse, *batch["image"].shape[1:3])
            return run

        super().__init__(config, mesh, lambda rngs: build_refinement_net(config.model, rngs=rngs), forward,
                         upstream.params)


def albedo_multiple(model_config) -> int:
    """AlbedoNet halves the image once per level after the first."""
    return 2 ** (len(model_config.widths) - 1)


def validate_albedo(config) -> None:
    """Checks config.model of stage 1 against the crop size."""
    m, crop = config.model, config.data.crop_size
    if len(m.widths) < 2:
        raise UserError(f"model.widths needs at least 2 levels, got {tuple(m.widths)}")
    if crop % albedo_multiple(m):
        raise UserError(f"data.crop_size {crop} is not divisible by {albedo_multiple(m)}: a {len(m.widths)}-level "
                        f"AlbedoNet halves the image {len(m.widths) - 1} times")
    check_choices({"model.arch": (m.get("arch", "maginet"), ARCHS), "model.norm": (m.norm, layers.NORMS),
                    "model.attention": (m.attention, attention.ATTENTIONS), "model.fusion": (m.fusion, FUSIONS),
                    "model.activation": (m.activation, layers.ACTIVATIONS)})
    if m.get("arch") == "unet" and config.losses.side > 0:
        raise UserError("losses.side must be 0 for model.arch=unet: the U-Net has no side outputs")
    _check_losses(config)


def _check_losses(config) -> None:
    objectives.active_weights(config.losses)
    objectives.check_perceptual_config(config.perceptual, config.data.crop_size)


def validate_inputs(config, *, refine: bool) -> None:
    """The earlier stages in `config.init` exist, are of the right stage, and fit this crop size."""
    crop = config.data.crop_size
    if crop % 2:
        raise UserError(f"data.crop_size {crop} must be even: stage 1 runs at half of it")
    if config.init.albedo_workdir:
        albedo = runs.read_config(config.init.albedo_workdir, expect_stage="albedo", what="init.albedo_workdir")
        if (crop // 2) % albedo_multiple(albedo.model):
            raise UserError(f"data.crop_size {crop}: the stage-1 run in init.albedo_workdir needs half of it "
                            f"divisible by {albedo_multiple(albedo.model)}")
    if refine and config.init.refine_workdir:
        runs.read_config(config.init.refine_workdir, expect_stage="refine", what="init.refine_workdir")


def validate_refine(config) -> None:
    """Checks config.model of stage 2 and its inputs."""
    if len(config.model.widths) != 2:
        raise UserError(f"model.widths of RefinementNet are its two hidden widths, got {tuple(config.model.widths)}")
    check_choices({"model.activation": (config.model.activation, layers.ACTIVATIONS)})
    _check_losses(config)
    validate_inputs(config, refine=False)
