"""Stage 3: the Pix2PixHD translator from the refined albedo to the other rendering passes.

    condition = refined albedo at data.crop_size (frozen stages 1-2, or the ground truth)
    fake      = G(condition)                     all passes, concatenated on channels, in [-1, 1]
    D loss    = 0.5 · (GAN(D(cond ⊕ real) → real) + GAN(D(cond ⊕ stop_gradient(fake)) → fake))
    G loss    = GAN(D(cond ⊕ fake) → real) + feature matching(D(cond ⊕ real), D(cond ⊕ fake)) + recon(fake)
Reconstruction: masked MSE and VGG per pass. Normals are predicted in their [-1, 1] vector form (the stored
[0, 1] encoding, rescaled), so prediction renormalises them. Arguments as in `stages/supervised.py`; the
trained networks are {"generator", "discriminator"}.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from data_pipeline import shading
from maginet_jax import gan_losses, losses
from maginet_jax.errors import UserError, check_choices, check_divisible, check_number
from maginet_jax.models import pix2pixhd
from maginet_jax.perceptual.losses import check_config, perceptual_nets, to_rgb
from maginet_jax.stages import supervised
from maginet_jax.training import microbatches, runs
from maginet_jax.training.state import TrainState, init_state, make_optimizer, make_schedule

CONDITION_CHANNELS = 3
TERMS = ("mse", "vgg", "fm")
IMPORT_STAGE = "pix2pixhd_import"
# The config.model keys that fix the shapes of G and D (an imported or earlier run must agree on them).
ARCH_KEYS = ("netG", "ngf", "n_downsample_global", "n_blocks_global", "n_local_enhancers", "n_blocks_local",
             "ndf", "n_layers_D", "num_D", "getIntermFeat", "upsample")
ARCH_DEFAULTS = {"upsample": "transpose"}  # what imports and runs saved before the key existed hold


def pass_channels(config) -> tuple[int, ...]:
    """Channels of each predicted pass, in `config.passes` order (1: grey, 3: RGB)."""
    return tuple(config.pass_channels[p] for p in config.passes)


def networks(config) -> dict:
    out_nc = sum(pass_channels(config))
    return {"generator": lambda rngs: pix2pixhd.build_generator(config.model, CONDITION_CHANNELS, out_nc, rngs=rngs),
            "discriminator": lambda rngs: pix2pixhd.build_discriminator(config.model, CONDITION_CHANNELS + out_nc,
                                                                        rngs=rngs)}


def global_trunk_labels(params) -> object:
    """"fixed" for LocalEnhancer's global trunk, "trained" elsewhere (pix2pixHD's niter_fix_global)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "fixed" if getattr(path[0], "key", None) == "global_net" else "trained", params)


def optimizers(config) -> dict[str, optax.GradientTransformation]:
    """pix2pixHD's two Adams; with `niter_fix_global` the generator's global trunk is held at first."""
    fix, steps = config.optim.niter_fix_global, config.num_train_steps
    return {"generator": make_optimizer(config.optim, steps, fixed_labels=global_trunk_labels if fix else None,
                                        fixed_steps=fix),
            "discriminator": make_optimizer(config.optim, steps)}


def init(config, mesh: Mesh) -> tuple[dict[str, nnx.GraphDef], TrainState]:
    """Fresh G and D, or those of `init.pix2pixhd` (imported PyTorch weights or an earlier passes run)."""
    graphdefs, state = init_state(networks(config), optimizers(config), config.seed, mesh, config.sharding)
    if not config.init.pix2pixhd:
        return graphdefs, state
    directory, what = config.init.pix2pixhd, "init.pix2pixhd"
    source = runs.read_config(directory, expect_stage=(IMPORT_STAGE, "passes"), what=what)
    names = ("generator", "discriminator") if source.stage == "passes" or source.get("has_discriminator") else (
        "generator",)
    restored = runs.restore_params(runs.params_dir(directory, what=what),
                                   {n: state.params[n] for n in names}, what=what)
    return graphdefs, state.replace(params={**state.params, **restored})


def frozen_nets(config, mesh: Mesh) -> dict:
    return {"perceptual": perceptual_nets(config.perceptual, vgg=config.losses.vgg > 0, lpips=False),
            "upstream": supervised.load_upstream(config.init, mesh)}


