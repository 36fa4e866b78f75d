"""pix2pixHD in JAX (maginet_jax.models.pix2pixhd): parity with an independent PyTorch re-creation, weight import.

The reference is benchmarks/torch_twin/pix2pixhd.py: NVIDIA pix2pixHD's ResnetBlock, GlobalGenerator, LocalEnhancer,
NLayerDiscriminator and MultiscaleDiscriminator rebuilt in plain torch.nn with the original attribute names, so
its `state_dict()` has the key names of real pix2pixHD checkpoints. Each test gives the torch module random
weights, imports its state dict into the JAX module with `import_torch_state_dict` and runs both on the same
input (NCHW ↔ NHWC). The tolerance, 1e-4 absolute on activations of order one, is what float32 arithmetic
allows; it is not tuned. Sizes are odd wherever the architecture permits, because that is where padding
conventions (reflect padding, the pyramid's count_include_pad=False average pool, pad-2 4×4 convs) differ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from ml_collections import ConfigDict

from benchmarks.torch_twin import pix2pixhd as ref
from conftest import jit_apply, random_module
from maginet_jax.errors import UserError
from maginet_jax.models import pix2pixhd as p

pytestmark = pytest.mark.usefixtures("highest_precision")
torch.set_num_threads(2)

ATOL = 1e-4


# --------------------------------------------------------------------------------------------- helpers


def nhwc(x: torch.Tensor) -> jax.Array:
    return jnp.asarray(x.detach().numpy().transpose(0, 2, 3, 1))


def nchw(y) -> np.ndarray:
    return np.asarray(y).transpose(0, 3, 1, 2)


def numpy_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def make_input(shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def build_pair(torch_module: torch.nn.Module, jax_cls, *args, seed: int = 0, jax_seed: int = 0, **kwargs):
    """The torch module with random weights, and the JAX module of the same configuration holding them."""
    ref.randomize_(torch_module, seed).eval()
    # Built abstractly, as the import tool does: every weight comes from torch (and eager NNX initialisation
    # compiles each initializer op for each new shape, seconds per module).
    jax_module = nnx.eval_shape(lambda: jax_cls(*args, **kwargs, rngs=nnx.Rngs(jax_seed)))
    p.import_torch_state_dict(jax_module, numpy_state(torch_module))
    return torch_module, jax_module


def torch_forward(module: torch.nn.Module, x: torch.Tensor):
    with torch.no_grad():
        return module(x)


def assert_close(got, want: torch.Tensor, what: str) -> float:
    """`got` (JAX, NHWC) equals `want` (torch, NCHW) in shape and, to ATOL, in value; returns the max |diff|."""
    got = nchw(got)
    want = want.detach().numpy()
    assert got.shape == want.shape, f"{what}: JAX shape {got.shape} != torch shape {want.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite JAX output"
    diff = float(np.max(np.abs(got - want)))
    print(f"{what}: max |diff| {diff:.3g} (torch max |y| {float(np.max(np.abs(want))):.3g})")
    assert diff <= ATOL, f"{what}: max |diff| {diff:.3g} > {ATOL}"
    return diff


def param_count(module: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def state_count(state: dict) -> int:
    return sum(int(np.prod(v.shape)) for v in state.values())


def conv_out(n: int, stride: int) -> int:
    """Output size of pix2pixHD's 4×4, padding-2 discriminator conv: n → n//2 + 1 (stride 2), n + 1 (stride 1)."""
    return (n + 2 * 2 - 4) // stride + 1


def pool_out(n: int) -> int:
    """Output size of the 3×3/2, padding-1 average pool between pyramid levels."""
    return (n + 2 - 3) // 2 + 1


# --------------------------------------------------------------------------------------------- the reference


