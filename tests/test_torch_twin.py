"""The PyTorch twin (benchmarks/torch_twin) computes what the JAX stages compute, so benchmarks/compare.py times
the same work: network outputs to 1e-4, and the loss terms and the gradient of every trained parameter of each
stage's full train loss to 1e-3 relative (per tensor, against its largest entry), on the same inputs and weights.

Every parameter of the JAX networks is random (`random_module`; fresh norms would have scale 1 and bias 0, and
RefinementNet's last conv starts at zero), so a parameter mapped to the wrong place cannot go unnoticed.
"""

import functools

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from benchmarks.torch_twin import networks, steps, transfer
from conftest import jit_apply, lpips_on, random_module, smoke, synthetic_batch
from maginet_jax.models.albedo_net import AlbedoNet, build_albedo_net
from maginet_jax.models.refinement_net import build_refinement_net
from maginet_jax.perceptual.losses import perceptual_nets, sample_patch_corners
from maginet_jax.stages import passes, supervised

torch.set_num_threads(1)


def _nchw(batch: dict) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(np.asarray(v).transpose(0, 3, 1, 2)))
            for k, v in batch.items() if np.ndim(v) == 4}


def _close(got, want, rtol, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(np.abs(want).max(), 1e-12), err_msg=what)


def _check_gradients(torch_grads: dict, jax_module, jax_grads) -> None:
    """Each tensor to 1e-3 of its largest entry; a tensor whose gradient is round-off (a conv bias before a norm
    without affine parameters: exactly 0 in theory) to 1e-5 of the network's largest entry."""
    want = transfer.gradients_in_torch_layout(jax_module, jax_grads)
    assert torch_grads.keys() == want.keys()
    largest = max(np.abs(g).max() for g in want.values())
    assert sum(np.abs(g).max() > 1e-2 * largest for g in want.values()) > 0.5 * len(want)  # the loss reaches them
    for key, g in want.items():
        scale = max(np.abs(g).max(), 1e-2 * largest)
        np.testing.assert_allclose(torch_grads[key], g, rtol=1e-3, atol=1e-3 * scale, err_msg=key)


@pytest.mark.parametrize("options", [
    {},
    {"norm": "instance", "activation": "gelu", "fusion": "concat", "attention": "channel"},
    {"norm": "none", "activation": "leaky_relu", "fusion": "sum", "attention": "spatial", "blocks_per_level": 2},
    {"activation": "silu", "attention": "none", "widths": (8, 16, 16, 24), "spatial_kernel": 3},
], ids=["default", "instance-gelu-concat", "none-lrelu-sum", "silu-4levels"])
def test_albedo_net_outputs_match(options):
    kw = {"widths": (8, 16, 16), "attention_reduction": 4, **options}
    model = random_module(lambda: AlbedoNet(**kw, rngs=nnx.Rngs(0)), seed=2)
    twin = transfer.load_from_jax(networks.AlbedoNet(**kw), model)
    x = np.random.default_rng(0).uniform(size=(2, 24, 40, 3)).astype(np.float32)
    albedo, sides = jit_apply(model, x)
    with torch.no_grad():
        t_albedo, t_sides = twin(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    assert len(sides) == len(t_sides) == len(kw["widths"]) - 2
    for got, want in zip([t_albedo, *t_sides], [albedo, *sides]):
        np.testing.assert_allclose(got.numpy(), np.asarray(want).transpose(0, 3, 1, 2), rtol=0, atol=1e-4)


def test_bfloat16_twin_matches_jax_mixed_precision():
    """model.dtype=bfloat16 against the twin under steps.Autocast (what benchmarks.compare times on a GPU)."""
    kw = {"widths": (8, 16, 16), "attention_reduction": 4}
    model = random_module(lambda: AlbedoNet(**kw, dtype=jax.numpy.bfloat16, rngs=nnx.Rngs(0)), seed=2)
    twin = transfer.load_from_jax(networks.AlbedoNet(**kw), model)
    x = np.random.default_rng(0).uniform(size=(2, 24, 40, 3)).astype(np.float32)
    want = np.asarray(jit_apply(model, x)[0]).transpose(0, 3, 1, 2)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        full = twin(xt)[0].numpy()
        got = steps.Autocast(twin)(xt)[0]
    assert got.dtype == torch.float32
    # Both round to bfloat16 around every conv, not at the same places (JAX's norms return bfloat16, autocast's
    # float32), so each is compared with the float32 network: a real bfloat16 error, of the same size.
    jax_error, torch_error = np.abs(want - full).max(), np.abs(got.numpy() - full).max()
    assert 1e-4 < jax_error < 2e-3 and 1e-4 < torch_error < 2e-3, (jax_error, torch_error)
    assert 0.2 < torch_error / jax_error < 5


def test_attention_gradients_match_on_tied_maxima():
    """Both take each max at its first argmax, so even tied maxima (here most of them: 5 levels) send the
    gradient to the same element; jnp.max or torch.amax would split it."""
    from maginet_jax.models.attention import Attention
    model = random_module(lambda: Attention(8, reduction=2, spatial_kernel=3, rngs=nnx.Rngs(0)), seed=3)
    twin = transfer.load_from_jax(networks.Attention(8, "cbam", 2, 3), model)
    rng = np.random.default_rng(1)
    x = (rng.integers(-2, 3, (2, 5, 6, 8)) / 2).astype(np.float32)
    w = rng.standard_normal((2, 5, 6, 8)).astype(np.float32)
    want = jax.grad(lambda v: (model(v) * w).sum())(x)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    (twin(xt) * torch.from_numpy(w.transpose(0, 3, 1, 2).copy())).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), np.asarray(want).transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-6)


