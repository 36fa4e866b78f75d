"""End-to-end fine-tuning of the whole pipeline, from finished runs of the three stages.

    coarse, sides = AlbedoNet(image area-downsampled ×2)    albedo losses against the ground truth at half size
    refined       = RefinementNet(coarse, image)            albedo losses against the ground truth
    fake          = G(refined)                              the passes stage's G loss (GAN, feature matching,
                                                            masked MSE, VGG)
    D loss        = the passes stage's, on refined ⊕ passes

One forward through the three trained networks (`forward`) and one VJP: the gradient of the total loss with
respect to the chain's outputs (coarse, sides, refined, fake) flows back through all of them, so the passes
losses reach both albedo networks through the generator. D takes the condition as data: no gradient flows into
the albedo networks through D's input (they should not learn to fool D by changing the albedo). A network
whose learning rate is 0 is held fixed: it enters the VJP as a constant, so no gradient is computed for it (its
gradient is reported as 0), while gradients still flow through it to the networks before it.

The config (configs/joint.py) is the passes stage's plus `albedo` and `refine` sections; `stage_view` turns
those into the configs of stages 1 and 2, so their checks and loss terms are reused as they are.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from maginet_jax import losses
from maginet_jax.errors import UserError, check_divisible, check_number
from maginet_jax.models.albedo_net import build_albedo_net, size_multiple
from maginet_jax.models.refinement_net import build_refinement_net
from maginet_jax.perceptual.losses import perceptual_nets
from maginet_jax.stages import passes, supervised
from maginet_jax.training import checks, microbatches, runs
from maginet_jax.training.state import TrainState, abstract_state, make_optimizer, make_schedule, state_around

CHAIN = ("albedo", "refine", "generator")  # the networks a sample passes through, in order
INIT_KEYS = {"albedo": "init.albedo_workdir", "refine": "init.refine_workdir", "passes": "init.passes_workdir"}


def stage_view(config, stage: str) -> ml_collections.ConfigDict:
    """The stage-1 ("albedo", at half the crop size) or stage-2 ("refine") config the joint config holds: what
    `supervised`'s checks and loss terms read."""
    section = config[stage]
    crop = config.data.crop_size // 2 if stage == "albedo" else config.data.crop_size
    return ml_collections.ConfigDict(dict(stage=stage, model=section.model, losses=section.losses,
                                          perceptual=config.perceptual, data=dict(crop_size=crop)))


def learning_rates(config) -> dict[str, float]:
    return {"albedo": config.albedo.learning_rate, "refine": config.refine.learning_rate,
            "generator": config.optim.learning_rate, "discriminator": config.optim.learning_rate}


def networks(config) -> dict:
    """The four trained networks: {"albedo", "refine", "generator", "discriminator"}."""
    return {"albedo": lambda rngs: build_albedo_net(config.albedo.model, rngs=rngs),
            "refine": lambda rngs: build_refinement_net(config.refine.model, rngs=rngs),
            **passes.networks(config)}


def optimizers(config) -> dict[str, optax.GradientTransformation]:
    """G and D as in the passes stage; each albedo network on the same schedule at its own rate."""
    out = passes.optimizers(config)
    for name in ("albedo", "refine"):
        optim = ml_collections.ConfigDict(config.optim.to_dict())
        optim.learning_rate = config[name].learning_rate
        out[name] = make_optimizer(optim, config.num_train_steps)
    return out


def init(config, mesh: Mesh) -> tuple[dict[str, nnx.GraphDef], TrainState]:
    """The trained parameters of the three runs in `config.init`, with fresh optimizer states."""
    txs = optimizers(config)
    graphdefs, like = abstract_state(networks(config), txs, mesh, config.sharding)
    params = {}
    for run, names in (("albedo", {"model": "albedo"}), ("refine", {"model": "refine"}),
                       ("passes", {"generator": "generator", "discriminator": "discriminator"})):
        what = INIT_KEYS[run]
        saved = runs.restore_params(runs.params_dir(config.init[f"{run}_workdir"], what=what),
                                    {theirs: like.params[ours] for theirs, ours in names.items()}, what=what)
        params.update({ours: saved[theirs] for theirs, ours in names.items()})
    return graphdefs, state_around(params, txs, config.seed, like)


def frozen_nets(config, mesh: Mesh) -> dict:
    """The perceptual networks any active term needs (VGG and LPIPS are shared by all three networks)."""
    weights = [config.albedo.losses, config.refine.losses, config.losses]
    return {"perceptual": perceptual_nets(config.perceptual, vgg=any(w.get("vgg", 0) > 0 for w in weights),
                                          lpips=any(w.get("lpips", 0) > 0 for w in weights[:2]))}


def forward(chain_params: dict, image: jax.Array, *, graphdefs) -> dict:
    """{"coarse", "sides", "refined", "fake"}: one image through AlbedoNet, RefinementNet and G ([-1, 1])."""
    coarse, sides = nnx.merge(graphdefs["albedo"], chain_params["albedo"])(losses.area_downsample(image, 2))
    refined = nnx.merge(graphdefs["refine"], chain_params["refine"])(coarse, image)
    fake = nnx.merge(graphdefs["generator"], chain_params["generator"])(refined * 2.0 - 1.0)
    return {"coarse": coarse, "sides": sides, "refined": refined, "fake": fake}


def weighted(terms: dict, weights) -> jax.Array:
    return sum((weights[k] * v for k, v in terms.items()), jnp.zeros((), jnp.float32))