def test_reference_has_checkpoint_key_names():
    """The torch re-creation names its parameters the way pix2pixHD checkpoints do (and has no buffers)."""
    g = ref.GlobalGenerator(3, 3, ngf=4, n_downsampling=2, n_blocks=2)
    expected = ["model.1", "model.4", "model.7", "model.10.conv_block.1", "model.10.conv_block.5",
                "model.11.conv_block.1", "model.11.conv_block.5", "model.12", "model.15", "model.19"]
    assert list(g.state_dict()) == [f"{k}.{n}" for k in expected for n in ("weight", "bias")]
    assert isinstance(g.model[12], torch.nn.ConvTranspose2d) and isinstance(g.model[20], torch.nn.Tanh)

    le = ref.LocalEnhancer(3, 3, ngf=4, n_downsample_global=2, n_blocks_global=1, n_local_enhancers=2,
                           n_blocks_local=2)
    keys = {k.rsplit(".", 1)[0] for k in le.state_dict()}
    assert keys == {"model.1", "model.4", "model.7", "model.10.conv_block.1", "model.10.conv_block.5", "model.11",
                    "model.14",  # the trunk stops before the global generator's head (pad 17, conv 18, tanh 19)
                    "model1_1.1", "model1_1.4", "model1_2.0.conv_block.1", "model1_2.0.conv_block.5",
                    "model1_2.1.conv_block.1", "model1_2.1.conv_block.5", "model1_2.2",
                    "model2_1.1", "model2_1.4", "model2_2.0.conv_block.1", "model2_2.0.conv_block.5",
                    "model2_2.1.conv_block.1", "model2_2.1.conv_block.5", "model2_2.2", "model2_2.6"}
    assert len(le.model) == 17

    d = ref.NLayerDiscriminator(3, ndf=8, n_layers=3, use_sigmoid=True)
    assert [k for k in d.state_dict() if k.endswith("weight")] == [
        "model.0.weight", "model.2.weight", "model.5.weight", "model.8.weight", "model.11.weight"]
    assert isinstance(d.model[12], torch.nn.Sigmoid)
    d = ref.NLayerDiscriminator(3, ndf=8, n_layers=3, use_sigmoid=True, getIntermFeat=True)
    assert [k for k in d.state_dict() if k.endswith("weight")] == [f"model{n}.0.weight" for n in range(5)]
    assert isinstance(d.model5[0], torch.nn.Sigmoid)

    md = ref.MultiscaleDiscriminator(3, ndf=8, n_layers=2, num_D=2)
    assert [k for k in md.state_dict() if k.endswith("weight")] == [
        f"layer{i}.{j}.weight" for i in range(2) for j in (0, 2, 5, 8)]
    md = ref.MultiscaleDiscriminator(3, ndf=8, n_layers=2, num_D=2, getIntermFeat=True)
    assert [k for k in md.state_dict() if k.endswith("weight")] == [
        f"scale{i}_layer{j}.0.weight" for i in range(2) for j in range(4)]
    assert md.scale1_layer2[0].weight.shape == (32, 16, 4, 4)

    for m in (g, le, d, md):
        assert not list(m.buffers()), "instance norm must carry no running statistics"


# --------------------------------------------------------------------------------------------- building blocks


def test_avg_pool_pyramid_level_matches_torch():
    """The pyramid's 3×3/2 average pool divides by the real texels of each window, on every side."""
    x = make_input((2, 3, 45, 37), seed=1)
    pool = torch.nn.AvgPool2d(3, stride=2, padding=[1, 1], count_include_pad=False)
    want = torch_forward(pool, x)
    assert want.shape[2:] == (23, 19)
    assert_close(p.avg_pool_3s2(nhwc(x)), want, "avg_pool 45x37")
    # The test can tell the two conventions apart at this size (the right/bottom window overhangs).
    with_pad = torch_forward(torch.nn.AvgPool2d(3, stride=2, padding=[1, 1], count_include_pad=True), x)
    assert float(torch.max(torch.abs(with_pad - want))) > 100 * ATOL


