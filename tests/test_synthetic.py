"""Tests for the shading model and the procedural UV-face generator."""

import numpy as np
import pytest

from data_pipeline import shading, synthetic

PASS_KEYS = ("albedo", "ambient_occlusion", "normal", "specular", "translucency", "raw_diffuse")
IMAGE_KEYS = PASS_KEYS + ("image", "mask")


def _stored_passes(sample):
    return {k: sample[k] for k in ("albedo", "ambient_occlusion", "normal", "specular", "translucency")}


def _masked_mse(a, b, mask):
    m = mask[..., 0] > 0
    return float(np.mean((a[m] - b[m]) ** 2))


def test_deterministic_and_sensitive_to_every_key():
    a = synthetic.generate(3, 5, 32)
    b = synthetic.generate(3, 5, 32)
    for k in IMAGE_KEYS + ("lights",):
        assert np.array_equal(a[k], b[k]), k
    for other in (
        synthetic.generate(3, 6, 32),
        synthetic.generate(3, 5, 32, split="test"),
        synthetic.generate(4, 5, 32),
    ):
        assert not np.array_equal(a["albedo"], other["albedo"])
        assert not np.array_equal(a["image"], other["image"])
        assert not np.array_equal(a["lights"], other["lights"])


def test_random_draws_do_not_depend_on_resolution():
    lo, hi = synthetic.generate(1, 2, 32), synthetic.generate(1, 2, 64)
    assert np.array_equal(lo["lights"], hi["lights"])
    assert abs(lo["mask"].mean() - hi["mask"].mean()) < 0.05
    # Same content: the 64^2 albedo block-averaged to 32^2 is close to the 32^2 one.
    down = hi["albedo"].reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
    inner = (lo["mask"][..., 0] > 0) & (hi["mask"][..., 0].reshape(32, 2, 32, 2).min(axis=(1, 3)) > 0)
    assert np.mean(np.abs(down[inner] - lo["albedo"][inner])) < 0.03


@pytest.mark.parametrize("res", [32, 48])
def test_shapes_dtypes_ranges(res):
    s = synthetic.generate(0, 1, res)
    for k in IMAGE_KEYS:
        assert s[k].dtype == np.float32, k
        assert s[k].shape == (res, res, shading.PASS_CHANNELS.get(k, 3 if k == "image" else 1)), k
        assert s[k].min() >= 0.0 and s[k].max() <= 1.0, k
    assert s["lights"].shape == (shading.LIGHTS_SIZE,) and s["lights"].dtype == np.float32
    assert set(np.unique(s["mask"]).tolist()) == {0.0, 1.0}
    assert 0.5 < s["mask"].mean() < 0.9
    outside = s["mask"][..., 0] == 0
    for k in PASS_KEYS + ("image",):
        assert np.all(s[k][outside] == 0), k
    inside = ~outside
    # Inside the face the passes carry signal, not just zeros.
    assert s["albedo"][inside].min() > 0.0
    assert s["image"][inside].mean() > 0.02


def test_normals_unit_and_facing_out():
    s = synthetic.generate(2, 0, 48)
    inside = s["mask"][..., 0] > 0
    n = shading.decode_normal(s["normal"])[inside]
    assert np.allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-4)
    assert n[:, 2].min() > 0.0
    assert n[:, 2].mean() > 0.6
    # Head curvature in the x-right / y-up frame: left half tilts left, right
    # half right, forehead (top rows) up and chin (bottom rows) down.
    rows, cols = np.nonzero(inside)
    assert n[cols < 16, 0].mean() < -0.3 and n[cols >= 32, 0].mean() > 0.3
    assert n[rows < 12, 1].mean() > 0.15 and n[rows >= 36, 1].mean() < -0.15


def test_encode_decode_normal_round_trip():
    v = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    e = shading.encode_normal(v)
    assert e.min() >= 0.0 and e.max() <= 1.0
    assert np.allclose(shading.decode_normal(e), v, atol=1e-6)
    # 8-bit quantised encodings are no longer unit length; decoding renormalises.
    q = shading.decode_normal(np.round(e * 255) / 255)
    assert np.allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("index", [0, 1, 2])  # 2, 1 and 3 lights: the generator shades only the lit ones
