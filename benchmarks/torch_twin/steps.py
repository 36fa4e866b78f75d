"""Each stage's losses and train step in PyTorch, the twin of `maginet_jax.stages` for the same config.

    nets = build(config)                      # the trained networks, frozen ones, loss networks
    opt = Optimizers(config, nets)            # Adam(W) per trained network, clipping and the JAX schedule
    loss = train_step(nets, opt, batch, config, step)
    out = infer_step(nets, batch, config)

Batches are dicts of NCHW float32 tensors with the keys of the JAX pipeline's batches. Stage 2's input albedo
comes from a frozen AlbedoNet twin when `nets` has one ("albedo"), else from the ground truth area-downsampled
×2, as in JAX; stage 3 is conditioned on the ground-truth albedo (the JAX stage without earlier runs).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch
from torch import nn

from benchmarks.torch_twin import losses, networks, perceptual
from benchmarks.torch_twin import pix2pixhd as p2p
from maginet_jax import losses as maginet_losses
from maginet_jax.stages import passes, supervised
from maginet_jax.training import runs
from maginet_jax.training.state import make_schedule


def build(config) -> dict[str, nn.Module | None]:
    """The twins a stage's step needs, with fresh PyTorch weights (copy the JAX ones with transfer.load_from_jax)."""
    w, p = config.losses, config.perceptual
    bf16 = p.get("precision", "highest") == "bfloat16"
    nets = {"vgg": perceptual.VGGLoss(tuple(p.vgg_layer_weights), bf16) if w.get("vgg", 0) > 0 else None,
            "lpips": perceptual.PatchLPIPSLoss(p.lpips_net, p.patch_size, bf16) if w.get("lpips", 0) > 0 else None}
    if config.stage == "albedo":
        nets["model"] = networks.albedo_net(config.model)
    elif config.stage == "refine":
        nets["model"] = networks.refinement_net(config.model)
        if config.init.albedo_workdir:  # the frozen stage-1 network of the run it refines
            run = runs.read_config(config.init.albedo_workdir, expect_stage="albedo", what="init.albedo_workdir")
            nets["albedo"] = networks.albedo_net(run.model)
    else:
        m, out_nc = config.model, sum(passes.pass_channels(config))
        up = dict(upsample=m.upsample, resize_method=m.resize_method)
        if m.netG == "global":
            nets["generator"] = p2p.GlobalGenerator(3, out_nc, m.ngf, m.n_downsample_global, m.n_blocks_global,
                                                    **up)
        else:
            nets["generator"] = p2p.LocalEnhancer(3, out_nc, m.ngf, m.n_downsample_global, m.n_blocks_global,
                                                  m.n_local_enhancers, m.n_blocks_local, **up)
        nets["discriminator"] = p2p.MultiscaleDiscriminator(3 + out_nc, m.ndf, m.n_layers_D, num_D=m.num_D,
                                                            getIntermFeat=m.getIntermFeat)
    return nets


class Autocast(nn.Module):
    """`inner` under autocast to bfloat16, its floating outputs returned in float32: the twin of
    `model.dtype=bfloat16`, where the network's convs compute in bfloat16 and parameters, norms (autocast keeps
    them in float32 too) and losses stay float32. Parameters and state-dict keys are `inner.`'s."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        device = args[0].device.type
        with torch.autocast(device, dtype=torch.bfloat16):
            out = self.inner(*args)
        return _to_float32(out)


def _to_float32(x):
    if isinstance(x, (list, tuple)):
        return type(x)(_to_float32(v) for v in x)
    return x.float() if torch.is_tensor(x) and x.is_floating_point() else x


def mixed_precision(nets: dict, config) -> dict:
    """The trained networks wrapped in Autocast when `config.model.dtype` is bfloat16; `nets` unchanged for
    float32. Apply after the JAX weights are loaded."""
    if config.model.get("dtype", "float32") == "float32":
        return nets
    return {k: Autocast(v) if k in trained(config) else v for k, v in nets.items()}


def trained(config) -> tuple[str, ...]:
    """The names of the networks the JAX stage trains."""
    return tuple((passes if config.stage == "passes" else supervised).networks(config))


def coarse_albedo(nets, batch) -> torch.Tensor:
    if nets.get("albedo") is not None:
        with torch.no_grad():
            return nets["albedo"](losses.area_downsample(batch["image"], 2))[0]
    return losses.area_downsample(batch["albedo"], 2)


def supervised_losses(nets, batch, config, corners=None, generator=None):
    """(weighted total, {term: value}) of stages 1 and 2; patch-LPIPS at `corners` (B, K, 2) or at corners
    drawn with `generator`."""
    target, mask = batch["albedo"], batch["mask"]
    if config.stage == "albedo":
        albedo, sides = nets["model"](batch["image"])
    else:
        albedo, sides = nets["model"](coarse_albedo(nets, batch), batch["image"]), []
    weights = maginet_losses.active_weights(config.losses, supervised.TERMS)
    terms = {}
    if "mse" in weights:
        terms["mse"] = losses.masked_mse(albedo, target, mask)
    if "edge" in weights:
        terms["edge"] = losses.edge_loss(albedo, target, mask)
    if "side" in weights:
        terms["side"] = losses.deep_supervision_loss(sides, target, mask)
    if "vgg" in weights:
        terms["vgg"] = nets["vgg"](albedo, target, mask)
    if "lpips" in weights:
        if corners is None:
            corners = perceptual.sample_patch_corners(mask, config.perceptual.num_patches,
                                                      config.perceptual.patch_size, generator)
        terms["lpips"] = nets["lpips"](albedo, target, mask, corners)
    return sum(weights[k] * v for k, v in terms.items()), terms


def condition_and_target(batch, config) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 3's (condition, every pass concatenated on channels), in [0, 1]."""
    parts = []
    for name, c in zip(config.passes, passes.pass_channels(config)):
        x = batch[name]
        parts.append(x if x.shape[1] == c else (x.repeat(1, c, 1, 1) if x.shape[1] == 1 else x.mean(1, keepdim=True)))
    return batch["albedo"], torch.cat(parts, dim=1)