def test_resnet_block_parity():
    tm = ref.ResnetBlock(8)
    assert list(tm.state_dict()) == ["conv_block.1.weight", "conv_block.1.bias",
                                     "conv_block.5.weight", "conv_block.5.bias"]
    tm, jm = build_pair(tm, p.ResnetBlock, 8, seed=3)
    x = make_input((2, 8, 13, 11), seed=4)
    assert_close(jit_apply(jm, nhwc(x)), torch_forward(tm, x), "ResnetBlock 13x11")


# --------------------------------------------------------------------------------------------- generators


@pytest.mark.parametrize("n_downsampling,n_blocks,size", [
    (2, 2, (32, 32)),
    (2, 2, (36, 44)),
    (2, 1, (37, 29)),  # odd: strided convs round up, transposed convs double, so the output is 40×32
    (3, 1, (24, 40)),
])
def test_global_generator_parity(n_downsampling, n_blocks, size):
    tm, jm = build_pair(ref.GlobalGenerator(3, 2, ngf=4, n_downsampling=n_downsampling, n_blocks=n_blocks),
                        p.GlobalGenerator, 3, 2, ngf=4, n_downsampling=n_downsampling, n_blocks=n_blocks, seed=5)
    x = make_input((2, 3, *size), seed=6)
    want = torch_forward(tm, x)
    assert_close(jit_apply(jm, nhwc(x)), want, f"GlobalGenerator nd={n_downsampling} nb={n_blocks} {size}")
    assert float(want.abs().max()) < 1.0 and float(want.std()) > 0.1  # a live tanh output, not saturated


# 47×31 is odd (so the first pyramid level's pool overhangs the bottom/right border) and the only kind of odd
# size the LocalEnhancer accepts: its global trunk must return exactly the size of the local branch's strided
# conv, i.e. ceil(47/2)=24 and ceil(31/2)=16 (and, with two enhancers, 12 and 8) divisible by 2**2.
@pytest.mark.parametrize("n_local_enhancers", [1, 2])
def test_local_enhancer_parity(n_local_enhancers):
    cfg = dict(ngf=4, n_downsample_global=2, n_blocks_global=1, n_local_enhancers=n_local_enhancers,
               n_blocks_local=2)
    tm, jm = build_pair(ref.LocalEnhancer(3, 2, **cfg), p.LocalEnhancer, 3, 2, **cfg, seed=7)
    x = make_input((2, 3, 47, 31), seed=8)
    want = torch_forward(tm, x)
    assert want.shape == (2, 2, 48, 32)
    assert_close(jit_apply(jm, nhwc(x)), want, f"LocalEnhancer N={n_local_enhancers} 47x31")
    assert float(want.std()) > 0.1


@pytest.mark.parametrize("net,resize_method", [("global", "nearest"), ("global", "bilinear"), ("local", "bilinear")])
def test_resize_upsampling_parity(net, resize_method):
    """upsample="resize" against the twin's [Upsample, ReflectionPad2d, Conv2d] levels, at odd sizes."""
    up = dict(upsample="resize", resize_method=resize_method)
    if net == "global":
        cfg = dict(ngf=4, n_downsampling=2, n_blocks=1)
        tm, jm = build_pair(ref.GlobalGenerator(3, 2, **cfg, **up), p.GlobalGenerator, 3, 2, **cfg, **up, seed=9)
        x = make_input((2, 3, 37, 29), seed=10)
    else:
        cfg = dict(ngf=4, n_downsample_global=2, n_blocks_global=1, n_local_enhancers=1, n_blocks_local=1)
        tm, jm = build_pair(ref.LocalEnhancer(3, 2, **cfg, **up), p.LocalEnhancer, 3, 2, **cfg, **up, seed=9)
        x = make_input((2, 3, 47, 31), seed=10)
    want = torch_forward(tm, x)
    assert_close(jit_apply(jm, nhwc(x)), want, f"{net} resize/{resize_method}")
    assert float(want.std()) > 0.1


@pytest.mark.parametrize("netG,size", [("global", (37, 29)), ("global", (64, 48)), ("local", (47, 31)),
                                       ("local", (64, 64))])
