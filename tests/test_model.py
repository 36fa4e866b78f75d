"""AlbedoNet: output shapes and ranges, the size rule, attention and fusion variants."""


import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import REPO, jit_apply, random_module
from maginet_jax.models.albedo_net import AdaptiveFusion, AlbedoNet, build_albedo_net
from maginet_jax.models.attention import Attention, ChannelGate, SpatialGate, peak
from maginet_jax.models.layers import Conv, ConvTranspose, GroupNorm, SubpixelConvTranspose, resize_to


def _net(**kw):
    kw = {"widths": (8, 16, 16), "attention_reduction": 4, **kw}
    return random_module(lambda: AlbedoNet(rngs=nnx.Rngs(0), **kw))


def test_shapes_and_range():
    net = _net(widths=(8, 8, 16, 16))
    x = np.random.default_rng(1).uniform(size=(2, 32, 48, 3)).astype(np.float32)
    out, sides = jit_apply(net, x)
    assert out.shape == (2, 32, 48, 3)
    # Side outputs coarse → fine at 1/4 and 1/2 (the bottleneck at 1/8 has no head).
    assert [s.shape for s in sides] == [(2, 8, 12, 3), (2, 16, 24, 3)]
    for y in (out, *sides):
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert float(jnp.std(out)) > 0.0  # not a constant image


@pytest.mark.parametrize("size", [(30, 32), (32, 36), (33, 33)])
def test_indivisible_size_is_one_clear_error(size):
    net = _net(widths=(8, 8, 16, 16))  # needs multiples of 8
    with pytest.raises(ValueError, match=r"divisible by 8; got \d+x\d+"):
        net(jnp.zeros((1, *size, 3)))


def test_paper_scale_bottleneck_at_32():
    net = nnx.eval_shape(lambda: AlbedoNet(rngs=nnx.Rngs(0)))
    assert net.size_multiple == 16  # 5 levels: 512 → 32
    out, sides = nnx.eval_shape(lambda m, x: m(x), net, jax.ShapeDtypeStruct((1, 512, 512, 3), jnp.float32))
    assert out.shape == (1, 512, 512, 3)
    assert [s.shape[1] for s in sides] == [64, 128, 256]


@pytest.mark.parametrize("norm,attention,fusion", [("instance", "none", "concat"), ("none", "channel", "sum"),
                                                   ("group", "spatial", "adaptive")])
def test_variants_run(norm, attention, fusion):
    out, _ = _net(norm=norm, attention=attention, fusion=fusion)(jnp.full((1, 16, 16, 3), 0.3))
    assert out.shape == (1, 16, 16, 3) and bool(jnp.all(jnp.isfinite(out)))


def test_unknown_options_rejected():
    with pytest.raises(ValueError, match="unknown norm"):
        _net(norm="batch")
    with pytest.raises(ValueError, match="unknown attention"):
        _net(attention="self")
    with pytest.raises(ValueError, match="unknown fusion"):
        _net(fusion="max")


def test_channel_gate_matches_hand_computation():
    gate = random_module(lambda: ChannelGate(4, reduction=2, rngs=nnx.Rngs(0)))
    x = np.random.default_rng(2).standard_normal((2, 5, 5, 4)).astype(np.float32)
    mlp = lambda d: d @ gate.fc1.kernel[...] + gate.fc1.bias[...]
    mlp2 = lambda d: jnp.maximum(mlp(d), 0) @ gate.fc2.kernel[...] + gate.fc2.bias[...]
    expect = jax.nn.sigmoid(mlp2(x.mean((1, 2))) + mlp2(x.max((1, 2))))[:, None, None, :]
    np.testing.assert_allclose(gate.gate(x), expect, rtol=1e-5, atol=1e-6)


def test_spatial_gate_is_per_pixel_and_sees_mean_and_max():
    gate = random_module(lambda: SpatialGate(kernel=3, rngs=nnx.Rngs(0)))
    x = np.random.default_rng(3).standard_normal((1, 6, 6, 5)).astype(np.float32)
    g = gate.gate(x)
    assert g.shape == (1, 6, 6, 1)
    # Permuting channels leaves mean and max unchanged, so the gate too.
    np.testing.assert_allclose(gate.gate(x[..., ::-1]), g, rtol=1e-6)