def split_channels(x: jax.Array, channels) -> list[jax.Array]:
    """Passes concatenated on the last axis → one array per pass, of `channels` channels each."""
    return jnp.split(x, list(itertools.accumulate(channels))[:-1], axis=-1)


def match_channels(x: jax.Array, channels: int) -> jax.Array:
    """A pass with the channel count the config asks for (grey ↔ RGB)."""
    if x.shape[-1] == channels:
        return x
    return jnp.repeat(x, channels, axis=-1) if x.shape[-1] == 1 else jnp.mean(x, axis=-1, keepdims=True)


def target_passes(batch, config) -> jax.Array:
    """Every pass of the batch in [0, 1], concatenated on channels in `config.passes` order."""
    return jnp.concatenate([match_channels(batch[p], c) for p, c in zip(config.passes, pass_channels(config))],
                           axis=-1)


def condition_and_target(frozen_nets, batch, config) -> tuple[jax.Array, jax.Array]:
    """(condition, target) in [0, 1]: the refined albedo of the earlier stages, and `target_passes`."""
    return supervised.refined_albedo(frozen_nets["upstream"], batch), target_passes(batch, config)


def reconstruction_terms(fake, target, mask, perceptual, config) -> dict[str, jax.Array]:
    """Masked MSE (each pass weighted by `pass_mse_weights`) and VGG of every pass ([0, 1]), each averaged over
    passes; one-channel passes are grey RGB to VGG, and all passes go through VGG as one batch."""
    channels = pass_channels(config)
    preds, targets = split_channels(fake, channels), split_channels(target, channels)
    weights = [config.pass_mse_weights[p] for p in config.passes]
    compute = {
        "mse": lambda: sum(w * losses.masked_mse(p, t, mask) for w, p, t in zip(weights, preds, targets)) / len(preds),
        "vgg": lambda: nnx.merge(*perceptual["vgg"])(jnp.concatenate([to_rgb(p) for p in preds]),
                                                     jnp.concatenate([to_rgb(t) for t in targets]),
                                                     jnp.concatenate([mask] * len(preds))),
    }
    return {k: compute[k]() for k in ("mse", "vgg") if config.losses[k] > 0}


def discriminate(d_params, cond, passes_, *, graphdefs) -> list[list[jax.Array]]:
    """D's outputs on condition ⊕ passes (both in [-1, 1])."""
    return nnx.merge(graphdefs["discriminator"], d_params)(jnp.concatenate([cond, passes_], axis=-1))


def discriminator_gradients(d_params, cond, real, fake, *, config, graphdefs) -> tuple[jax.Array, dict, list]:
    """(D's loss, its gradient, D's outputs on the real pairs) from real and stopped fake passes ([-1, 1])."""

    def d_loss_fn(d):
        real_out = discriminate(d, cond, real, graphdefs=graphdefs)
        fake_out = discriminate(d, cond, jax.lax.stop_gradient(fake), graphdefs=graphdefs)
        return gan_losses.discriminator_loss(real_out, fake_out, config.gan.mode), real_out

    (d_loss, real_out), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d_params)
    return d_loss, d_grads, jax.lax.stop_gradient(real_out)


def generator_loss(fake, d_params, cond, real_out, target, mask, perceptual, *, config, graphdefs
                   ) -> tuple[jax.Array, dict]:
    """(G's weighted loss, unweighted terms) as a function of its output `fake` ([-1, 1]): GAN, feature matching
    against D's outputs on the real pairs, and reconstruction against `target` ([0, 1])."""
    weights = config.losses
    fake_out = discriminate(d_params, cond, fake, graphdefs=graphdefs)
    terms = {"g_gan": gan_losses.generator_loss(fake_out, config.gan.mode)}
    if weights.fm > 0:
        terms["g_fm"] = gan_losses.feature_matching_loss(real_out, fake_out, config.model.n_layers_D, weights.fm)
    recon = reconstruction_terms((fake + 1.0) / 2.0, target, mask, perceptual, config)
    total = sum(terms.values()) + sum((weights[k] * v for k, v in recon.items()), jnp.zeros((), jnp.float32))
    return total, {**terms, **recon}


