"""Procedural "UV face textures" with all six intrinsic passes, and `SyntheticSource`, the dataset of them.

Each sample is a square UV-space face texture: a jittered superellipse mask,
a skin-tone albedo with lips, brows, eye sockets, cheeks, freckles and pores,
a height map (head curvature, nose, brow ridge, wrinkles, pores) turned into
normals, and ambient-occlusion / specular / translucency maps derived from the
same layout.  The lit image and raw_diffuse come from ``shading.shade`` on the
exact stored arrays, so re-rendering the stored passes is bit-exact.

All features are placed in [0, 1]^2 UV coordinates and every noise grid has a
resolution-independent cell count, so the random draws (and therefore the
content) do not depend on the output resolution.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np

from data_pipeline import shading

SPLIT_IDS = {"train": 0, "test": 1}

# Pale -> dark skin anchors (sRGB-ish reflectance); a sample interpolates along them.
_SKIN_ANCHORS = np.array(
    [[0.88, 0.71, 0.61], [0.79, 0.58, 0.46], [0.63, 0.42, 0.30], [0.42, 0.26, 0.17], [0.24, 0.14, 0.09]]
)
_MAX_ALBEDO = 0.9  # with shading.MAX_IRRADIANCE keeps raw_diffuse < 1 without clipping


@functools.lru_cache(maxsize=64)
def _interp_matrix(res: int, cells: int) -> np.ndarray:
    """(res, cells+1) smoothstep-interpolation weights from a noise grid to pixels."""
    x = (np.arange(res) + 0.5) / res * cells
    i0 = np.floor(x).astype(np.int64)
    f = x - i0
    f = f * f * (3.0 - 2.0 * f)  # smoothstep hides the grid lines of plain bilinear
    w = np.zeros((res, cells + 1), np.float32)
    rows = np.arange(res)
    w[rows, i0] = 1.0 - f
    w[rows, i0 + 1] += f
    w.setflags(write=False)
    return w


@functools.lru_cache(maxsize=16)
def _blur_matrix(res: int, sigma: float) -> np.ndarray:
    """(res, res) row-normalised Gaussian blur; sigma in UV units."""
    c = (np.arange(res) + 0.5) / res
    w = np.exp(-0.5 * ((c[:, None] - c[None, :]) / sigma) ** 2)
    w = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
    w.setflags(write=False)
    return w


def _noise(rng: np.random.Generator, res: int, cells_y: int, cells_x: int | None = None) -> np.ndarray:
    """Separable value noise in [0, 1]: Wy @ G @ Wx.T for a random (cy+1, cx+1) grid."""
    cells_x = cells_y if cells_x is None else cells_x
    grid = rng.random((cells_y + 1, cells_x + 1), dtype=np.float32)
    return _interp_matrix(res, cells_y) @ grid @ _interp_matrix(res, cells_x).T


def _fbm(rng: np.random.Generator, res: int, cells: int, octaves: int, gain: float = 0.5) -> np.ndarray:
    """Multi-octave value noise normalised back to [0, 1]."""
    total = np.zeros((res, res), np.float32)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        total += np.float32(amp) * _noise(rng, res, cells * 2**o)
        norm += amp
        amp *= gain
    return total / np.float32(norm)


def _g(x: np.ndarray, centre: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - np.float32(centre)) / np.float32(sigma)) ** 2)


def _blob(c: np.ndarray, cu: float, cv: float, su: float, sv: float) -> np.ndarray:
    """Axis-aligned Gaussian as an outer product (cheap: no full-frame exp)."""
    return np.outer(_g(c, cv, sv), _g(c, cu, su))


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _layout(rng: np.random.Generator, c: np.ndarray) -> dict:
    """Jittered facial feature maps (all in [0, 1], shape (res, res))."""
    cx, cy = 0.5 + rng.uniform(-0.02, 0.02, 2)
    sx, sy = rng.uniform(0.92, 1.06, 2)
    eye_dx, eye_v = 0.17 * sx, cy - 0.08 * sy
    brow_v = eye_v - rng.uniform(0.06, 0.085) * sy
    nose_v = cy + rng.uniform(0.08, 0.11) * sy
    mouth_v = cy + rng.uniform(0.2, 0.24) * sy
    mouth_w = rng.uniform(0.06, 0.085) * sx
    arch = rng.uniform(0.5, 2.0)
    U, V = c[None, :], c[:, None]
    f = {"cx": cx, "cy": cy, "sx": sx, "sy": sy, "U": U, "V": V}
    f["sockets"] = sum(_blob(c, cx + s * eye_dx, eye_v, 0.065 * sx, 0.04 * sy) for s in (-1, 1))
    f["eyes"] = sum(_blob(c, cx + s * eye_dx, eye_v, 0.04 * sx, 0.008 * sy) for s in (-1, 1))
    f["brow_ridge"] = sum(_blob(c, cx + s * eye_dx, brow_v, 0.08 * sx, 0.025) for s in (-1, 1))
    brows = 0.0
    for s in (-1, 1):
        du = (U - np.float32(cx + s * eye_dx)) / np.float32(0.075 * sx)
        # Arched band: centre line rises toward the brow middle, flat-topped along u.
        dv = V - (np.float32(brow_v) + np.float32(0.012 * arch) * du * du)
        brows = brows + np.exp(-0.5 * (dv / np.float32(0.015)) ** 2 - du**4)
    f["brows"] = brows
    f["nose"] = np.outer(_smoothstep(c, cy - 0.12 * sy, nose_v - 0.02) * _g(c, nose_v, 0.05), _g(c, cx, 0.022 * sx))
    f["nose"] += 0.8 * _blob(c, cx, nose_v - 0.005, 0.03 * sx, 0.02)
    f["nostrils"] = sum(_blob(c, cx + s * 0.032 * sx, nose_v + 0.018, 0.011, 0.007) for s in (-1, 1))
    f["lips"] = _blob(c, cx, mouth_v - 0.012, mouth_w, 0.011) + _blob(c, cx, mouth_v + 0.014, 0.9 * mouth_w, 0.014)
    f["mouth"] = _blob(c, cx, mouth_v, 1.05 * mouth_w, 0.0035)
    f["corners"] = sum(_blob(c, cx + s * 1.5 * mouth_w, mouth_v, 0.012, 0.01) for s in (-1, 1))
    f["cheeks"] = sum(_blob(c, cx + s * 0.2 * sx, cy + 0.09, 0.07, 0.06) for s in (-1, 1))
    f["forehead"] = _blob(c, cx, cy - 0.27 * sy, 0.17 * sx, 0.07)
    # Nasolabial folds: grooves from the nose wings slanting out to the mouth corners.
    t = _smoothstep(V, nose_v, nose_v + 0.03) * (1.0 - _smoothstep(V, mouth_v, mouth_v + 0.03))
    # Bowed outward (quadratic in v) and ending just beyond the mouth corners.
    span = np.float32(mouth_v + 0.02 - nose_v)
    tv = np.clip((V - np.float32(nose_v)) / span, 0.0, 1.0)
    offset = 0.065 * sx + (1.7 * mouth_w - 0.065 * sx) * tv + 0.025 * tv * (1.0 - tv)
    fold = 0.0
    for s in (-1, 1):
        fold = fold + _g(U - (np.float32(cx) + np.float32(s) * offset), 0.0, 0.01) * t
    f["folds"] = fold
    return f


def _mask(rng: np.random.Generator, f: dict) -> tuple[np.ndarray, np.ndarray]:
    """Jittered superellipse face region; also returns its level value (1 at the rim)."""
    a, b = rng.uniform(0.41, 0.47), rng.uniform(0.43, 0.48)
    p = rng.uniform(2.0, 3.2)
    amps, phases = rng.uniform(0.0, 0.03, 3), rng.uniform(0.0, 2 * np.pi, 3)
    du, dv = (f["U"] - np.float32(f["cx"])) / np.float32(a), (f["V"] - np.float32(f["cy"])) / np.float32(b)
    level = (np.abs(du) ** np.float32(p) + np.abs(dv) ** np.float32(p)) ** np.float32(1.0 / p)
    theta = np.arctan2(dv, du)
    rim = 1.0 + sum(np.float32(amps[m]) * np.cos((m + 2) * theta + np.float32(phases[m])) for m in range(3))
    level = level / rim
    return (level <= 1.0).astype(np.float32), level


def _albedo(rng: np.random.Generator, f: dict, c: np.ndarray) -> np.ndarray:
    res = c.shape[0]
    t = rng.random() * (len(_SKIN_ANCHORS) - 1)
    i = min(int(t), len(_SKIN_ANCHORS) - 2)
    tone = (1 - (t - i)) * _SKIN_ANCHORS[i] + (t - i) * _SKIN_ANCHORS[i + 1]
    tone = (tone * rng.uniform(0.94, 1.06, 3)).astype(np.float32)  # undertone jitter
    lum = _fbm(rng, res, 3, 3) - 0.5
    red = _fbm(rng, res, 4, 2)
    redness = np.clip(0.6 * f["cheeks"] + 0.5 * (red - 0.35), 0.0, 1.0)
    lip_tint = np.array([0.08, 0.42, 0.35], np.float32) * np.float32(rng.uniform(0.6, 1.1))
    # Brow hairs: streaky anisotropic noise (long along u) mixed toward a dark hair colour.
    hair = (tone * rng.uniform(0.12, 0.35) * np.array([1.0, 0.85, 0.7])).astype(np.float32)
    streaks = _noise(rng, res, 64, 10)
    alpha = np.clip(f["brows"] * (0.4 + 0.8 * streaks) * np.float32(rng.uniform(0.6, 1.0)), 0, 1)
    alpha = np.maximum(alpha, 0.8 * f["eyes"])  # lash line
    # Freckles / blotches: a sum of separable Gaussians is one (res,N)@(N,res) product.
    n_spots = int(rng.integers(0, 10)) + (int(rng.integers(20, 120)) if rng.random() < 0.4 else 0)
    su, sv = rng.uniform(0.15, 0.85, (2, n_spots))
    sigma = rng.uniform(0.003, 0.012, n_spots)
    amp = rng.uniform(0.2, 0.8, n_spots)
    gy = np.exp(-0.5 * ((c[:, None] - sv) / sigma) ** 2).astype(np.float32)
    gx = np.exp(-0.5 * ((c[:, None] - su) / sigma) ** 2).astype(np.float32)
    spots = np.clip((gy * amp.astype(np.float32)) @ gx.T, 0, 1)
    pores = _noise(rng, res, 96) - 0.5
    redness_tint, spot_tint = np.array([0.0, 0.2, 0.15], np.float32), np.array([0.2, 0.32, 0.42], np.float32)
    lips, sockets, pore_scale = np.clip(f["lips"], 0, 1), 1.0 - 0.15 * f["sockets"], 1.0 + 0.12 * pores
    # One colour channel at a time: NumPy broadcasts slowly over a trailing axis of 3, and a channel's arithmetic
    # is the same either way (the same operations in the same order, so the same bits).
    channels = []
    for k in range(3):
        alb = tone[k] * (1.0 + 0.35 * lum)
        alb *= 1.0 - redness * redness_tint[k]
        alb *= sockets
        alb *= 1.0 - lips * lip_tint[k]
        alb = alb * (1 - alpha) + hair[k] * alpha
        alb *= 1.0 - spots * spot_tint[k]
        alb *= pore_scale
        channels.append(alb)
    return np.clip(np.stack(channels, axis=-1), 0.0, _MAX_ALBEDO)


def _height(rng: np.random.Generator, f: dict, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (full height, detail height without the head curvature); UV units."""
    U, V = f["U"], f["V"]
    curv_u, curv_v = rng.uniform(1.2, 1.8), rng.uniform(0.4, 0.9)
    dome = -(np.float32(curv_u) * (U - np.float32(f["cx"])) ** 2 + np.float32(curv_v) * (V - np.float32(f["cy"])) ** 2)
    d = np.float32(rng.uniform(0.02, 0.035)) * f["nose"]
    d += 0.012 * f["brow_ridge"] - 0.02 * f["sockets"] + 0.012 * f["cheeks"]
    d += 0.007 * f["lips"] - 0.004 * f["mouth"] - 0.0015 * f["folds"] * np.float32(rng.uniform(0.2, 1.0))
    d += 0.015 * (_fbm(rng, res, 4, 2) - 0.5)
    # Forehead wrinkles: horizontal sinusoids with a noisy phase so lines wander.
    freq, age = rng.uniform(35.0, 55.0), rng.uniform(0.0, 1.0)
    wobble = _noise(rng, res, 3, 6)
    lines = np.sin(np.float32(2 * np.pi * freq) * V + np.float32(4.0) * wobble)
    d += np.float32(0.0009 * age) * f["forehead"] * lines
    d += 0.0007 * (_noise(rng, res, 96) - 0.5)
    return dome + d, d