def test_transfer_is_strict():
    model = random_module(lambda: AlbedoNet(widths=(8, 16), attention_reduction=4, rngs=nnx.Rngs(0)))
    with pytest.raises(RuntimeError, match="Missing key"):
        transfer.load_from_jax(networks.AlbedoNet(widths=(8, 16), attention_reduction=4, bottleneck_blocks=3), model)


def _supervised_parity(c, frozen_nets, nets, model):
    batch = synthetic_batch(c.get("passes", ()), n=2)
    graphdef, params = nnx.split(model, nnx.Param)
    rng = jax.random.PRNGKey(5)
    loss_fn = functools.partial(supervised.loss_fn, config=c, graphdefs={"model": graphdef})
    loss_and_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))  # arrays as arguments, not constants XLA folds
    (loss, terms), grads = loss_and_grad({"model": params}, frozen_nets, batch, rng)
    corners = sample_patch_corners(rng, batch["mask"], c.perceptual.num_patches, c.perceptual.patch_size)
    t_loss, t_terms = steps.supervised_losses(nets, _nchw(batch), c, corners=torch.from_numpy(np.asarray(corners)))
    t_loss.backward()
    assert t_terms.keys() == terms.keys()
    for k in terms:
        _close(t_terms[k].item(), terms[k], 1e-4, k)
    _close(t_loss.item(), loss, 1e-4, "loss")
    _check_gradients(transfer.torch_gradients(nets["model"]), model, grads["model"])


def test_albedo_train_loss_and_gradients_match():
    # mse, edge, side, patch-LPIPS; the VGG loss (one module for every stage): the passes test
    c = smoke("albedo", **lpips_on("albedo"))
    model = random_module(lambda: build_albedo_net(c.model, rngs=nnx.Rngs(0)), seed=1)
    nets = steps.build(c)
    transfer.load_from_jax(nets["model"], model)
    frozen_nets = {"perceptual": perceptual_nets(c.perceptual, vgg=False, lpips=True), "upstream": {}}
    _supervised_parity(c, frozen_nets, nets, model)


def test_refine_train_loss_and_gradients_match():
    c = smoke("refine", **lpips_on("refine"))  # conditioned on a (frozen) stage-1 AlbedoNet's prediction
    albedo_config = smoke("albedo").model
    upstream = random_module(lambda: build_albedo_net(albedo_config, rngs=nnx.Rngs(0)), seed=4)
    model = random_module(lambda: build_refinement_net(c.model, rngs=nnx.Rngs(0)), seed=1)
    nets = steps.build(c)
    transfer.load_from_jax(nets["model"], model)
    nets["albedo"] = transfer.load_from_jax(networks.albedo_net(albedo_config), upstream)
    frozen_nets = {"perceptual": perceptual_nets(c.perceptual, vgg=False, lpips=True),
                   "upstream": {"albedo": nnx.split(upstream)}}
    _supervised_parity(c, frozen_nets, nets, model)


