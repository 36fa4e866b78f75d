"""Renders predicted passes under new lights and material edits: the library behind `python -m maginet_jax.relight`.

The shading is `data_pipeline/shading.py`'s (the model the synthetic data are rendered with), so relighting a
synthetic face's true passes under its own lights gives back its input image. A `Rig` holds the lights (distant
lights, an ambient term, an optional order-2 SH environment) and the material edits; `render_batch` is jitted and
broadcasts a batch of rigs over one face (a light sweep) or a batch of faces under one rig. `relight` is what the
command does; the interactive page (`relight_page.py`) mirrors `render` in WebGL.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from data_pipeline import shading
from maginet_jax import image_io, relight_page
from maginet_jax.errors import UserError

PASSES = ("albedo", "ambient_occlusion", "normal", "specular", "translucency")
DEFAULT_LIGHT = (-30.0, 20.0, 0.9, 0.9, 0.9)
MAX_LIGHTS = 8  # the page's shader has a fixed light array; the CLI keeps to it so both render alike
# Every number the CLI takes into a rig (angles, colours, SH coefficients, intensities, edits) lies within this. A light
# of 1e6 already saturates nearly every lit pixel of the darkest albedo, and the renderer's float32 holds the worst
# products of such numbers (scale × scatter × 8 lights ~ 1e19, SH coefficient × intensity ~ 1e12) with room to spare,
# where 1e300 becomes inf, and the NaN pixels it makes were written as black.
MAX_MAGNITUDE = 1e6
# A sweep's frames are held in memory together (the float32 batch, their 8-bit copies, the strip: ~44 bytes a pixel),
# so their count is bounded twice, before anything is written: one a degree of the light's circle (29 s of animation),
# and 2^26 pixels of frames in all (~3 GB: 64 frames of 1024x1024).
MAX_SWEEP_FRAMES = 360
MAX_SWEEP_PIXELS = 1 << 26


def direction(azimuth: float, elevation: float) -> np.ndarray:
    """Unit vector toward a light at (azimuth, elevation) degrees, in the texture frame."""
    az, el = math.radians(azimuth), math.radians(elevation)
    return np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])


def _environment(lights, constant) -> list:
    sh = shading.sh_of_constant(constant)
    for az, el, *color in lights:
        sh = sh + shading.sh_of_light(direction(az, el), color)
    return np.round(sh, 6).tolist()


# Named SH environments (irradiance coefficients), each a few distant lights plus a uniform glow large enough that
# the order-2 approximation stays positive everywhere.
PRESETS = {
    "studio": _environment([(-35, 30, 0.8, 0.8, 0.8), (50, 5, 0.3, 0.3, 0.3)], (0.12, 0.12, 0.12)),
    "overcast": _environment([(0, 75, 0.55, 0.6, 0.65)], (0.3, 0.32, 0.36)),
    "sunset": _environment([(70, 10, 1.0, 0.55, 0.3)], (0.12, 0.14, 0.25)),
    "window": _environment([(-80, 10, 0.85, 0.9, 0.95)], (0.1, 0.1, 0.1)),
}


@dataclasses.dataclass(frozen=True)
class Rig:
    """The lights and material edits of one rendering; `as_state()` is what the interactive page starts from."""

    lights: tuple = ()  # (azimuth, elevation, r, g, b) per light
    ambient: tuple = (0.1, 0.1, 0.1)
    sh: tuple | None = None  # 9 rows of (r, g, b) irradiance coefficients
    sh_intensity: float = 1.0
    shininess: float = 24.0
    scatter: tuple = (0.3, 0.12, 0.08)
    tint: tuple = (1.0, 1.0, 1.0)
    saturation: float = 1.0
    specular_scale: float = 1.0
    translucency_scale: float = 1.0
    ao_strength: float = 1.0

    def as_state(self) -> dict:
        """JSON-ready dict (the page's state and URL-fragment format)."""
        state = dataclasses.asdict(self)
        state["lights"] = [list(light) for light in self.lights]
        state["sh"] = [list(row) for row in self.sh] if self.sh is not None else [[0.0] * 3] * 9
        return state

    def arrays(self) -> dict[str, np.ndarray]:
        """The rig as the float32 arrays `render_batch` takes (lights padded to MAX_LIGHTS with black ones)."""
        directions = np.tile([0.0, 0.0, 1.0], (MAX_LIGHTS, 1))
        colors = np.zeros((MAX_LIGHTS, 3))
        for k, (az, el, *color) in enumerate(self.lights):
            directions[k], colors[k] = direction(az, el), color
        sh = np.zeros((9, 3)) if self.sh is None else np.asarray(self.sh) * self.sh_intensity
        edits = (self.saturation, self.specular_scale, self.translucency_scale, self.ao_strength)
        out = dict(directions=directions, colors=colors, ambient=self.ambient, sh=sh, shininess=self.shininess,
                   scatter=self.scatter, tint=self.tint, edits=edits)
        return {k: np.asarray(v, np.float32) for k, v in out.items()}


@jax.jit
def render_batch(passes: dict, rig: dict) -> jax.Array:
    """Lit images (..., H, W, 3) of passes (..., H, W, C) under `Rig.arrays()` (which may carry a leading batch
    axis of its own, e.g. a sweep's lights over one face: the two broadcast)."""
    # Each edit is a per-rig scalar: give it the (H, W, C) axes it multiplies.
    saturation, specular_scale, translucency_scale, ao_strength = (rig["edits"][..., i, None, None, None]
                                                                   for i in range(4))
    edited = shading.edit_materials(passes, tint=rig["tint"][..., None, None, :], saturation=saturation,
                                    specular_scale=specular_scale, translucency_scale=translucency_scale,
                                    ao_strength=ao_strength)
    lights = shading.Lights(ambient=rig["ambient"], directions=rig["directions"], colors=rig["colors"],
                            shininess=rig["shininess"], scatter=rig["scatter"], sh=rig["sh"])
    return shading.render(edited, lights)


def render(passes: dict[str, np.ndarray], rig: Rig) -> np.ndarray:
    """One lit image (H, W, 3) in [0, 1]."""
    return np.asarray(render_batch({k: jnp.asarray(v) for k, v in passes.items()}, rig.arrays()))


def sweep_rigs(rig: Rig, frames: int, angle: float = 50.0) -> dict[str, np.ndarray]:
    """`Rig.arrays()` of `frames` rigs whose first light circles the view axis at `angle` degrees from it."""
    first = rig.lights[0] if rig.lights else DEFAULT_LIGHT
    out = []
    for i in range(frames):
        phi = 2.0 * math.pi * i / frames
        d = np.array([math.sin(math.radians(angle)) * math.cos(phi), math.sin(math.radians(angle)) * math.sin(phi),
                      math.cos(math.radians(angle))])
        az, el = math.degrees(math.atan2(d[0], d[2])), math.degrees(math.asin(d[1]))
        out.append(dataclasses.replace(rig, lights=((az, el, *first[2:]),) + tuple(rig.lights[1:])).arrays())
    return {k: np.stack([o[k] for o in out]) for k in out[0]}


# ---------------------------------------------------------------------------------------------- reading the passes

def find_stems(path: str) -> list[str]:
    """The prefixes to relight: every `<stem>` of a `<stem>_albedo.png` in the directory `path`, or `path` itself."""
    if os.path.isdir(path):
        stems = sorted(os.path.join(path, f[:-len("_albedo.png")]) for f in os.listdir(path)
                       if f.endswith("_albedo.png"))
        if not stems:
            raise UserError(f"--passes directory {path!r} holds no <stem>_albedo.png")
        return stems
    return [path]


def check_stem(stem: str) -> tuple[int, int]:
    """(width, height) of the stem's passes; UserError on a missing, unreadable or odd pass. Each file is decoded
    whole (and dropped): a truncated PNG has a good header, and one found mid-directory would stop the command
    after it had written the stems before it."""
    sizes = {}
    for name in PASSES:
        file = f"{stem}_{name}.png"
        if not os.path.isfile(file):
            raise UserError(f"missing pass {name!r}: {file!r} does not exist")
        height, width = image_io.read_image(file).shape[:2]
        sizes[name] = (width, height)
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name} {w}x{h}" for name, (w, h) in sizes.items())
        raise UserError(f"passes of {stem!r} differ in size: {listed}")
    return sizes["albedo"]