def generate(seed: int, index: int, resolution: int, split: str = "train") -> dict[str, np.ndarray]:
    """Generate one deterministic sample of all passes, the lit image, mask and lights.

    Deterministic in (seed, split, index, resolution); the random draws do not
    depend on resolution.  Returns float32 HWC arrays in [0, 1] ("image",
    "albedo", "ambient_occlusion", "normal" (encoded), "specular",
    "translucency", "raw_diffuse", "mask") and the flat "lights" vector.
    """
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; valid splits: {sorted(SPLIT_IDS)}")
    if resolution < 16:
        raise ValueError(f"resolution must be >= 16, got {resolution}")
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    res = int(resolution)
    c = ((np.arange(res) + 0.5) / res).astype(np.float32)
    f = _layout(rng, c)
    mask, level = _mask(rng, f)
    albedo = _albedo(rng, f, c)
    height, detail = _height(rng, f, res)

    dh_dv, dh_du = np.gradient(height, np.float32(1.0 / res))
    # Texture frame has y up while rows run down, hence +dh/dv for n_y.
    inv_len = 1.0 / np.sqrt(dh_du * dh_du + dh_dv * dh_dv + 1.0)
    n = np.stack([-dh_du * inv_len, dh_dv * inv_len, inv_len], axis=-1)

    blur = _blur_matrix(res, 0.025)
    cavity = np.clip(blur @ detail @ blur.T - detail, 0.0, None)
    ao = 1.0 - 30.0 * cavity - 0.25 * f["eyes"] - 0.12 * f["sockets"] - 0.45 * f["nostrils"]
    ao = ao - 0.45 * f["mouth"] - 0.3 * f["corners"] - 0.08 * f["folds"]
    ao = ao - 0.15 * _smoothstep(level, 0.75, 1.0)  # jaw/ear rims are occluded by the head

    spec_level = rng.uniform(0.15, 0.45)
    tzone = 0.6 + 0.7 * f["forehead"] + 0.9 * np.clip(f["nose"], 0, 1)
    spec = np.float32(spec_level) * tzone * (1 - 0.8 * np.clip(f["brows"], 0, 1)) * (1 - 0.5 * np.clip(f["lips"], 0, 1))
    spec *= 0.7 + 0.6 * _fbm(rng, res, 8, 3)

    # Thin tissue (nose, lips, ear-like side rims) lets more light through.
    side = _smoothstep(np.abs(f["U"] - np.float32(f["cx"])), 0.25, 0.42)
    ears = _smoothstep(level, 0.8, 1.0) * side
    trans = np.float32(rng.uniform(0.15, 0.3)) + 0.35 * np.clip(f["nose"], 0, 1) + 0.35 * np.clip(f["lips"], 0, 1)
    trans = trans + 0.45 * ears + 0.2 * (_fbm(rng, res, 3, 2) - 0.5)

    lights = shading.lights_from_array(shading.lights_to_array(shading.sample_lights(rng)))

    m = mask[..., None]
    # Zero invalid texels before shading, so the shaded output is already 0 there.
    passes = {
        "albedo": albedo * m,
        "ambient_occlusion": np.clip(ao, 0.0, 1.0)[..., None] * m,
        "normal": shading.encode_normal(n) * m,
        "specular": np.clip(spec, 0.0, 1.0)[..., None] * m,
        "translucency": np.clip(trans, 0.0, 1.0)[..., None] * m,
    }
    passes = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in passes.items()}
    # The unused light slots (the last ones) have colour 0, so each of their terms adds exactly +0: shading only the
    # lit ones gives the same bits and saves a light's work per unused slot (shading is a third of the generator).
    lit = int(np.count_nonzero(np.any(lights.colors != 0, axis=-1)))
    shaded = shading.shade(passes, dataclasses.replace(lights, directions=lights.directions[:lit],
                                                       colors=lights.colors[:lit]))
    out = dict(passes)
    out["raw_diffuse"] = shaded["raw_diffuse"]  # 0 outside the mask already, as every pass is
    out["image"] = shaded["image"]
    out["mask"] = mask[..., None]
    out["lights"] = shading.lights_to_array(lights)
    return out