def test_resize_keeps_every_output_size_of_transpose(netG, size):
    model = ConfigDict(dict(netG=netG, ngf=4, n_downsample_global=2, n_blocks_global=1, n_local_enhancers=1,
                            n_blocks_local=1, dtype="float32"))
    shapes = {}
    for upsample in p.UPSAMPLES:
        model.upsample = upsample
        forward = lambda x: p.build_generator(model, 3, 9, rngs=nnx.Rngs(0))(x)  # noqa: E731
        shapes[upsample] = jax.eval_shape(forward, jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)).shape
    assert shapes["resize"] == shapes["transpose"], shapes
    assert shapes["transpose"][-1] == 9


# --------------------------------------------------------------------------------------------- discriminators


@pytest.mark.parametrize("getIntermFeat", [False, True])
@pytest.mark.parametrize("use_sigmoid", [False, True])
@pytest.mark.parametrize("n_layers", [2, 3])
def test_nlayer_discriminator_parity(n_layers, use_sigmoid, getIntermFeat):
    cfg = dict(ndf=8, n_layers=n_layers, use_sigmoid=use_sigmoid, getIntermFeat=getIntermFeat)
    tm, jm = build_pair(ref.NLayerDiscriminator(3, **cfg), p.NLayerDiscriminator, 3, **cfg, seed=9)
    x = make_input((2, 3, 37, 45), seed=10)
    want, got = torch_forward(tm, x), jit_apply(jm, nhwc(x))
    h, w = 37, 45
    sizes = []
    for stride in [2] * n_layers + [1, 1]:
        h, w = conv_out(h, stride), conv_out(w, stride)
        sizes.append((h, w))
    widths = [min(8 * 2 ** i, 512) for i in range(n_layers + 1)] + [1]
    if getIntermFeat:
        assert isinstance(got, list) and len(got) == len(want) == n_layers + 2
        for j, (g, t) in enumerate(zip(got, want)):
            assert tuple(t.shape) == (2, widths[j], *sizes[j])
            assert_close(g, t, f"NLayerD nl={n_layers} sig={use_sigmoid} interm layer {j}")
        if use_sigmoid:  # the original's quirk: the Sigmoid group is built but never run
            assert float(want[-1].min()) < 0.0 or float(want[-1].max()) > 1.0
    else:
        assert isinstance(got, jax.Array)
        assert tuple(want.shape) == (2, 1, *sizes[-1])
        assert_close(got, want, f"NLayerD nl={n_layers} sig={use_sigmoid}")
        if use_sigmoid:
            assert 0.0 < float(want.min()) and float(want.max()) < 1.0


@pytest.mark.parametrize("num_D,getIntermFeat,use_sigmoid", [
    (2, False, False),
    (3, False, False),
    (2, True, False),
    (3, True, False),
    (2, False, True),
    (3, True, True),
])
def test_multiscale_discriminator_parity(num_D, getIntermFeat, use_sigmoid):
    n_layers, ndf = 3, 4
    cfg = dict(ndf=ndf, n_layers=n_layers, use_sigmoid=use_sigmoid, num_D=num_D, getIntermFeat=getIntermFeat)
    tm, jm = build_pair(ref.MultiscaleDiscriminator(3, **cfg), p.MultiscaleDiscriminator, 3, **cfg, seed=11)
    x = make_input((2, 3, 67, 53), seed=12)
    want, got = torch_forward(tm, x), jit_apply(jm, nhwc(x))

    per_scale = n_layers + 2 if getIntermFeat else 1
    assert isinstance(got, list) and len(got) == len(want) == num_D
    widths = [min(ndf * 2 ** i, 512) for i in range(n_layers + 1)] + [1]
    h, w = 67, 53
    for s in range(num_D):  # full resolution first, then one pool per scale
        assert isinstance(got[s], list) and len(got[s]) == len(want[s]) == per_scale
        sizes, hh, ww = [], h, w
        for stride in [2] * n_layers + [1, 1]:
            hh, ww = conv_out(hh, stride), conv_out(ww, stride)
            sizes.append((hh, ww))
        for j in range(per_scale):
            layer = j if getIntermFeat else n_layers + 1
            assert tuple(want[s][j].shape) == (2, widths[layer], *sizes[layer])
            assert_close(got[s][j], want[s][j], f"MultiscaleD num_D={num_D} interm={getIntermFeat} "
                                                f"sig={use_sigmoid} scale {s} ({h}x{w}) layer {layer}")
        h, w = pool_out(h), pool_out(w)

    # The full-resolution input went to the last-built discriminator (and the next level to the one before).
    if not getIntermFeat:
        for s, built in ((0, num_D - 1), (1, num_D - 2)):
            level = x if s == 0 else torch_forward(tm.downsample, x)
            alone = torch_forward(getattr(tm, f"layer{built}"), level)
            assert_close(got[s][0], alone, f"scale {s} is layer{built}")