def gan_gradients(params, condition, target, mask, perceptual, *, config, graphdefs) -> tuple[dict, dict]:
    """Gradients of G and D from a single generator forward, and the unweighted losses. `condition` and
    `target` are in [0, 1]; the networks work in [-1, 1], like the original.

    The generator's VJP carries the G loss's gradient with respect to `fake` back to G's parameters, while D's
    gradient comes from the stopped fake. D's parameters are those from the start of the step for both
    losses, exactly as separate G and D steps on the same batch would compute them.
    """
    cond, real = condition * 2.0 - 1.0, target * 2.0 - 1.0
    fake, g_vjp = jax.vjp(lambda g: nnx.merge(graphdefs["generator"], g)(cond), params["generator"])
    d_loss, d_grads, real_out = discriminator_gradients(params["discriminator"], cond, real, fake, config=config,
                                                        graphdefs=graphdefs)
    (g_loss, terms), d_fake = jax.value_and_grad(generator_loss, has_aux=True)(
        fake, params["discriminator"], cond, real_out, target, mask, perceptual, config=config, graphdefs=graphdefs)
    (g_grads,) = g_vjp(d_fake)
    return {"generator": g_grads, "discriminator": d_grads}, {"g_loss": g_loss, "d": d_loss, **terms}


def train_step(state: TrainState, batch, frozen_nets, *, config, graphdefs) -> tuple[TrainState, dict]:
    """One pix2pixHD step of G and D on a global batch: the new state and this step's scalars."""
    rng, step_rng = jax.random.split(state.rng)

    def gradients(micro, key):  # (no randomness of its own: `key` is unused)
        cond, target = condition_and_target(frozen_nets, micro, config)
        return gan_gradients(state.params, cond, target, micro["mask"], frozen_nets["perceptual"], config=config,
                             graphdefs=graphdefs)

    grads, scalars = microbatches.accumulate(gradients, batch, step_rng, config.grad_accum_steps)
    scalars["learning_rate"] = make_schedule(config.optim, config.num_train_steps)(state.step)
    return state.apply_gradients(grads, optimizers(config), rng), scalars


def predict(params, frozen_nets, batch, *, config, graphdefs):
    """({pass: prediction in [0, 1]}, {pass: the lit image}) from the batch's "image"; with earlier runs as the
    condition, their refined albedo is a prediction too, named "albedo". (`python -m maginet_jax.predict` calls
    this with finished runs.)"""
    cond = supervised.refined_albedo(frozen_nets["upstream"], batch)
    fake = nnx.merge(graphdefs["generator"], params["generator"])(cond * 2.0 - 1.0)
    outputs = dict(zip(config.passes, split_channels((fake + 1.0) / 2.0, pass_channels(config))))
    if frozen_nets["upstream"]:
        outputs = {"albedo": cond, **outputs}
    return outputs, {p: batch["image"] for p in outputs}


def report(config, rows: dict) -> tuple[dict[str, float], str]:
    """Per-pass MSE, their mean and mean PSNR; the condition's albedo MSE when it is predicted."""
    model = rows["model"]
    scalars = {f"{p}_mse": model[p]["mse"] for p in config.passes}
    scalars["mse"] = sum(model[p]["mse"] for p in config.passes) / len(config.passes)
    scalars["psnr"] = sum(model[p]["psnr"] for p in config.passes) / len(config.passes)
    condition = supervised.describe_upstream(config.init)
    if "albedo" in model:
        scalars["condition_mse"] = model["albedo"]["mse"]
        condition += f" albedo MSE {model['albedo']['mse'] * 1e3:.3f}"
    per_pass = ", ".join(f"{p} {model[p]['mse'] * 1e3:.2f}" for p in config.passes)
    return scalars, (f"pass MSE (x1e-3) mean {scalars['mse'] * 1e3:.3f} [{per_pass}], PSNR {scalars['psnr']:.2f} "
                     f"dB; condition: {condition}")


def samples(config) -> dict[str, tuple[str, ...]]:
    """One grid per pass: condition | prediction | target."""
    condition = "albedo_pred" if config.init.albedo_workdir or config.init.refine_workdir else "albedo"
    return {p: (condition, f"{p}_pred", p) for p in config.passes}