def gan_losses(nets, batch, config):
    """(G loss, D loss, {term: value}) of pix2pixHD's step: D sees the generator's output detached; the G loss
    is GAN + feature matching (real features fixed) + the weighted reconstruction of every pass."""
    cond01, target01 = condition_and_target(batch, config)
    cond, real = cond01 * 2.0 - 1.0, target01 * 2.0 - 1.0
    G, D, mode, w = nets["generator"], nets["discriminator"], config.gan.mode, config.losses
    discriminate = lambda x: D(torch.cat([cond, x], dim=1))
    fake = G(cond)
    real_out = discriminate(real)
    d_loss = losses.discriminator_loss(real_out, discriminate(fake.detach()), mode)
    D.requires_grad_(False)  # the G loss needs D's gradient with respect to its input only, as in JAX
    fake_out = discriminate(fake)
    D.requires_grad_(True)
    terms = {"g_gan": losses.generator_loss(fake_out, mode)}
    if w.fm > 0:
        terms["g_fm"] = losses.feature_matching_loss(real_out, fake_out, config.model.n_layers_D, w.fm)
    channels = list(passes.pass_channels(config))
    preds, targets = torch.split((fake + 1.0) / 2.0, channels, dim=1), torch.split(target01, channels, dim=1)
    mask = batch["mask"]
    if w.mse > 0:
        weights = [float(config.pass_mse_weights[p]) for p in config.passes]
        terms["mse"] = sum(wp * losses.masked_mse(q, t, mask) for wp, q, t in zip(weights, preds, targets)) / len(preds)
    if w.vgg > 0:
        terms["vgg"] = nets["vgg"](torch.cat([perceptual.to_rgb(q) for q in preds]),
                                   torch.cat([perceptual.to_rgb(t) for t in targets]), torch.cat([mask] * len(preds)))
    g_loss = sum(v for k, v in terms.items() if k.startswith("g_")) + sum(
        float(w[k]) * terms[k] for k in ("mse", "vgg") if k in terms)
    return g_loss, d_loss, terms


class Optimizers:
    """Adam (AdamW with weight_decay) per trained network, global-norm clipping, and the learning rate of the
    JAX run's schedule at every step (computed once by `make_schedule`)."""

    def __init__(self, config, nets, fused: bool | None = None):
        c = config.optim
        self.lrs = np.asarray(make_schedule(c, config.num_train_steps)(jnp.arange(config.num_train_steps + 1)))
        cls = torch.optim.AdamW if c.weight_decay > 0 else torch.optim.Adam
        extra = {"weight_decay": c.weight_decay} if c.weight_decay > 0 else {}
        self.clip = float(c.grad_clip_norm)
        self.opts = {n: cls(nets[n].parameters(), lr=float(self.lrs[0]), betas=(c.b1, c.b2), eps=1e-8, fused=fused,
                            **extra) for n in trained(config)}
        self.nets = nets

    def step(self, name: str, loss: torch.Tensor, step: int) -> None:
        opt = self.opts[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.nets[name].parameters(), self.clip)
        for group in opt.param_groups:
            group["lr"] = float(self.lrs[min(step, len(self.lrs) - 1)])
        opt.step()


def train_step(nets, opt: Optimizers, batch, config, step: int, generator=None) -> torch.Tensor:
    """One optimizer step of the stage (G, then D, for pix2pixHD); returns the (G) loss, not synchronised."""
    if config.stage == "passes":
        g_loss, d_loss, _ = gan_losses(nets, batch, config)
        opt.step("generator", g_loss, step)  # D's parameters are unchanged until its own step, as in JAX
        opt.step("discriminator", d_loss, step)
        return g_loss.detach()
    loss, _ = supervised_losses(nets, batch, config, generator=generator)
    opt.step("model", loss, step)
    return loss.detach()


@torch.inference_mode()
def infer_step(nets, batch, config) -> torch.Tensor:
    """The stage's prediction for the batch (what `predict` returns in JAX)."""
    if config.stage == "albedo":
        return nets["model"](batch["image"])[0]
    if config.stage == "refine":
        return nets["model"](coarse_albedo(nets, batch), batch["image"])
    return (nets["generator"](batch["albedo"] * 2.0 - 1.0) + 1.0) / 2.0