def test_rerender_from_stored_passes_is_bit_exact(index):
    s = synthetic.generate(5, index, 32)
    lights = shading.lights_from_array(s["lights"])
    assert np.count_nonzero(np.any(lights.colors != 0, axis=-1)) == {0: 2, 1: 1, 2: 3}[index]
    out = shading.shade(_stored_passes(s), lights)
    assert np.array_equal(shading.render(_stored_passes(s), lights), s["image"])
    assert np.array_equal(out["raw_diffuse"], s["raw_diffuse"])


def test_lights_round_trip_and_sampling_contract():
    rng = np.random.default_rng(11)
    counts = set()
    for _ in range(60):
        lights = shading.sample_lights(rng)
        arr = shading.lights_to_array(lights)
        assert arr.shape == (shading.LIGHTS_SIZE,) and arr.dtype == np.float32
        back = shading.lights_from_array(arr)
        for field in ("ambient", "directions", "colors", "shininess", "scatter"):
            assert np.array_equal(np.asarray(getattr(back, field)), np.asarray(getattr(lights, field))), field
        assert np.array_equal(shading.lights_to_array(back), arr)
        active = lights.colors.max(axis=-1) > 0
        counts.add(int(active.sum()))
        assert np.allclose(np.linalg.norm(lights.directions, axis=-1), 1.0, atol=1e-5)
        assert np.all(lights.directions[active, 2] > 0.2)
        assert lights.colors.min() >= 0 and lights.ambient.min() > 0
        assert (lights.ambient + lights.colors.sum(0)).max() <= shading.MAX_IRRADIANCE + 1e-5
    assert counts == {1, 2, 3}
    batch = shading.lights_from_array(np.zeros((4, shading.LIGHTS_SIZE), np.float32))
    assert batch.directions.shape == (4, shading.MAX_LIGHTS, 3) and batch.shininess.shape == (4,)


def test_shade_matches_documented_equations_on_one_pixel():
    px = lambda *v: np.array(v, np.float32).reshape(1, 1, -1)  # noqa: E731
    passes = {
        "albedo": px(0.5, 0.4, 0.3),
        "ambient_occlusion": px(0.8),
        "normal": shading.encode_normal(px(0.0, 0.0, 1.0)),
        "specular": px(0.25),
        "translucency": px(0.5),
    }
    # Two active lights with different directions, so per-light indexing bugs show.
    d = np.array([[0.6, 0.0, 0.8], [0, 0, 1], [0, 0, 1]], np.float32)  # n.l = 0.8 and 1
    c = np.array([[0.5, 0.5, 0.5], [0.2, 0.1, 0.3], [0, 0, 0]], np.float32)
    lights = shading.Lights(
        ambient=np.full(3, 0.1, np.float32), directions=d, colors=c,
        shininess=np.float32(4.0), scatter=np.array([0.2, 0.1, 0.05], np.float32),
    )
    out = {k: v.reshape(3) for k, v in shading.shade(passes, lights).items()}
    alb, c1, c2 = np.array([0.5, 0.4, 0.3]), c[0], c[1]
    h1 = np.array([0.6, 0.0, 1.8]) / np.linalg.norm([0.6, 0.0, 1.8])
    assert np.allclose(out["raw_diffuse"], alb * 0.8 * (0.1 + c1 * 0.8 + c2 * 1.0), atol=1e-6)
    wrapped = c1 * (0.8 + 0.5) / 1.5 + c2 * 1.0
    assert np.allclose(out["subsurface"], 0.5 * np.array([0.2, 0.1, 0.05]) * alb * wrapped, atol=1e-6)
    assert np.allclose(out["specular"], 0.25 * (c1 * h1[2] ** 4 + c2 * 1.0), atol=1e-6)
    total = out["raw_diffuse"] + out["subsurface"] + out["specular"]
    assert np.allclose(out["image"], np.clip(total, 0, 1), atol=1e-6)


def test_shade_under_jit_matches_numpy_including_batch():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    samples = [synthetic.generate(9, i, 32) for i in range(2)]

    @jax.jit
    def jit_shade(passes, flat_lights):
        return shading.shade(passes, shading.lights_from_array(flat_lights))

    refs = [shading.shade(_stored_passes(s), shading.lights_from_array(s["lights"])) for s in samples]
    for s, ref in zip(samples, refs):
        got = jit_shade({k: jnp.asarray(v) for k, v in _stored_passes(s).items()}, jnp.asarray(s["lights"]))
        for k in ref:
            assert np.max(np.abs(np.asarray(got[k]) - ref[k])) < 1e-5, k
    # Per-image lights on a batch must light each image with its own vector.
    batch = {k: jnp.stack([jnp.asarray(s[k]) for s in samples]) for k in _stored_passes(samples[0])}
    got = jit_shade(batch, jnp.stack([jnp.asarray(s["lights"]) for s in samples]))
    for i, ref in enumerate(refs):
        assert np.max(np.abs(np.asarray(got["image"][i]) - ref["image"])) < 1e-5