def check_same_architecture(source, config, what: str, workdir: str) -> None:
    """UserError naming every architecture setting in which `source` (the config of the saved run or import in
    `workdir`, given by the setting `what`) differs."""
    keys = [k for k in ARCH_KEYS if config.model.netG == "local" or k not in ("n_local_enhancers", "n_blocks_local")]
    diffs = runs.model_differences(dict(source.model), dict(config.model), keys, defaults=ARCH_DEFAULTS)
    if source.get("input_nc", CONDITION_CHANNELS) != CONDITION_CHANNELS:
        diffs.append(f"generator input has {source.input_nc} channels there; the condition (an albedo) has "
                     f"{CONDITION_CHANNELS}")
    out_nc = sum(pass_channels(config))
    if source.get("output_nc", out_nc) != out_nc:
        diffs.append(f"generator outputs {source.output_nc} channels there, {out_nc} here (config.passes)")
    if diffs:
        raise UserError(f"{what}={workdir!r} has another architecture: " + "; ".join(diffs))


def validate(config) -> None:
    """Checks stage 3's passes, networks, losses and inputs."""
    validate_model(config)
    supervised.validate_inputs(config)
    if config.init.pix2pixhd:
        source = runs.read_config(config.init.pix2pixhd, expect_stage=(IMPORT_STAGE, "passes"), what="init.pix2pixhd")
        check_same_architecture(source, config, "init.pix2pixhd", config.init.pix2pixhd)
        if source.stage == "passes" and tuple(source.passes) != tuple(config.passes):  # its output channels' meaning
            raise UserError(f"init.pix2pixhd={config.init.pix2pixhd!r} predicts {tuple(source.passes)}, the config "
                            f"{tuple(config.passes)}")


def check_counts(model_config, prefix: str) -> None:
    """UserError naming (`prefix` + key) the first of G's and D's widths, depths and counts out of range."""
    m = model_config
    for key, least in (("ngf", 1), ("ndf", 1), ("n_downsample_global", 0), ("n_blocks_global", 0),
                       ("n_local_enhancers", 1 if m.netG == "local" else 0), ("n_blocks_local", 0),
                       ("n_layers_D", 1), ("num_D", 1)):
        check_number(f"{prefix}{key}", m[key], integer=True, at_least=least)


def validate_model(config) -> None:
    """Checks the passes, G and D, and their losses."""
    unknown = sorted(set(config.passes) - set(shading.PASS_NAMES[1:]))
    if unknown or not config.passes:
        raise UserError(f"passes {tuple(config.passes)}: choose from {shading.PASS_NAMES[1:]}")
    if len(set(config.passes)) < len(config.passes):
        raise UserError(f"passes {tuple(config.passes)} names a pass twice")
    bad = {p: config.pass_channels.get(p) for p in config.passes if config.pass_channels.get(p) not in (1, 3)}
    if bad:
        raise UserError(f"pass_channels must be 1 or 3 for every pass, got {bad}")
    for p in config.passes:
        check_number(f"pass_mse_weights.{p}", config.pass_mse_weights.get(p), at_least=0)
    m = config.model
    check_counts(m, "model.")
    check_choices({"model.netG": (m.netG, pix2pixhd.GENERATORS), "gan.mode": (config.gan.mode, gan_losses.GAN_MODES),
                   "model.upsample": (m.upsample, pix2pixhd.UPSAMPLES),
                   "model.resize_method": (m.resize_method, pix2pixhd.RESIZE_METHODS)})
    multiple = pix2pixhd.generator_multiple(m)
    check_divisible("data.crop_size", config.data.crop_size, multiple,
                    f"the {m.netG} generator halves the image {multiple.bit_length() - 1} times")
    fix = config.optim.niter_fix_global
    if fix and m.netG != "local":
        raise UserError("optim.niter_fix_global trains the local enhancer alone first: it needs model.netG=local")
    if not 0 <= fix < config.num_train_steps:
        raise UserError(f"optim.niter_fix_global={fix} must be in [0, num_train_steps={config.num_train_steps})")
    if config.losses.fm > 0 and not m.getIntermFeat:
        raise UserError("losses.fm > 0 (feature matching) needs model.getIntermFeat=True, as in pix2pixHD")
    losses.active_weights(config.losses, TERMS, allow_none=True)
    check_config(config.perceptual, config.data.crop_size, lpips=False)