# --------------------------------------------------------------------------------------------- weight import


def small_generator_state(**overrides) -> dict[str, np.ndarray]:
    cfg = dict(ngf=4, n_downsampling=2, n_blocks=2) | overrides
    return numpy_state(ref.randomize_(ref.GlobalGenerator(3, 2, **cfg), 13))


def jax_generator(seed: int = 0) -> p.GlobalGenerator:
    return random_module(lambda: p.GlobalGenerator(3, 2, ngf=4, n_downsampling=2, n_blocks=2, rngs=nnx.Rngs(0)), seed)


def _drop(state, key):
    del state[key]


@pytest.mark.parametrize("mutate,match,key", [
    (lambda s: _drop(s, "model.11.conv_block.5.weight"), "missing", "model.11.conv_block.5.weight"),
    (lambda s: s.__setitem__("model.99.weight", np.zeros((2, 2, 3, 3), np.float32)), "unexpected", "model.99.weight"),
    (lambda s: s.__setitem__("model.4.weight", np.zeros((8, 4, 5, 5), np.float32)), "shape", "model.4.weight"),
], ids=["missing_key", "unexpected_key", "wrong_shape"])
def test_import_reports_each_problem(mutate, match, key):
    state = small_generator_state()
    mutate(state)
    with pytest.raises(UserError, match=match) as err:
        p.import_torch_state_dict(jax_generator(), state)
    assert key in str(err.value)


def test_import_reports_all_problems_at_once_and_changes_nothing():
    jm = jax_generator()
    x = nhwc(make_input((1, 3, 32, 32), seed=14))
    before = np.asarray(jit_apply(jm, x))
    state = small_generator_state()
    del state["model.1.bias"]
    state["model.7.weight"] = state["model.7.weight"][:, :4]  # wrong in-channels
    state["model.12.bias"] = np.zeros((5,), np.float32)  # transposed conv bias of the wrong width
    state["model.20.weight"] = np.zeros((1,), np.float32)
    state["model.11.conv_block.2.running_mean"] = np.zeros((16,), np.float32)  # instance norm keeps no stats
    with pytest.raises(UserError) as err:
        p.import_torch_state_dict(jm, state)
    msg = str(err.value)
    for word in ("missing", "unexpected", "shape", "model.1.bias", "model.7.weight", "model.12.bias",
                 "model.20.weight", "model.11.conv_block.2.running_mean"):
        assert word in msg, f"{word!r} not in: {msg}"
    np.testing.assert_array_equal(np.asarray(jit_apply(jm, x)), before)


def test_import_rejects_checkpoint_of_another_configuration():
    with pytest.raises(UserError, match="shape"):  # twice the width everywhere
        p.import_torch_state_dict(jax_generator(), small_generator_state(ngf=8))
    with pytest.raises(UserError, match="missing"):  # one ResNet block fewer
        p.import_torch_state_dict(jax_generator(), small_generator_state(n_blocks=1))
    with pytest.raises(UserError, match="unexpected"):  # one more
        p.import_torch_state_dict(jax_generator(), small_generator_state(n_blocks=3))
    flat = numpy_state(ref.NLayerDiscriminator(3, ndf=4, n_layers=2))
    with pytest.raises(UserError):  # flat `model.N` keys into a getIntermFeat discriminator (`modelN.0`)
        p.import_torch_state_dict(nnx.eval_shape(lambda: p.NLayerDiscriminator(3, ndf=4, n_layers=2,
                                                                               getIntermFeat=True, rngs=nnx.Rngs(0))),
                                  flat)