def test_image_is_not_trivially_the_albedo():
    mses = []
    for i in range(8):
        s = synthetic.generate(0, i, 32)
        mses.append(_masked_mse(s["image"], s["albedo"], s["mask"]))
        # Shading is spatially varying: image/albedo is not one constant colour.
        inside = s["mask"][..., 0] > 0
        ratio = s["image"][inside] / np.maximum(s["albedo"][inside], 1e-3)
        assert ratio.std(axis=0).max() > 0.05
    assert min(mses) > 5e-4
    assert np.mean(mses) > 5e-3
    assert max(mses) > 2 * min(mses)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="train"):
        synthetic.generate(0, 0, 32, split="validation")
    with pytest.raises(ValueError):
        synthetic.generate(0, 0, 8)


def _albedo_broadcast(rng, f, c):
    """The albedo as the generator computed it before it went channel by channel: every step on (H, W, 3)."""
    res, anchors = c.shape[0], synthetic._SKIN_ANCHORS
    t = rng.random() * (len(anchors) - 1)
    i = min(int(t), len(anchors) - 2)
    tone = (((1 - (t - i)) * anchors[i] + (t - i) * anchors[i + 1]) * rng.uniform(0.94, 1.06, 3)).astype(np.float32)
    lum, red = synthetic._fbm(rng, res, 3, 3) - 0.5, synthetic._fbm(rng, res, 4, 2)
    alb = tone * (1.0 + 0.35 * lum)[..., None]
    redness = np.clip(0.6 * f["cheeks"] + 0.5 * (red - 0.35), 0.0, 1.0)
    alb *= 1.0 - redness[..., None] * np.array([0.0, 0.2, 0.15], np.float32)
    alb *= (1.0 - 0.15 * f["sockets"])[..., None]
    alb *= 1.0 - np.clip(f["lips"], 0, 1)[..., None] * (np.array([0.08, 0.42, 0.35], np.float32)
                                                         * np.float32(rng.uniform(0.6, 1.1)))
    hair = (tone * rng.uniform(0.12, 0.35) * np.array([1.0, 0.85, 0.7])).astype(np.float32)
    streaks = synthetic._noise(rng, res, 64, 10)
    alpha = np.clip(f["brows"] * (0.4 + 0.8 * streaks) * np.float32(rng.uniform(0.6, 1.0)), 0, 1)
    alpha = np.maximum(alpha, 0.8 * f["eyes"])[..., None]
    alb = alb * (1 - alpha) + hair * alpha
    n = int(rng.integers(0, 10)) + (int(rng.integers(20, 120)) if rng.random() < 0.4 else 0)
    su, sv = rng.uniform(0.15, 0.85, (2, n))
    sigma, amp = rng.uniform(0.003, 0.012, n), rng.uniform(0.2, 0.8, n)
    gy = np.exp(-0.5 * ((c[:, None] - sv) / sigma) ** 2).astype(np.float32)
    gx = np.exp(-0.5 * ((c[:, None] - su) / sigma) ** 2).astype(np.float32)
    alb *= 1.0 - np.clip((gy * amp.astype(np.float32)) @ gx.T, 0, 1)[..., None] * np.array([0.2, 0.32, 0.42],
                                                                                            np.float32)
    alb *= (1.0 + 0.12 * (synthetic._noise(rng, res, 96) - 0.5))[..., None]
    return np.clip(alb, 0.0, synthetic._MAX_ALBEDO)


@pytest.mark.parametrize("seed", range(6))
def test_albedo_channel_by_channel_is_the_broadcast_form_bit_for_bit(seed):
    # The data set's identity: every figure recorded on the synthetic data was made with the broadcast form.
    c = ((np.arange(48) + 0.5) / 48).astype(np.float32)
    f = synthetic._layout(np.random.default_rng(100 + seed), c)
    ours = synthetic._albedo(np.random.default_rng(seed), f, c)
    assert ours.dtype == np.float32 and np.array_equal(ours, _albedo_broadcast(np.random.default_rng(seed), f, c))