def read_passes(stem: str) -> dict[str, np.ndarray]:
    """The stem's passes as float32 HWC arrays in [0, 1] (1 channel for AO, specular and translucency)."""
    passes = {name: image_io.read_image(f"{stem}_{name}.png") for name in PASSES}
    for name in ("ambient_occlusion", "specular", "translucency"):
        passes[name] = passes[name][..., :1]
    return passes



def read_sh(text: str) -> tuple:
    """A preset name or a file of 9 rows of R G B."""
    if text in PRESETS:
        return tuple(map(tuple, PRESETS[text]))
    if not os.path.isfile(text):
        raise UserError(f"--sh={text!r} is neither a preset {tuple(sorted(PRESETS))} nor a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # an empty file's: the shape check says it in the one line
            sh = np.loadtxt(text, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise UserError(f"--sh file {text!r}: {e}") from None
    if sh.shape != (9, 3):
        held = f"{sh.shape[0]}x{sh.shape[1]} numbers" if sh.size else "no numbers"
        raise UserError(f"--sh file {text!r} holds {held}, not 9 rows of R G B")
    bad = sh[~(np.abs(sh) <= MAX_MAGNITUDE)]  # NaN too
    if bad.size:
        raise UserError(f"--sh file {text!r} holds {bad[0]:g}: expected finite numbers within ±{MAX_MAGNITUDE:g}")
    return tuple(map(tuple, sh.tolist()))


def match_lighting(passes: dict[str, np.ndarray], image: np.ndarray, inside: np.ndarray) -> tuple:
    """The SH environment fitted to `image` (same size as the passes) over its pixels where `inside` is set."""
    if image.shape[:2] != passes["albedo"].shape[:2]:
        raise UserError(f"--match image is {image.shape[1]}x{image.shape[0]}, the passes "
                        f"{passes['albedo'].shape[1]}x{passes['albedo'].shape[0]}")
    try:
        sh = shading.estimate_sh(passes, image, mask=inside)
    except ValueError as e:
        raise UserError(f"--match: {e}") from None
    return tuple(map(tuple, sh.tolist()))


def write_sweep(output: str, stem: str, passes: dict, rig: Rig, frames: int, fmt: str) -> None:
    """The animation and the strip of a light sweep."""
    images = np.asarray(render_batch(passes, sweep_rigs(rig, frames)))
    codes = [Image.fromarray(np.round(x * 255).astype(np.uint8)) for x in images]
    codes[0].save(os.path.join(output, f"{stem}_sweep.{fmt}"), save_all=True, append_images=codes[1:],
                  duration=80, loop=0, **({"lossless": True} if fmt == "webp" else {}))
    height = min(160, codes[0].height)
    width = max(1, round(codes[0].width * height / codes[0].height))
    strip = np.concatenate([np.asarray(c.resize((width, height), Image.BILINEAR)) for c in codes], axis=1)
    image_io.write_png(os.path.join(output, f"{stem}_sweep.png"), strip)


def check_target(path: str, flag: str, directory: bool) -> None:
    """UserError if `path` (when given) cannot be the directory or file to write: what it is, or the nearest part
    of it that exists, is of the wrong kind. Checked before anything is written."""
    if not path:
        return
    if os.path.exists(path) and os.path.isdir(path) != directory:
        raise UserError(f"{flag}={path!r} is a {'file' if directory else 'directory'}: give a "
                        f"{'directory' if directory else 'file name'}")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{flag}={path!r} cannot be made: {parent!r} is a file")


def check_sweep(frames: int, sizes: list[tuple[int, int]]) -> None:
    """UserError unless a sweep of `frames` of passes of these (width, height) keeps to MAX_SWEEP_FRAMES and
    MAX_SWEEP_PIXELS."""
    width, height = max(sizes, key=lambda size: size[0] * size[1])
    limit = min(MAX_SWEEP_FRAMES, MAX_SWEEP_PIXELS // (width * height))
    if not 0 <= frames <= limit:
        raise UserError(f"--sweep={frames}: expected 0 to {limit} frames of {width}x{height} (at most "
                        f"{MAX_SWEEP_FRAMES}; the frames are held in memory, {MAX_SWEEP_PIXELS >> 20} M pixels in all)")


def check_overwrites(inputs: list[str], output: str, outputs: list[str], html: str) -> None:
    """UserError if a file to write (`outputs` in `output`, then `html`) is an input or was written before it
    (`image_io.file_identity`: by inode, or by resolved path)."""
    taken = {image_io.file_identity(f): f"the input {f!r}" for f in inputs}
    for flag, given, files in (("--output", output, outputs), ("--html", html, [html] if html else [])):
        for file in files:
            same = taken.get(image_io.file_identity(file))
            if same:
                raise UserError(f"{flag}={given!r} would overwrite {same}: write elsewhere")
        image_io.check_not_directories(files)
        taken.update({image_io.file_identity(file): f"the output {file!r}" for file in files})


def relight(passes_path: str, output: str, rig: Rig, sweep: int = 0, sweep_format: str = "gif",
            match: str = "", html: str = "", also_read: tuple[str, ...] = ()) -> None:
    """Everything the command does; all input is checked before the first file is written. `also_read` are the
    files the caller built `rig` from (an --sh file): like the passes and `match`, none may be written over."""
    if not output and not html:
        raise UserError("nothing to write: give --output (relit images) and/or --html (interactive page)")
    stems = find_stems(passes_path)
    sizes = [check_stem(stem) for stem in stems]
    check_sweep(sweep, sizes)
    if (match or html) and len(stems) > 1:
        raise UserError(f"--match and --html take one stem; --passes {passes_path!r} holds {len(stems)}")
    check_target(output, "--output", directory=True)
    check_target(html, "--html", directory=False)
    inputs = [f"{stem}_{name}.png" for stem in stems for name in PASSES] + [f for f in (match, *also_read) if f]
    suffixes = ["relit.png", *([f"sweep.{sweep_format}", "sweep.png"] if sweep else []), *(["sh.txt"] if match else [])]
    outputs = [os.path.join(output, f"{os.path.basename(stem)}_{suffix}") for stem in stems for suffix in suffixes]
    check_overwrites(inputs, output, outputs if output else [], html)
    reference = image_io.read_image(match) if match else None
    first = read_passes(stems[0])
    if reference is not None:
        inside = image_io.texture_mask(reference)[..., 0] > 0  # the reference's face
        rig = dataclasses.replace(rig, sh=match_lighting(first, reference, inside), sh_intensity=1.0)
    if output:
        os.makedirs(output, exist_ok=True)
    for i, stem in enumerate(stems):
        passes = first if i == 0 else read_passes(stem)
        name = os.path.basename(stem)
        if output:
            image = render(passes, rig)
            image_io.write_png(os.path.join(output, f"{name}_relit.png"), image)
            if sweep:
                write_sweep(output, name, passes, rig, sweep, sweep_format)
            if reference is not None:
                np.savetxt(os.path.join(output, f"{name}_sh.txt"), np.asarray(rig.sh), fmt="%.6f",
                           header="9 rows of R G B: SH irradiance coefficients (maginet_jax.relight --sh=FILE)")
                mse = np.mean((image - reference)[inside] ** 2)
                print(f"{name}: lighting of {match} fitted; relit vs it: MSE {mse:.3g} over its non-black pixels "
                      f"(their variance {np.var(reference[inside]):.3g})")
        if html:
            relight_page.write(html, passes, rig.as_state(), PRESETS)
