"""Stage 3: the Pix2PixHD translator from the refined albedo to the other rendering passes.

    condition = refined albedo at data.crop_size (frozen stages 1-2, or the ground truth)
    fake      = G(condition)                       all passes, concatenated on channels, in [-1, 1]
    D         = multi-scale discriminator on condition ⊕ passes
Losses: LSGAN (or hinge) + feature matching (λ `losses.fm`) + masked MSE and VGG per pass. Normals are
predicted in their [-1, 1] vector form (the stored [0, 1] encoding, rescaled), so prediction renormalises them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from clu import parameter_overview
from flax import nnx
from jax.sharding import Mesh

from data_pipeline import shading
from maginet_jax import gan_losses, losses
from maginet_jax.errors import UserError, check_choices
from maginet_jax.models import pix2pixhd
from maginet_jax.stages.inputs import Upstream
from maginet_jax.training import optim, runs, steps
from maginet_jax.training.gan_step import gan_train_step, init_gan_state
from maginet_jax.perceptual.losses import VGG_BACKBONES
from maginet_jax.training.objectives import PASSES_TERMS, PassesObjective, active_weights

CONDITION_CHANNELS = 3
IMPORT_STAGE = "pix2pixhd_import"
# The config.model keys that fix the shapes of G and D (an imported or earlier run must agree on them).
ARCH_KEYS = ("netG", "ngf", "n_downsample_global", "n_blocks_global", "n_local_enhancers", "n_blocks_local",
             "ndf", "n_layers_D", "num_D", "getIntermFeat")


def match_channels(x: jax.Array, channels: int) -> jax.Array:
    """A pass with the channel count the config asks for (grey ↔ RGB)."""
    if x.shape[-1] == channels:
        return x
    return jnp.repeat(x, channels, axis=-1) if x.shape[-1] == 1 else jnp.mean(x, axis=-1, keepdims=True)


def global_trunk_labels(params) -> object:
    """"frozen" for LocalEnhancer's global trunk, "free" elsewhere (pix2pixHD's niter_fix_global)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if getattr(path[0], "key", None) == "global_net" else "free", params)


def build_models(config):
    """(build_generator, build_discriminator) for `config`, as functions of nnx.Rngs."""
    out_nc = sum(config.pass_channels[p] for p in config.passes)
    return (lambda rngs: pix2pixhd.build_generator(config.model, CONDITION_CHANNELS, out_nc, rngs=rngs),
            lambda rngs: pix2pixhd.build_discriminator(config.model, CONDITION_CHANNELS + out_nc, rngs=rngs))


