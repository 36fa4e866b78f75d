"""The interactive relighting page: `relight_page.html` with one face's passes and a starting state embedded.

The page needs no network and no server: the passes travel as PNG data URIs (the 16-bit normal split into a high-
and a low-byte PNG, since browsers decode PNGs to 8 bits), its WebGL2 shader mirrors `data_pipeline/shading.py`.
"""

from __future__ import annotations

import base64
import io
import json
from importlib import resources

import numpy as np
from etils import epath
from PIL import Image


def _png_uri(codes: np.ndarray) -> str:
    """A data URI of an (H, W, 3) uint8 array as an RGB PNG (no gamma chunk, so browsers keep the codes)."""
    buffer = io.BytesIO()
    Image.fromarray(codes).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _to8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def textures(passes: dict[str, np.ndarray]) -> dict[str, str]:
    """The page's four textures: albedo, material (AO, specular, translucency) and the normal's two bytes."""
    normal = np.round(np.clip(passes["normal"], 0.0, 1.0) * 65535.0).astype(np.uint16)
    material = np.concatenate([passes["ambient_occlusion"], passes["specular"], passes["translucency"]], axis=-1)
    return {
        "albedo": _png_uri(_to8(passes["albedo"])),
        "material": _png_uri(_to8(material)),
        "normal_hi": _png_uri((normal >> 8).astype(np.uint8)),
        "normal_lo": _png_uri((normal & 0xFF).astype(np.uint8)),
    }


def write(path: str, passes: dict[str, np.ndarray], state: dict, presets: dict) -> None:
    """Writes the page for `passes` (float HWC in [0, 1]) starting from `state` (`relighting.Rig.as_state()`)."""
    height, width = passes["albedo"].shape[:2]
    data = {"width": width, "height": height, "state": state, "presets": presets, "textures": textures(passes)}
    template = resources.files("maginet_jax").joinpath("relight_page.html").read_text()
    # "</" cannot appear inside the JSON <script> element; JSON allows "<\/" for it.
    page = template.replace("/*DATA*/", json.dumps(data).replace("</", "<\\/"))
    out = epath.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