@pytest.mark.parametrize("gate", ["channel", "spatial"])
def test_bfloat16_gate_gradients_follow_float32(gate):
    """A gate's parameter gradients under bfloat16 are within 1% (L2) of float32's on the same bf16-exact input.
    With the product and the sigmoid in bfloat16 they were 2-4% (channel) and 5-7% (spatial) off."""
    x = np.random.default_rng(1).standard_normal((8, 64, 64, 16)).astype(jnp.bfloat16).astype(np.float32)
    w = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    def grads(dtype):
        net = Attention(16, kind=gate, reduction=4, dtype=dtype, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(net, nnx.Param)
        loss = lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x.astype(dtype)).astype(jnp.float32) * w)
        return jax.jit(jax.grad(loss))(params, x)  # x an argument: as a constant XLA folds the argmax for seconds
    for ref, ours in zip(jax.tree.leaves(grads(jnp.float32)), jax.tree.leaves(grads(jnp.bfloat16))):
        assert ours.dtype == jnp.float32
        assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 0.01


def test_peak_is_the_max_and_its_gradient_goes_to_one_element():
    x = np.random.default_rng(4).standard_normal((2, 5, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(peak(x, (2, 1)), x.max((1, 2), keepdims=True))
    np.testing.assert_array_equal(peak(x, (-1,)), x.max(-1, keepdims=True))
    weights = np.random.default_rng(5).standard_normal((2, 1, 1, 3)).astype(np.float32)
    ours = jax.grad(lambda v: jnp.sum(peak(v, (2, 1)) * weights))(x)
    np.testing.assert_array_equal(ours, jax.grad(lambda v: jnp.sum(jnp.max(v, (1, 2), keepdims=True) * weights))(x))
    tied = jax.grad(lambda v: jnp.sum(peak(v, (-1,))))(np.zeros((1, 2, 2, 4), np.float32))
    np.testing.assert_array_equal(tied.sum(-1), 1.0)  # all to one of the tied elements
    assert (tied == 1).sum() == 4


def test_attention_gradients_are_finite_when_llvm_does_not_optimise():
    """With jnp.max in the gates, this gave NaN in 8 of the block's 12 parameter gradients (its gradient looks for
    the maximum again by equality and divides by the matches: 0/0 when XLA's recomputed input differs)."""
    code = """if True:
        import jax, jax.numpy as jnp, numpy as np
        from flax import nnx
        from maginet_jax.models import attention, layers
        block = layers.ResidualBlock(16, 16, attention=attention.Attention(16, rngs=nnx.Rngs(1)), rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(block)
        x = jax.random.normal(jax.random.key(2), (2, 8, 8, 16))
        grads = jax.jit(jax.grad(lambda p: jnp.mean(jnp.square(nnx.merge(graphdef, p)(x)))))(params)
        print(sum(not np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads)))"""
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["0"]


def test_adaptive_fusion_weights_are_a_per_pixel_softmax():
    fuse = random_module(lambda: AdaptiveFusion(4, 3, rngs=nnx.Rngs(0)))
    xs = [np.random.default_rng(i).standard_normal((2, 3, 3, 4)).astype(np.float32) for i in range(3)]
    w = fuse.weights(xs)
    assert w.shape == (2, 3, 3, 3)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    assert float(jnp.std(w)) > 0  # input-dependent, not uniform
    expect = sum(w[..., j:j + 1] * xs[j] for j in range(3))
    np.testing.assert_allclose(fuse(xs), expect, rtol=1e-6)


def test_build_from_config(smoke_config):
    net = nnx.eval_shape(lambda: build_albedo_net(smoke_config.model, rngs=nnx.Rngs(0)))
    assert net.widths == tuple(smoke_config.model.widths)
    smoke_config.model.dtype = "bfloat16"
    out, _ = jit_apply(random_module(lambda: build_albedo_net(smoke_config.model, rngs=nnx.Rngs(0))),
                       jnp.zeros((1, 16, 16, 3)))
    assert out.dtype == jnp.float32  # heads cast back: losses stay in float32


def test_unet_baseline_matches_albedonet_size_and_interface():
    """The ablation's premise: about AlbedoNet's parameter count, same call signature, no side outputs."""
    from configs import albedo, unet_baseline
    from maginet_jax.models.unet import UNet

    count = lambda c: sum(x.size for x in jax.tree.leaves(
        nnx.state(nnx.eval_shape(lambda: build_albedo_net(c.model, rngs=nnx.Rngs(0))), nnx.Param)))
    for variant in ("", "demo"):
        ours, unet = albedo.get_config(variant), unet_baseline.get_config(variant)
        assert abs(count(unet) / count(ours) - 1) < 0.02, variant
    net = random_module(lambda: build_albedo_net(unet_baseline.get_config("smoke").model, rngs=nnx.Rngs(0)))
    assert isinstance(net, UNet)
    out, sides = jit_apply(net, jnp.full((2, 32, 32, 3), 0.5))
    assert out.shape == (2, 32, 32, 3) and sides == [] and float(out.min()) >= 0 and float(out.max()) <= 1
    with pytest.raises(ValueError, match="divisible by 4"):
        net(jnp.zeros((1, 30, 32, 3)))


@pytest.mark.parametrize("ours, flax_layer, kw",
                         [(Conv, nnx.Conv, {}), (ConvTranspose, nnx.ConvTranspose, {"strides": 2})])
def test_conv_is_flax_conv_in_float32(ours, flax_layer, kw):
    """Same parameters (paths, values, random draws) and bit-identical outputs: checkpoints and imports carry over."""
    make = lambda cls: cls(4, 5, (3, 3), bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(3), **kw)
    a, b = nnx.state(make(ours), nnx.Param), nnx.state(make(flax_layer), nnx.Param)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype(np.float32)
    np.testing.assert_array_equal(jit_apply(make(ours), x), jit_apply(make(flax_layer), x))
    assert ours(4, 5, (1, 1), use_bias=False, rngs=nnx.Rngs(0)).bias is None


@pytest.mark.parametrize("layer", [Conv, ConvTranspose])
def test_bfloat16_bias_gradient_is_summed_in_float32(layer):
    """The bias gradient of a bf16 layer over 8×64×64 pixels is the float32 sum of its bf16 cotangents. flax's own
    layer sums in bf16, which on XLA:CPU stops growing near 2048-4096 (one more term rounds away)."""
    net = layer(4, 3, (1, 1), dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(net, nnx.Param)
    x = np.random.default_rng(1).standard_normal((8, 64, 64, 4)).astype(np.float32)
    loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(x).astype(jnp.float32) * 1.3)
    grad = jax.jit(jax.grad(loss))(params)["bias"][...]
    assert net(x).dtype == jnp.bfloat16 and grad.dtype == jnp.float32
    cotangent = float(jnp.asarray(1.3, jnp.bfloat16))  # the bf16 output's cotangent
    np.testing.assert_allclose(grad, np.full(3, 8 * 64 * 64 * cotangent), rtol=1e-6)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-2)])
