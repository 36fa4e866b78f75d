r"""The single shading model shared by data generation and relighting.

Every image in the synthetic data set is produced by :func:`shade`, and any
later relighting (including inside ``jax.jit``) must call the same function,
so this module docstring is the contract.

Frame: pixel normals and light directions live in the texture frame
``x = +u`` (right), ``y = up`` (against the row index), ``z = out of the
texture``.  The viewer sits at ``v = (0, 0, 1)``.

Passes (HWC, float in [0, 1]; 1-channel passes broadcast over RGB):
``albedo`` (3), ``ambient_occlusion`` (1), ``normal`` (3, *encoded* as
``e = n * 0.5 + 0.5``), ``specular`` (1), ``translucency`` (1).

Lights: ``ambient`` RGB, directional lights with unit direction ``l_k``
(pointing toward the light) and RGB colour ``c_k`` (unused lights have
``c_k = 0``; the data use ``MAX_LIGHTS``, relighting any number), a scalar
``shininess``, an RGB subsurface tint ``scatter`` and an optional
spherical-harmonics environment ``sh`` (9 RGB coefficients of the
*irradiance*, already convolved with the clamped cosine, so
``E_sh(n) = sum_i sh_i Y_i(n)`` with the real basis ``Y_i`` of
:func:`sh_basis`; ``None``, as in the data, is zero).  With
``n = decode_normal(normal)`` and ``h_k = normalize(l_k + v)``::

    E          = ambient + sum_k c_k * max(n.l_k, 0) + max(E_sh(n), 0)
    raw_diffuse = albedo * ao * E
    subsurface = translucency * scatter * albedo
                 * sum_k c_k * clip((n.l_k + w) / (1 + w), 0, 1),   w = 0.5
    specular   = spec * sum_k c_k * max(n.h_k, 0) ** shininess
    image      = clip(raw_diffuse + subsurface + specular, 0, 1)

``raw_diffuse`` is exactly the diffuse term (no clipping), i.e. the
"albedo under the sample's lighting" pass.  Relighting may first edit the
materials with :func:`edit_materials`.  The interactive relighting page's
fragment shader (``maginet_jax/relight_page.html``) implements these same
equations; change both together.

Batching: passes may carry leading batch axes ``(..., H, W, C)``.  Lights are
either unbatched (shared by the whole batch) or carry the same leading batch
axes, e.g. ``lights_from_array`` of a ``(B, LIGHTS_SIZE)`` array.

The code is array-API generic: the namespace comes from the albedo array's
``__array_namespace__()``, so it runs on NumPy arrays in data workers and on
JAX arrays under ``jax.jit`` (pass the flat light vector into the jitted
function and call :func:`lights_from_array` inside it; :class:`Lights` itself
is not a registered pytree, to keep this module free of a JAX import).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

PASS_NAMES = ("albedo", "ambient_occlusion", "normal", "specular", "translucency", "raw_diffuse")
PASS_CHANNELS = {
    "albedo": 3,
    "ambient_occlusion": 1,
    "normal": 3,
    "specular": 1,
    "translucency": 1,
    "raw_diffuse": 3,
}
MAX_LIGHTS = 3
WRAP = 0.5
# ambient(3) + directions(MAX_LIGHTS*3) + colors(MAX_LIGHTS*3) + shininess(1) + scatter(3)
LIGHTS_SIZE = 3 + 6 * MAX_LIGHTS + 1 + 3

# Upper bound on max_channel(ambient + sum_k c_k); with albedo <= 0.9 this keeps
# raw_diffuse <= 0.99 so the stored pass never needs clipping.
MAX_IRRADIANCE = 1.1


@dataclasses.dataclass(frozen=True)
class Lights:
    """Per-image lighting; leading batch axes are allowed on every field.

    ambient (..., 3) RGB; directions (..., MAX_LIGHTS, 3) unit vectors toward
    the lights; colors (..., MAX_LIGHTS, 3) RGB (0 for unused lights);
    shininess (...) Phong-style exponent; scatter (..., 3) subsurface tint;
    sh (..., 9, 3) irradiance SH coefficients or None (no environment).
    """

    ambient: Any
    directions: Any
    colors: Any
    shininess: Any
    scatter: Any
    sh: Any = None


def _tint(rng: np.random.Generator, saturation: float) -> np.ndarray:
    """Random RGB multiplier with mean 1; saturation sets how coloured it is."""
    t = 1.0 + saturation * rng.uniform(-1.0, 1.0, 3)
    return t / t.mean()


def sample_lights(rng: np.random.Generator) -> Lights:
    """Sample 1-3 coloured directional lights from the front hemisphere plus ambient.

    Directions have z in [0.25, 0.95] (always above the required 0.2).  The
    total irradiance ambient + sum_k c_k is rescaled so its largest channel is
    at most MAX_IRRADIANCE, which keeps raw_diffuse below 1 and makes clipping
    of the final image rare (only at strong highlights).
    """
    count = int(rng.integers(1, MAX_LIGHTS + 1))
    directions = np.zeros((MAX_LIGHTS, 3))
    directions[:, 2] = 1.0  # unused slots still hold a valid unit vector
    colors = np.zeros((MAX_LIGHTS, 3))
    key = rng.uniform(0.55, 1.0)
    for k in range(count):
        z = rng.uniform(0.25, 0.95)
        phi = rng.uniform(0.0, 2.0 * np.pi)
        r = np.sqrt(1.0 - z * z)
        directions[k] = (r * np.cos(phi), r * np.sin(phi), z)
        # Occasional strongly coloured lights so colour constancy is required.
        saturation = rng.uniform(0.35, 0.8) if rng.random() < 0.25 else rng.uniform(0.0, 0.3)
        intensity = key if k == 0 else key * rng.uniform(0.2, 0.7)
        colors[k] = intensity * _tint(rng, saturation)
    ambient = rng.uniform(0.05, 0.3) * _tint(rng, rng.uniform(0.0, 0.4))
    total = ambient + colors.sum(axis=0)
    scale = min(1.0, MAX_IRRADIANCE / total.max())
    shininess = rng.uniform(8.0, 64.0)
    # Reddish tint: light scattered under skin loses blue/green first.
    scatter = rng.uniform(0.15, 0.4) * np.array([1.0, rng.uniform(0.25, 0.5), rng.uniform(0.15, 0.35)])
    return Lights(
        ambient=(ambient * scale).astype(np.float32),
        directions=directions.astype(np.float32),
        colors=(colors * scale).astype(np.float32),
        shininess=np.float32(shininess),
        scatter=scatter.astype(np.float32),
    )


def lights_to_array(lights: Lights) -> np.ndarray:
    """Flatten unbatched NumPy lights into a float32 vector of length LIGHTS_SIZE."""
    parts = [
        np.asarray(lights.ambient, np.float32).reshape(3),
        np.asarray(lights.directions, np.float32).reshape(3 * MAX_LIGHTS),
        np.asarray(lights.colors, np.float32).reshape(3 * MAX_LIGHTS),
        np.asarray(lights.shininess, np.float32).reshape(1),
        np.asarray(lights.scatter, np.float32).reshape(3),
    ]
    return np.concatenate(parts)


def lights_from_array(a) -> Lights:
    """Inverse of lights_to_array; accepts (..., LIGHTS_SIZE) NumPy or JAX arrays.

    Only slicing and reshaping are used, so it is traceable under jax.jit.
    """
    if not hasattr(a, "__array_namespace__"):
        a = np.asarray(a, dtype=np.float32)
    xp = a.__array_namespace__()
    batch = tuple(a.shape[:-1])
    d0 = 3
    c0 = d0 + 3 * MAX_LIGHTS
    s0 = c0 + 3 * MAX_LIGHTS
    return Lights(
        ambient=a[..., 0:3],
        directions=xp.reshape(a[..., d0:c0], batch + (MAX_LIGHTS, 3)),
        colors=xp.reshape(a[..., c0:s0], batch + (MAX_LIGHTS, 3)),
        shininess=a[..., s0],
        scatter=a[..., s0 + 1:s0 + 4],
    )


def encode_normal(n):
    """Map unit normals in [-1, 1] to the stored [0, 1] encoding."""
    return n * 0.5 + 0.5


def _dot3(a, b):
    """Dot product over a length-3 last axis, keeping it as size 1.

    Written out elementwise because NumPy reductions over a size-3 axis are
    slow, and a matmul could run in reduced (TF32) precision on GPUs.
    """
    return a[..., 0:1] * b[..., 0:1] + a[..., 1:2] * b[..., 1:2] + a[..., 2:3] * b[..., 2:3]


def _normalize(xp, x, eps=1e-8):
    norm = xp.sqrt(_dot3(x, x))
    # eps guards the all-zero encoded normals outside the face mask.
    return x / xp.maximum(norm, eps)


def decode_normal(e):
    """Map encoded normals back to unit vectors (renormalised after 2e-1)."""
    xp = e.__array_namespace__()
    return _normalize(xp, e * 2.0 - 1.0)


# Real spherical harmonics up to order 2, ordered (l, m) = (0,0), (1,-1), (1,0), (1,1), (2,-2), (2,-1), (2,0),
# (2,1), (2,2), and the clamped-cosine convolution factor of each order (Ramamoorthi & Hanrahan 2001).
_SH_NORM = (0.282095, 0.488603, 0.488603, 0.488603, 1.092548, 1.092548, 0.315392, 1.092548, 0.546274)
_SH_COSINE = (np.pi, 2.0 * np.pi / 3.0, 2.0 * np.pi / 3.0, 2.0 * np.pi / 3.0) + (np.pi / 4.0,) * 5


def sh_basis(n) -> list:
    """The 9 real SH basis functions at unit vectors n (..., 3), each (..., 1), in the texture frame."""
    x, y, z = n[..., 0:1], n[..., 1:2], n[..., 2:3]
    terms = (1.0 + 0.0 * x, y, z, x, x * y, y * z, 3.0 * z * z - 1.0, x * z, x * x - y * y)
    return [c * t for c, t in zip(_SH_NORM, terms)]


def sh_irradiance(n, sh):
    """E_sh(n) = sum_i sh_i Y_i(n): (..., 3) from unit normals n (..., H, W, 3) and coefficients sh (..., 9, 3).

    Written as a sum rather than a matmul for the reason given in _dot3.
    """
    xp = n.__array_namespace__()
    total = 0.0
    for i, y_i in enumerate(sh_basis(n)):
        total = total + y_i * _pixelwise(xp, sh[..., i, :], n.dtype)
    return total


def sh_of_light(direction, color) -> np.ndarray:
    """(9, 3) irradiance coefficients of a distant light: its order-2 approximation of color * max(n.l, 0)."""
    d = np.asarray(direction, np.float64) / np.linalg.norm(direction)
    basis = np.array([y_i[0] for y_i in sh_basis(d)])
    return (np.array(_SH_COSINE) * basis)[:, None] * np.asarray(color, np.float64)[None, :]


def sh_of_constant(color) -> np.ndarray:
    """(9, 3) coefficients of a constant irradiance `color` (a uniformly bright environment)."""
    sh = np.zeros((9, 3))
    sh[0] = np.asarray(color, np.float64) / _SH_NORM[0]
    return sh


def estimate_sh(passes: Mapping[str, Any], image, mask) -> np.ndarray:
    """Least-squares (9, 3) SH irradiance that best explains `image` as albedo * ao * E_sh(n).

    NumPy only.  Uses the pixels where `mask` (H, W[, 1]) is set and the image is neither black nor
    saturated in that channel (clipping breaks the linear model); fits each colour channel separately.
    """
    n = decode_normal(np.asarray(passes["normal"], np.float64))
    basis = np.concatenate(sh_basis(n), axis=-1)  # (H, W, 9)
    weight = np.asarray(passes["albedo"], np.float64) * np.asarray(passes["ambient_occlusion"], np.float64)
    image = np.asarray(image, np.float64)
    valid = np.asarray(mask, bool).reshape(image.shape[:2])
    sh = np.zeros((9, 3))
    for c in range(3):
        use = valid & (image[..., c] > 0.0) & (image[..., c] < 1.0) & (weight[..., c] > 1e-3)
        if use.sum() < 9:
            raise ValueError(f"too few usable pixels ({int(use.sum())}) to fit lighting in channel {c}")
        design = basis[use] * weight[..., c][use][:, None]
        sh[:, c] = np.linalg.lstsq(design, image[..., c][use], rcond=None)[0]
    return sh


def edit_materials(passes: Mapping[str, Any], tint=(1.0, 1.0, 1.0), saturation=1.0, specular_scale=1.0,
                   translucency_scale=1.0, ao_strength=1.0) -> dict:
    """Material edits before shading (all neutral at their defaults).

    albedo' = clip(tint * (luma + saturation * (albedo - luma)), 0, 1) with Rec. 709 luma;
    specular' = specular_scale * specular; translucency' = translucency_scale * translucency;
    ao' = clip(1 - ao_strength * (1 - ao), 0, 1) (0 removes occlusion, 1 keeps it, >1 deepens it).
    """
    albedo = passes["albedo"]
    xp = albedo.__array_namespace__()
    dt = albedo.dtype
    luma = 0.2126 * albedo[..., 0:1] + 0.7152 * albedo[..., 1:2] + 0.0722 * albedo[..., 2:3]
    tint = xp.asarray(tint, dtype=dt)
    out = dict(passes)
    out["albedo"] = xp.clip(tint * (luma + saturation * (albedo - luma)), 0.0, 1.0)
    out["specular"] = passes["specular"] * specular_scale
    out["translucency"] = passes["translucency"] * translucency_scale
    out["ambient_occlusion"] = xp.clip(1.0 - ao_strength * (1.0 - passes["ambient_occlusion"]), 0.0, 1.0)
    return out


def _pixelwise(xp, x, ref_dtype):
    """Give a (..., C) light quantity two singleton spatial axes: (..., 1, 1, C)."""
    x = xp.asarray(x, dtype=ref_dtype)
    return xp.reshape(x, tuple(x.shape[:-1]) + (1, 1, x.shape[-1]))


def shade(passes: Mapping[str, Any], lights: Lights) -> dict:
    """Evaluate the shading model of the module docstring.

    Returns a dict with 3-channel "raw_diffuse", "subsurface", "specular"
    (specular *radiance*, not the 1-channel specular pass) and "image".
    """
    albedo = passes["albedo"]
    xp = albedo.__array_namespace__()
    dt = albedo.dtype
    ao = passes["ambient_occlusion"]
    spec = passes["specular"]
    trans = passes["translucency"]
    n = decode_normal(xp.asarray(passes["normal"], dtype=dt))

    ambient = _pixelwise(xp, lights.ambient, dt)
    scatter = _pixelwise(xp, lights.scatter, dt)
    shininess = xp.asarray(lights.shininess, dtype=dt)
    shininess = xp.reshape(shininess, tuple(shininess.shape) + (1, 1, 1))
    directions = xp.asarray(lights.directions, dtype=dt)
    colors = xp.asarray(lights.colors, dtype=dt)
    view = xp.asarray([0.0, 0.0, 1.0], dtype=dt)

    direct = 0.0
    wrapped = 0.0
    highlight = 0.0
    # The light count is a static shape, so this unrolls cleanly under jit.
    for k in range(directions.shape[-2]):
        l_k = _pixelwise(xp, directions[..., k, :], dt)
        c_k = _pixelwise(xp, colors[..., k, :], dt)
        h_k = _normalize(xp, l_k + view)
        n_dot_l = _dot3(n, l_k)
        n_dot_h = _dot3(n, h_k)
        direct = direct + c_k * xp.maximum(n_dot_l, 0.0)
        wrapped = wrapped + c_k * xp.clip((n_dot_l + WRAP) / (1.0 + WRAP), 0.0, 1.0)
        highlight = highlight + c_k * xp.pow(xp.maximum(n_dot_h, 0.0), shininess)

    irradiance = ambient + direct
    if lights.sh is not None:
        irradiance = irradiance + xp.maximum(sh_irradiance(n, xp.asarray(lights.sh, dtype=dt)), 0.0)
    raw_diffuse = albedo * ao * irradiance
    subsurface = trans * scatter * albedo * wrapped
    specular = spec * highlight
    image = xp.clip(raw_diffuse + subsurface + specular, 0.0, 1.0)
    return {"raw_diffuse": raw_diffuse, "subsurface": subsurface, "specular": specular, "image": image}


def render(passes: Mapping[str, Any], lights: Lights):
    """Lit image of the passes: shade(passes, lights)["image"]."""
    return shade(passes, lights)["image"]