@pytest.mark.parametrize("net_g,upsample", [("global", "transpose"), ("local", "transpose"), ("global", "resize")])
def test_passes_train_losses_and_gradients_match(net_g, upsample):
    c = smoke("passes", **{"model.netG": net_g, "model.n_blocks_global": 1, "model.upsample": upsample,
                           "model.resize_method": "bilinear", "pass_mse_weights.specular": 4.0,
                           "losses.vgg": 0.05 if (net_g, upsample) == ("global", "transpose") else 0.0})
    nets = steps.build(c)
    jax_nets = {}
    for i, (name, build) in enumerate(passes.networks(c).items()):
        jax_nets[name] = random_module(lambda: build(nnx.Rngs(0)), seed=10 + i)
        transfer.load_from_jax(nets[name], jax_nets[name])
    split = {name: nnx.split(m, nnx.Param) for name, m in jax_nets.items()}
    graphdefs, params = {n: s[0] for n, s in split.items()}, {n: s[1] for n, s in split.items()}
    batch = synthetic_batch(c.get("passes", ()), n=2)
    frozen_nets = {"perceptual": perceptual_nets(c.perceptual, vgg=c.losses.vgg > 0, lpips=False), "upstream": {}}
    cond, target = passes.condition_and_target(frozen_nets, batch, c)
    # Every array an argument: closed over, VGG's weights and the target's features become constants that XLA
    # folds while compiling (19 s instead of 7 s on this test's program).
    grads, scalars = jax.jit(functools.partial(passes.gan_gradients, config=c, graphdefs=graphdefs))(
        params, cond, target, batch["mask"], frozen_nets["perceptual"])
    g_loss, d_loss, terms = steps.gan_losses(nets, _nchw(batch), c)
    g_loss.backward()  # D's parameters get no gradient from the G loss, as in JAX
    assert all(p.grad is None for p in nets["discriminator"].parameters())
    d_loss.backward()  # D's loss sees the generator's output detached
    _close(g_loss.item(), scalars["g_loss"], 1e-4, "g_loss")
    _close(d_loss.item(), scalars["d"], 1e-4, "d")
    assert set(terms) == set(scalars) - {"g_loss", "d"}
    for k in terms:
        _close(terms[k].item(), scalars[k], 1e-4, k)
    for name in ("generator", "discriminator"):
        _check_gradients(transfer.torch_gradients(nets[name]), jax_nets[name], grads[name])


def test_bfloat16_loss_networks_match_the_twin():
    """perceptual.precision=bfloat16 against the twin's loss networks under autocast (benchmarks.compare on a GPU):
    each a bfloat16 rounding away from the float32 loss, of the same size."""
    from benchmarks.torch_twin import perceptual as twin_perceptual
    from maginet_jax.perceptual.losses import VGGPerceptualLoss
    batch = synthetic_batch((), n=2, resolution=48)
    pred, target = batch["image"] * 0.8, batch["albedo"]
    t_pred, t_target = (torch.from_numpy(np.asarray(v).transpose(0, 3, 1, 2).copy()) for v in (pred, target))
    full, half = (float(jax.jit(VGGPerceptualLoss(precision=p))(pred, target)) for p in ("highest", "bfloat16"))
    with torch.no_grad():
        t_half = twin_perceptual.VGGLoss(bfloat16=True)(t_pred, t_target).item()
        t_full = twin_perceptual.VGGLoss()(t_pred, t_target).item()
    np.testing.assert_allclose(t_full, full, rtol=1e-4)
    jax_error, torch_error = abs(half / full - 1), abs(t_half / full - 1)
    assert 1e-5 < jax_error < 2e-2 and 1e-5 < torch_error < 2e-2, (jax_error, torch_error)