def test_subpixel_conv_transpose_is_the_transposed_conv(dtype, tol):
    """pix2pixHD's upsampling computed through sub-pixel phases: the same parameters as the transposed conv (same
    draws, so checkpoints and torch imports carry over), its output size (2H × 2W, odd sides too) and its outputs and
    gradients (input, kernel, bias) on a non-square input with an asymmetric kernel and a bias."""
    init = nnx.initializers.normal(0.5)
    ref = ConvTranspose(5, 7, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)), transpose_kernel=True,
                        kernel_init=init, bias_init=init, dtype=dtype, rngs=nnx.Rngs(2))
    ours = SubpixelConvTranspose(5, 7, kernel_init=init, dtype=dtype, rngs=nnx.Rngs(2))
    ours.bias[...] = ref.bias[...]  # bias_init is the transposed conv's; only the bias draw differs
    np.testing.assert_array_equal(ours.kernel[...], ref.kernel[...])
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 5, 8, 5)), jnp.float32)

    def loss_and_grads(layer):
        graphdef, params = nnx.split(layer, nnx.Param)
        loss = lambda p, x: jnp.sum(jnp.sin(nnx.merge(graphdef, p)(x).astype(jnp.float32)))
        return nnx.merge(graphdef, params)(x), jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)

    (y_ref, (gp_ref, gx_ref)), (y, (gp, gx)) = loss_and_grads(ref), loss_and_grads(ours)
    assert y.shape == (2, 10, 16, 7) and y.dtype == y_ref.dtype == dtype
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                                    rtol=tol, atol=tol * float(jnp.abs(b.astype(jnp.float32)).max()))
    close(y, y_ref)
    close(gx, gx_ref)
    for name in ("kernel", "bias"):
        close(gp[name][...], gp_ref[name][...])