class PassesStage:
    """State, jitted steps and reporting of the GAN stage."""

    def __init__(self, config, mesh: Mesh):
        self.names = tuple(config.passes)
        self.data_passes = ("albedo", *self.names)
        channels = tuple(config.pass_channels[p] for p in self.names)
        self.upstream = Upstream(config.init, mesh, refine=True)
        self.objective = PassesObjective(config.losses, config.perceptual, channels)
        schedule = optim.make_schedule(config.optim, config.num_train_steps)
        fix = config.optim.niter_fix_global
        g_tx = optim.make_optimizer(config.optim, config.num_train_steps,
                                    frozen_labels=global_trunk_labels if fix else None, frozen_steps=fix)
        d_tx = optim.make_optimizer(config.optim, config.num_train_steps)
        build_g, build_d = build_models(config)
        self.g_graphdef, self.d_graphdef, state = init_gan_state(build_g, build_d, g_tx, d_tx, config.seed, mesh)
        if config.init.pix2pixhd:
            state = _start_from(config, state)
        self.initial_state = state
        self.state_sharding = jax.tree.map(lambda x: x.sharding, state)

        frozen = steps.place_frozen({"objective": self.objective.frozen, "inputs": self.upstream.params}, mesh)
        names = ("g_loss", "d", "g_gan", *(("g_fm",) if config.losses.fm > 0 else ()), *self.objective.terms,
                 "learning_rate")
        train = functools.partial(self._train_step, g_tx=g_tx, d_tx=d_tx, schedule=schedule,
                                  metrics_cls=steps.metrics_class(names), gan_mode=config.gan.mode,
                                  fm_weight=config.losses.fm, n_layers=config.model.n_layers_D)
        self.eval_metrics = steps.metrics_class(
            ("mse", "psnr", "condition_mse", *(f"{p}_mse" for p in self.names)))
        self.train_step = steps.jit_train_step(train, mesh, self.state_sharding, frozen)
        self.eval_step = steps.jit_eval_step(self._eval_step, mesh, self.state_sharding, frozen)
        self.columns = ("condition", *(c for p in self.names for c in (p, f"{p}_target")))
        self.image_groups = {p: ("condition", p, f"{p}_target") for p in self.names}
        self.loss_key = "g_loss"
        self.param_keys = ("g_params", "d_params")
        # The condition is scored too when it is predicted (the chained pipeline), not the ground truth.
        chained = {"albedo": ("condition", "albedo_target")} if self.upstream.params else {}
        self.scored = {**chained, **{p: (p, f"{p}_target") for p in self.names}}
        self.copy_input = {p: ("input", target) for p, (_, target) in self.scored.items()}

    def _inputs(self, frozen, batch):
        """(condition, target) in [0, 1]; the target holds every pass, concatenated on channels."""
        cond = self.upstream.refined_albedo(frozen["inputs"], batch)
        target = jnp.concatenate([match_channels(batch[p], c) for p, c in zip(self.names, self.objective.channels)],
                                 axis=-1)
        return cond, target

    def _train_step(self, state, batch, frozen, *, g_tx, d_tx, schedule, metrics_cls, gan_mode, fm_weight, n_layers):
        cond, target = self._inputs(frozen, batch)

        def recon(fake, _, rng):
            return self.objective(frozen["objective"], (fake + 1.0) / 2.0, target, batch["mask"])

        state_out, terms = gan_train_step(
            state, {"condition": cond * 2.0 - 1.0, "target": target * 2.0 - 1.0}, g_graphdef=self.g_graphdef,
            d_graphdef=self.d_graphdef, g_tx=g_tx, d_tx=d_tx, recon_loss=recon, gan_mode=gan_mode,
            fm_weight=fm_weight, n_layers=n_layers)
        return state_out, metrics_cls.single_from_model_output(**terms, learning_rate=schedule(state.step))

    def _eval_step(self, state, batch, frozen):
        cond, target = self._inputs(frozen, batch)
        fake = (nnx.merge(self.g_graphdef, state.g_params)(cond * 2.0 - 1.0) + 1.0) / 2.0
        mask = batch["mask"]
        preds, targets = self.objective.split(fake), self.objective.split(target)
        mses = {f"{p}_mse": losses.per_example_masked_mse(x, t, mask) for p, x, t in zip(self.names, preds, targets)}
        metrics = self.eval_metrics.single_from_model_output(
            mse=sum(mses.values()) / len(mses), psnr=sum(losses.psnr(m) for m in mses.values()) / len(mses),
            condition_mse=losses.per_example_masked_mse(cond, batch["albedo"], mask), mask=batch["valid"], **mses)
        shown = {"condition": cond, "input": batch["image"], "mask": mask, "albedo_target": batch["albedo"]}
        for p, x, t in zip(self.names, preds, targets):
            shown[p], shown[f"{p}_target"] = x * mask, t
        return metrics, shown

    def overview(self, state) -> str:
        return "\n".join(f"{name} parameters:\n" + parameter_overview.get_parameter_overview(nnx.to_pure_dict(p))
                         for name, p in (("generator", state.g_params), ("discriminator", state.d_params)))

    def eval_message(self, s: dict[str, float]) -> str:
        per_pass = ", ".join(f"{p} {s[f'eval/{p}_mse'] * 1e3:.2f}" for p in self.names)
        return (f"pass MSE (x1e-3) mean {s['eval/mse'] * 1e3:.3f} [{per_pass}], PSNR {s['eval/psnr']:.2f} dB; "
                f"condition ({self.upstream.describe()}) albedo MSE {s['eval/condition_mse'] * 1e3:.3f}")