SPLITS = tuple(SPLIT_IDS)


def quantize(x: np.ndarray, dtype=np.uint8) -> np.ndarray:
    """Float in [0,1] → rounded integer code of `dtype` (uint8 like 8-bit PNGs, uint16 for normals)."""
    top = np.iinfo(dtype).max
    return np.round(np.clip(x, 0.0, 1.0) * top).astype(dtype)


class SyntheticSource:
    """The embedded synthetic intrinsic-face dataset, generated on access, deterministic in (seed, split, index).

    `passes` selects which of `shading.PASS_NAMES` each record carries besides "image" and "mask"; normals are
    coded in 16 bits (a 1-bit error in 8-bit normals is already a 0.5° tilt).
    """

    def __init__(self, *, num_records: int, resolution: int, split: str = "train", seed: int = 0,
                 passes: Sequence[str] = ("albedo",)):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        unknown = sorted(set(passes) - set(shading.PASS_NAMES))
        if unknown:
            raise ValueError(f"unknown passes {unknown}; expected names from {shading.PASS_NAMES}")
        if num_records < 1:
            raise ValueError(f"num_records must be positive, got {num_records}")
        self._n, self._res, self._split, self._seed = int(num_records), int(resolution), split, int(seed)
        self._keys = ("image", "mask", *passes)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self._n:
            raise IndexError(f"record {index} out of range for {self._n} records")
        sample = generate(self._seed, int(index), self._res, self._split)
        return {k: quantize(sample[k], np.uint16 if k == "normal" else np.uint8) for k in self._keys}

    def __repr__(self) -> str:
        return (f"SyntheticSource(split={self._split!r}, num_records={self._n}, resolution={self._res}, "
                f"seed={self._seed}, keys={self._keys})")
