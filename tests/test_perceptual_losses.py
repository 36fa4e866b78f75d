"""VGG perceptual and patch-LPIPS losses, their wiring into the objective, and the LPIPS CLI."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from conftest import REPO
from data_pipeline import synthetic
from maginet_jax.errors import UserError
from maginet_jax.perceptual import losses as pl
from maginet_jax.stages import supervised
from maginet_jax.training import sharding


@pytest.fixture(scope="module")
def faces():
    samples = [synthetic.generate(0, i, 64) for i in range(2)]
    stack = lambda k: jnp.asarray(np.stack([s[k] for s in samples]))
    return {k: stack(k) for k in ("image", "albedo", "mask", "ambient_occlusion", "normal")}


@pytest.fixture(scope="module")
def vgg():
    return pl.VGGPerceptualLoss()


@pytest.fixture(scope="module")
def patch_lpips():
    return pl.PatchLPIPSLoss("alex", num_patches=3, patch_size=32)


def test_vgg_loss_zero_for_identical_positive_otherwise(vgg, faces):
    a, x = faces["albedo"], faces["image"]
    assert float(vgg(a, a)) == 0.0
    assert float(vgg(x, a)) > 0.1
    ao = faces["ambient_occlusion"]  # 1-channel pass, repeated to RGB
    assert float(vgg(ao, ao)) == 0.0 and float(vgg(ao * 0.5, ao)) > 0.0
    assert float(vgg(faces["normal"][..., ::-1], faces["normal"])) > 0.0  # normals, as encoded in [0,1]


def test_vgg_loss_ignores_texels_outside_the_mask(vgg, faces):
    a, m = faces["albedo"], faces["mask"]
    noisy_outside = jnp.where(m > 0, a, jax.random.uniform(jax.random.PRNGKey(0), a.shape))
    assert float(vgg(noisy_outside, a, m)) == 0.0
    assert float(vgg(noisy_outside, a)) > 0.0


def test_vgg_layer_weights_are_pix2pixhd(vgg):
    assert vgg.layer_weights == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


def test_patch_corners_lie_inside_the_mask_and_are_reproducible():
    mask = jnp.zeros((3, 64, 64, 1)).at[0, 30:50, 10:20].set(1.0).at[1].set(1.0)  # image 2: empty mask
    key = jax.random.PRNGKey(7)
    corners = pl.sample_patch_corners(key, mask, 50, 16)
    assert corners.shape == (3, 50, 2)
    centres = corners + 8
    assert bool(jnp.all(mask[0, centres[0, :, 0], centres[0, :, 1], 0] == 1.0))
    assert bool(jnp.all((corners >= 0) & (corners <= 64 - 16)))  # every patch fits
    np.testing.assert_array_equal(pl.sample_patch_corners(key, mask, 50, 16), corners)
    assert not np.array_equal(pl.sample_patch_corners(jax.random.PRNGKey(8), mask, 50, 16), corners)
    assert len(np.unique(np.asarray(corners[2]), axis=0)) > 10  # empty mask: spread over the image


def test_patch_corners_are_uniform_over_the_allowed_texels():
    """Every allowed centre is drawn, no other, each about equally often (4,000 draws over 4 texels: each count
    within 5 standard deviations of 1,000)."""
    mask = jnp.zeros((1, 32, 32, 1)).at[0, (8, 8, 20, 23), (9, 22, 9, 16)].set(1.0)
    corners = np.asarray(pl.sample_patch_corners(jax.random.PRNGKey(0), mask, 4000, 8))[0] + 4
    centres, counts = np.unique(corners, axis=0, return_counts=True)
    assert centres.tolist() == [[8, 9], [8, 22], [20, 9], [23, 16]]
    assert np.all(np.abs(counts - 1000) < 5 * np.sqrt(4000 * 0.25 * 0.75)), counts


def test_extract_patches():
    x = jnp.arange(2 * 8 * 8, dtype=jnp.float32).reshape(2, 8, 8, 1)
    corners = jnp.array([[[0, 0], [2, 3]], [[4, 4], [1, 0]]])
    p = pl.extract_patches(x, corners, 4)
    assert p.shape == (4, 4, 4, 1)
    np.testing.assert_array_equal(p[1], x[0, 2:6, 3:7])
    np.testing.assert_array_equal(p[2], x[1, 4:8, 4:8])


def test_patch_lpips_zero_positive_and_deterministic(patch_lpips, faces):
    a, x, m = faces["albedo"], faces["image"], faces["mask"]
    key = jax.random.PRNGKey(3)
    assert float(patch_lpips(a, a, m, key)) == 0.0
    d = float(patch_lpips(x, a, m, key))
    assert d > 0.01
    assert float(patch_lpips(x, a, m, key)) == d
    assert float(patch_lpips(x, a, m, jax.random.PRNGKey(4))) != d


def _config(**weights):
    from configs import albedo
    c = albedo.get_config("smoke")
    for k in c.losses:
        c.losses[k] = weights.get(k, 0.0)
    return c


def _perceptual(c):
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
    return supervised.frozen_nets(c, mesh)["perceptual"]


def test_gradients_reach_the_prediction_not_the_frozen_networks(faces):
    c = _config(mse=1.0, vgg=1.0, lpips=1.0)
    perceptual = _perceptual(c)
    batch = {"albedo": faces["albedo"], "mask": faces["mask"]}

    def loss(perceptual, pred):
        terms = supervised.loss_terms(pred, [], batch, perceptual, jax.random.PRNGKey(0), config=c)
        return sum(terms.values())

    g_frozen, g_pred = jax.jit(jax.grad(loss, argnums=(0, 1)))(perceptual, faces["image"])
    assert float(jnp.abs(g_pred).max()) > 0.0
    assert float(jnp.abs(g_pred * (1 - faces["mask"])).max()) == 0.0  # nothing outside the mask
    leaves = jax.tree.leaves(g_frozen)
    assert leaves and all(float(jnp.abs(g).max()) == 0.0 for g in leaves)
    for pair in perceptual.values():  # no optimizer can see them
        assert not jax.tree.leaves(nnx.state(nnx.merge(*pair), nnx.Param))


def test_zero_weight_builds_no_network():
    assert _perceptual(_config(mse=1.0)) == {}
    assert set(_perceptual(_config(lpips=1.0))) == {"lpips"}


def test_vgg19_without_weights_file_is_a_clear_error():
    with pytest.raises(UserError, match="needs perceptual.vgg19_weights"):
        pl.VGGPerceptualLoss("vgg19")
    with pytest.raises(UserError, match="does not exist"):
        pl.VGGPerceptualLoss("vgg19", "/nonexistent/vgg19.pth")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "maginet_jax.tools.lpips", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_lpips_cli(tmp_path, faces, capsys):
    from maginet_jax.perceptual.lpips import LPIPS
    a = np.round(np.asarray(faces["image"][0]) * 255).astype(np.uint8)
    b = np.round(np.asarray(faces["albedo"][0]) * 255).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    Image.fromarray(b[:40]).save(tmp_path / "small.png")
    (tmp_path / "text.png").write_text("not an image")
    r = _cli(str(tmp_path / "a.png"), str(tmp_path / "b.png"))
    assert r.returncode == 0, r.stderr
    expect = float(LPIPS("alex")(np.float32(a[None] / 127.5 - 1.0), np.float32(b[None] / 127.5 - 1.0))[0])
    assert abs(float(r.stdout.strip().splitlines()[-1]) - expect) < 1e-6
    for args, message in [((tmp_path / "a.png", tmp_path / "small.png"), "images differ in size"),
                          ((tmp_path / "a.png", tmp_path / "text.png"), "not a readable image"),
                          ((tmp_path / "a.png", tmp_path / "none.png"), "no such file")]:
        r = _cli(*map(str, args))
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert message in r.stderr.strip().splitlines()[-1]
    # a bad flag: one line, as the other CLIs (argparse printed its usage first)
    from maginet_jax.tools import lpips as lpips_tool
    with pytest.raises(SystemExit) as e:
        lpips_tool.main([str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--net", "squeeze"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("maginet_jax.tools.lpips: error: argument --net: invalid choice: 'squeeze' "
                                       "(choose from 'alex', 'vgg') (see --help)\n")


def test_bfloat16_loss_networks(faces):
    """perceptual.precision=bfloat16: the convolutions are bfloat16, the loss and its gradient a bfloat16 rounding
    away from float32's."""
    a, x, m = faces["albedo"], faces["image"] * 0.8, faces["mask"]
    nets = {p: pl.VGGPerceptualLoss(precision=p) for p in ("highest", "bfloat16")}
    hlo = jax.jit(lambda a, x: nets["bfloat16"](x, a, m)).lower(a, x).as_text()
    convs = [line for line in hlo.splitlines() if "convolution" in line and "=" in line]
    assert convs and all("bf16" in line for line in convs)
    (full, g_full), (half, g_half) = (jax.value_and_grad(lambda x, n=n: n(x, a, m))(x) for n in nets.values())
    assert 0 < abs(float(half) / float(full) - 1) < 2e-2
    cosine = float(jnp.sum(g_full * g_half) / jnp.linalg.norm(g_full) / jnp.linalg.norm(g_half))
    # 0.95 here (jax 0.10.2, CPU): |f − t|'s gradient is a sign, which bfloat16's rounding flips where f ≈ t
    assert 0.9 < cosine < 1 - 1e-4 and g_half.dtype == jnp.float32
    lpips = {p: pl.PatchLPIPSLoss("alex", num_patches=2, patch_size=32, precision=p) for p in nets}
    d = [float(n(x, a, m, jax.random.PRNGKey(0))) for n in lpips.values()]
    assert 0 < abs(d[1] / d[0] - 1) < 2e-2