def train_step(state: TrainState, batch, frozen_nets, *, config, graphdefs) -> tuple[TrainState, dict]:
    """One step of all four networks on a global batch: the new state and this step's scalars."""
    rng, step_rng = jax.random.split(state.rng)
    grads, scalars = microbatches.accumulate(
        lambda micro, key: gradients(state.params, frozen_nets, micro, key, config=config, graphdefs=graphdefs),
        batch, step_rng, config.grad_accum_steps)
    scalars.update({f"grad_norm_{n}": optax.tree.norm(g) for n, g in grads.items()},
                   learning_rate=make_schedule(config.optim, config.num_train_steps)(state.step))
    return state.apply_gradients(grads, optimizers(config), rng), scalars


def gradients(params, frozen_nets, batch, rng, *, config, graphdefs) -> tuple[dict, dict]:
    """Every network's gradients on `batch` (zeros for a network whose learning rate is 0) and the step's
    scalars: the total loss, D's, and the unweighted terms."""
    albedo_rng, refine_rng = jax.random.split(rng)
    rates, perceptual = learning_rates(config), frozen_nets["perceptual"]
    trained = {n: params[n] for n in CHAIN if rates[n] > 0}
    fixed = {n: params[n] for n in CHAIN if rates[n] == 0}  # constants of the VJP: no gradient is computed
    out, chain_vjp = jax.vjp(lambda p: forward({**fixed, **p}, batch["image"], graphdefs=graphdefs), trained)

    target = passes.target_passes(batch, config)
    cond = jax.lax.stop_gradient(out["refined"]) * 2.0 - 1.0
    d_loss, d_grads, real_out = passes.discriminator_gradients(params["discriminator"], cond, target * 2.0 - 1.0,
                                                               out["fake"], config=config, graphdefs=graphdefs)
    half = dict(zip(("albedo", "mask"), losses.masked_downsample(batch["albedo"], batch["mask"], 2)))
    albedo_view, refine_view = stage_view(config, "albedo"), stage_view(config, "refine")

    def total_loss(out):
        g_loss, g_terms = passes.generator_loss(out["fake"], params["discriminator"], cond, real_out, target,
                                                batch["mask"], perceptual, config=config, graphdefs=graphdefs)
        albedo_terms = supervised.loss_terms(out["coarse"], out["sides"], half, perceptual, albedo_rng,
                                             config=albedo_view)
        refine_terms = supervised.loss_terms(out["refined"], [], batch, perceptual, refine_rng, config=refine_view)
        total = g_loss + weighted(albedo_terms, config.albedo.losses) + weighted(refine_terms, config.refine.losses)
        return total, {"g_loss": g_loss, **g_terms, **{f"albedo_{k}": v for k, v in albedo_terms.items()},
                       **{f"refine_{k}": v for k, v in refine_terms.items()}}

    (loss, terms), d_out = jax.value_and_grad(total_loss, has_aux=True)(out)
    (grads,) = chain_vjp(d_out)
    grads = {**jax.tree.map(jnp.zeros_like, fixed), **grads,
             "discriminator": d_grads if rates["discriminator"] > 0 else jax.tree.map(jnp.zeros_like, d_grads)}
    return grads, {"loss": loss, "d": d_loss, **terms}


def predict(params, frozen_nets, batch, *, config, graphdefs):
    """The passes stage's `predict`, its condition computed by this run's own albedo networks."""
    upstream = {n: (graphdefs[n], params[n]) for n in ("albedo", "refine")}
    return passes.predict(params, {"upstream": upstream}, batch, config=config, graphdefs=graphdefs)


def validate(config) -> None:
    """The three runs exist, are of the right stages and have the config's architectures; each network's
    settings and losses pass its own stage's checks."""
    missing = [key for run, key in INIT_KEYS.items() if not config.init[f"{run}_workdir"]]
    if missing:
        raise UserError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required: the joint "
                        f"stage fine-tunes finished albedo, refine and passes runs")
    for run in ("albedo", "refine"):  # (optim.learning_rate, G's and D's, is checked with the shared keys)
        check_number(f"{run}.learning_rate", config[run].learning_rate, at_least=0)
        checks.check_compute(config[run].model, f"{run}.model.")
    passes.validate_model(config)
    check_divisible("data.crop_size", config.data.crop_size, 2, "stage 1 runs at half of it")
    check_divisible("half of data.crop_size", config.data.crop_size // 2, size_multiple(config.albedo.model),
                    "AlbedoNet (albedo.model) runs at it")
    # The stage checks read the sections as stage configs (stage_view): their messages get the section's name.
    for run, check in (("albedo", supervised.validate_albedo), ("refine", supervised.validate_refinement_net)):
        try:
            check(stage_view(config, run), allow_no_loss=True)
        except UserError as e:
            raise UserError(f"in the {run} section: {e}") from None
    for run in ("albedo", "refine"):
        saved = runs.read_config(config.init[f"{run}_workdir"], expect_stage=run, what=INIT_KEYS[run])
        runs.check_same_model(saved.model, config[run].model, INIT_KEYS[run], config.init[f"{run}_workdir"],
                              f"{run}.model.")
    saved = runs.read_config(config.init.passes_workdir, expect_stage="passes", what=INIT_KEYS["passes"])
    passes.check_same_architecture(saved, config, INIT_KEYS["passes"], config.init.passes_workdir)
    if tuple(saved.passes) != tuple(config.passes):
        raise UserError(f"{INIT_KEYS['passes']}={config.init.passes_workdir!r} predicts {tuple(saved.passes)}, the "
                        f"config {tuple(config.passes)}")