@pytest.mark.parametrize("name", ["ResnetBlock", "GlobalGenerator", "LocalEnhancer", "NLayerDiscriminator",
                                  "NLayerDiscriminator-interm", "MultiscaleDiscriminator",
                                  "MultiscaleDiscriminator-interm"])
def test_import_sets_every_parameter(name):
    """Every JAX parameter comes from the dict: as many numbers as the dict holds, and the JAX init is gone
    (two differently seeded modules agree exactly after importing the same torch tensors)."""
    builders = {
        "ResnetBlock": (lambda: ref.ResnetBlock(8), lambda r: p.ResnetBlock(8, rngs=r), (1, 8, 9, 11)),
        "GlobalGenerator": (lambda: ref.GlobalGenerator(3, 2, ngf=4, n_downsampling=2, n_blocks=2),
                            lambda r: p.GlobalGenerator(3, 2, ngf=4, n_downsampling=2, n_blocks=2, rngs=r),
                            (1, 3, 32, 32)),
        "LocalEnhancer": (lambda: ref.LocalEnhancer(3, 2, 4, 2, 1, 2, 1),
                          lambda r: p.LocalEnhancer(3, 2, 4, 2, 1, 2, 1, rngs=r), (1, 3, 47, 31)),
        "NLayerDiscriminator": (lambda: ref.NLayerDiscriminator(3, 4, 3, use_sigmoid=True),
                                lambda r: p.NLayerDiscriminator(3, 4, 3, use_sigmoid=True, rngs=r), (1, 3, 33, 35)),
        "NLayerDiscriminator-interm": (lambda: ref.NLayerDiscriminator(3, 4, 3, getIntermFeat=True),
                                       lambda r: p.NLayerDiscriminator(3, 4, 3, getIntermFeat=True, rngs=r),
                                       (1, 3, 33, 35)),
        "MultiscaleDiscriminator": (lambda: ref.MultiscaleDiscriminator(3, 4, 2, num_D=3),
                                    lambda r: p.MultiscaleDiscriminator(3, 4, 2, num_D=3, rngs=r), (1, 3, 41, 39)),
        "MultiscaleDiscriminator-interm": (
            lambda: ref.MultiscaleDiscriminator(3, 4, 2, num_D=2, getIntermFeat=True),
            lambda r: p.MultiscaleDiscriminator(3, 4, 2, num_D=2, getIntermFeat=True, rngs=r), (1, 3, 41, 39)),
    }
    make_torch, make_jax, shape = builders[name]
    tm = ref.randomize_(make_torch(), 15).eval()
    state = tm.state_dict()  # torch tensors this time (the other tests pass numpy arrays)
    a, b = (random_module(lambda: make_jax(nnx.Rngs(0)), seed) for seed in (0, 1))
    assert param_count(a) == state_count(state), "the JAX module has parameters a pix2pixHD checkpoint lacks"
    x = nhwc(make_input(shape, seed=16))
    fresh_a, fresh_b = jax.tree.leaves(jit_apply(a, x)), jax.tree.leaves(jit_apply(b, x))
    assert any(not np.array_equal(u, v) for u, v in zip(fresh_a, fresh_b)), "seeds should differ before import"
    p.import_torch_state_dict(a, state)
    p.import_torch_state_dict(b, state)
    for u, v in zip(jax.tree.leaves(jit_apply(a, x)), jax.tree.leaves(jit_apply(b, x)), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    want = jax.tree.leaves(torch_forward(tm, make_input(shape, seed=16)))
    for u, t in zip(jax.tree.leaves(jit_apply(a, x)), want, strict=True):
        assert_close(u, t, f"{name} from torch tensors")