def _start_from(config, state):
    """G (and D, when saved) from `init.pix2pixhd`: imported PyTorch weights or an earlier passes run."""
    directory, what = config.init.pix2pixhd, "init.pix2pixhd"
    source = runs.read_config(directory, expect_stage=(IMPORT_STAGE, "passes"), what=what)
    check_same_architecture(source, config, what)
    folder = runs.params_dir(directory, what=what)
    g = runs.restore_params(folder, state.g_params, key="g_params", what=what)
    has_d = source.stage == "passes" or source.get("has_discriminator", False)
    d = runs.restore_params(folder, state.d_params, key="d_params", what=what) if has_d else state.d_params
    return state.replace(g_params=g, d_params=d)


def check_same_architecture(source, config, what: str) -> None:
    """UserError naming every architecture setting in which `source` (a saved run or import) differs."""
    ours = dict(config.model)
    theirs = dict(source.model)
    keys = [k for k in ARCH_KEYS if ours["netG"] == "local" or k not in ("n_local_enhancers", "n_blocks_local")]
    diffs = [f"model.{k}: {theirs.get(k)!r} there, {ours[k]!r} here" for k in keys if theirs.get(k) != ours[k]]
    if source.get("input_nc", CONDITION_CHANNELS) != CONDITION_CHANNELS:
        diffs.append(f"generator input has {source.input_nc} channels there; the condition (an albedo) has "
                     f"{CONDITION_CHANNELS}")
    out_nc = sum(config.pass_channels[p] for p in config.passes)
    if source.get("output_nc", out_nc) != out_nc:
        diffs.append(f"generator outputs {source.output_nc} channels there, {out_nc} here (config.passes)")
    if diffs:
        raise UserError(f"{what}={config.init.pix2pixhd!r} has another architecture: " + "; ".join(diffs))


def validate_passes(config) -> None:
    """Checks stage 3's config before anything runs."""
    from maginet_jax.stages.supervised import validate_inputs

    unknown = sorted(set(config.passes) - set(shading.PASS_NAMES[1:]))
    if unknown or not config.passes:
        raise UserError(f"passes {tuple(config.passes)}: choose from {shading.PASS_NAMES[1:]}")
    bad = {p: config.pass_channels.get(p) for p in config.passes if config.pass_channels.get(p) not in (1, 3)}
    if bad:
        raise UserError(f"pass_channels must be 1 or 3 for every pass, got {bad}")
    m = config.model
    check_choices({"model.netG": (m.netG, pix2pixhd.GENERATORS), "gan.mode": (config.gan.mode, gan_losses.GAN_MODES)})
    multiple = pix2pixhd.generator_multiple(m)
    if config.data.crop_size % multiple:
        raise UserError(f"data.crop_size {config.data.crop_size} is not divisible by {multiple}, which the "
                        f"{m.netG} generator's {multiple.bit_length() - 1} halvings need")
    fix = config.optim.niter_fix_global
    if fix and m.netG != "local":
        raise UserError("optim.niter_fix_global trains the local enhancer alone first: it needs model.netG=local")
    if not 0 <= fix < config.num_train_steps:
        raise UserError(f"optim.niter_fix_global={fix} must be in [0, num_train_steps={config.num_train_steps})")
    if config.losses.fm > 0 and not m.getIntermFeat:
        raise UserError("losses.fm > 0 (feature matching) needs model.getIntermFeat=True, as in pix2pixHD")
    active_weights(config.losses, PASSES_TERMS, allow_none=True)
    if config.losses.vgg > 0:
        check_choices({"perceptual.vgg_backbone": (config.perceptual.vgg_backbone, VGG_BACKBONES)})
    validate_inputs(config, refine=True)
    if config.init.pix2pixhd:
        source = runs.read_config(config.init.pix2pixhd, expect_stage=(IMPORT_STAGE, "passes"), what="init.pix2pixhd")
        check_same_architecture(source, config, "init.pix2pixhd")