@pytest.mark.parametrize("groups", [1, 4, 12])  # one group, several, one per channel ("instance")
def test_group_norm_is_flax_group_norm(groups):
    """Same parameter paths, and flax's outputs and input gradients to float32 rounding, on activations with a
    large common offset (where E[x²] − E[x]² loses digits) and a learned scale and bias."""
    rng = np.random.default_rng(0)
    ours = GroupNorm(12, groups, rngs=nnx.Rngs(0))
    theirs = nnx.GroupNorm(12, num_groups=groups, rngs=nnx.Rngs(0))
    assert jax.tree.structure(nnx.state(ours, nnx.Param)) == jax.tree.structure(nnx.state(theirs, nnx.Param))
    scale, bias = rng.uniform(0.5, 2, 12).astype(np.float32), rng.standard_normal(12).astype(np.float32)
    for net in (ours, theirs):
        net.scale.set_value(jnp.asarray(scale))
        net.bias.set_value(jnp.asarray(bias))
    x = (3 + rng.standard_normal((2, 9, 7, 12)) * rng.uniform(0.1, 2, 12)).astype(np.float32)
    w = rng.standard_normal(x.shape).astype(np.float32)
    value_and_grad = lambda net: jax.jit(jax.value_and_grad(lambda x: jnp.sum(net(x) * w)))(x)
    (a, da), (b, db) = value_and_grad(ours), value_and_grad(theirs)
    np.testing.assert_allclose(jit_apply(ours, x), jit_apply(theirs, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_allclose(da, db, atol=1e-4 * float(np.abs(db).max()))
    with pytest.raises(ValueError, match="do not split into 5 groups"):
        GroupNorm(12, 5, rngs=nnx.Rngs(0))


def test_group_norm_bfloat16_keeps_float32_parameters():
    net = GroupNorm(8, 2, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = np.random.default_rng(2).standard_normal((2, 4, 4, 8)).astype(np.float32)
    y = net(jnp.asarray(x, jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and net.scale[...].dtype == jnp.float32
    ref = nnx.GroupNorm(8, num_groups=2, rngs=nnx.Rngs(0))(x)
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, atol=0.05)


@pytest.mark.parametrize("shape,size", [((2, 4, 6, 3), (8, 12)), ((1, 3, 5, 2), (9, 15)), ((2, 1, 2, 3), (32, 64)),
                                        ((1, 8, 8, 4), (256, 128)), ((2, 8, 8, 3), (12, 20))])
def test_resize_is_jax_bilinear_resize(shape, size):
    """Whole-factor upsampling (our own blends) and any other size (jax.image.resize itself): values and gradients
    equal jax.image.resize's, edges included."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
    weight = jnp.asarray(np.random.default_rng(1).standard_normal((shape[0], *size, shape[3])), jnp.float32)
    ours, ref = (jax.jit(f) for f in (lambda x: resize_to(x, *size),
                                      lambda x: jax.image.resize(x, (shape[0], *size, shape[3]), "bilinear")))
    np.testing.assert_allclose(ours(x), ref(x), atol=1e-6)
    grads = [jax.grad(lambda x, f=f: jnp.sum(f(x) * weight))(x) for f in (ours, ref)]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-5)
    assert resize_to(x.astype(jnp.bfloat16), *size).dtype == jnp.bfloat16
