r"""Relights predicted passes and edits their materials, with the one shading model of `data_pipeline/shading.py`.

    python -m maginet_jax.relight --passes=predictions/face --output=relit \
        [--light=AZ,EL,R,G,B ...] [--ambient=R,G,B] [--sh=PRESET_OR_FILE] [--sh_intensity=X] \
        [--tint=R,G,B] [--saturation=X] [--specular_scale=X] [--shininess=X] [--translucency_scale=X] \
        [--ao_strength=X] [--scatter=R,G,B] [--sweep=N] [--match=IMAGE] [--html=PAGE.html]

`--passes` is the prefix predict wrote (`<prefix>_albedo.png`, `_ambient_occlusion`, 16-bit `_normal`, `_specular`,
`_translucency`) or a directory of such files (every `<stem>_albedo.png` in it). For each stem it writes
`<stem>_relit.png` to `--output`; `--sweep N` adds `<stem>_sweep.gif` (N frames of the first light circling the
view axis) and `<stem>_sweep.png` (the frames side by side); `--match IMAGE` fits the SH environment that best
explains IMAGE under the diffuse model (least squares), renders with it and writes the 9 RGB coefficients to
`<stem>_sh.txt` (a file `--sh` accepts, to move that lighting onto another face); `--html` writes one
self-contained interactive page (WebGL, no network) of one stem.

Lights: `--light AZ,EL,R,G,B` (repeatable) is a distant light at azimuth AZ and elevation EL in degrees, direction
(cos EL sin AZ, sin EL, cos EL cos AZ) in the texture frame (0,0 is straight in front, +AZ to the right, +EL up), of
colour × intensity R,G,B. Without --light, --sh and --match, one key light (`DEFAULT_LIGHT`) is used. --sh takes a
preset name (`PRESETS`) or a text file of 9 rows of R G B irradiance coefficients. Every number of a light, colour,
SH file, intensity or edit lies within ±`MAX_MAGNITUDE` (1e6; float32 rendering overflows far beyond it), a sweep
has at most `MAX_SWEEP_FRAMES` frames and `MAX_SWEEP_PIXELS` pixels of frames, and no file written may be one read.
Bad input (a missing pass, passes of different sizes, a malformed spec) is one error line, exit status 1, and nothing
written.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from maginet_jax import cli
from maginet_jax.errors import UserError
from maginet_jax.relighting import DEFAULT_LIGHT, MAX_LIGHTS, MAX_MAGNITUDE, PRESETS, Rig, read_sh, relight

_PASSES = flags.DEFINE_string("passes", None, "A prefix of predicted passes (<prefix>_albedo.png, ...) or a "
                              "directory of them.")
_OUTPUT = flags.DEFINE_string("output", "", "Output directory for <stem>_relit.png (and sweep/match files).")
_LIGHT = flags.DEFINE_multi_string("light", [], "AZ,EL,R,G,B: a distant light (degrees; colour × intensity). "
                                   f"Repeatable, at most {MAX_LIGHTS}.")
_AMBIENT = flags.DEFINE_string("ambient", "", "R,G,B: uniform ambient irradiance (default 0.1 grey, or 0 with "
                                "--sh or --match: an environment holds its own ambient).")
_SH = flags.DEFINE_string("sh", "", f"An SH environment: one of {sorted(PRESETS)}, or a file of 9 rows R G B.")
_SH_INTENSITY = flags.DEFINE_float("sh_intensity", 1.0, "Multiplies the SH environment.")
_SHININESS = flags.DEFINE_float("shininess", 24.0, "Specular exponent.")
_SCATTER = flags.DEFINE_string("scatter", "0.3,0.12,0.08", "R,G,B: subsurface tint of translucent skin.")
_TINT = flags.DEFINE_string("tint", "1,1,1", "R,G,B: multiplies the albedo.")
_SATURATION = flags.DEFINE_float("saturation", 1.0, "Albedo saturation (0 grey, 1 unchanged).")
_SPECULAR = flags.DEFINE_float("specular_scale", 1.0, "Multiplies the specular pass.")
_TRANSLUCENCY = flags.DEFINE_float("translucency_scale", 1.0, "Multiplies the translucency pass.")
_AO = flags.DEFINE_float("ao_strength", 1.0, "Ambient occlusion strength (0 none, 1 as predicted, >1 deeper).")
_SWEEP = flags.DEFINE_integer("sweep", 0, "Also write an N-frame light sweep (GIF and strip).")
_SWEEP_FORMAT = flags.DEFINE_enum("sweep_format", "gif", ["gif", "webp"], "Animation format of the sweep.")
_MATCH = flags.DEFINE_string("match", "", "An image whose lighting to estimate from the passes and render with.")
_HTML = flags.DEFINE_string("html", "", "Write an interactive WebGL page of the (one) stem to this file.")


def parse_numbers(flag: str, text: str, count: int, nonnegative_from: int = 0) -> tuple[float, ...]:
    """`count` comma-separated numbers within ±MAX_MAGNITUDE, those from index `nonnegative_from` on >= 0;
    UserError otherwise."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if (len(values) != count or not all(abs(v) <= MAX_MAGNITUDE for v in values)  # NaN too
            or min(values[nonnegative_from:], default=0) < 0):
        raise UserError(f"--{flag}={text!r}: expected {count} comma-separated numbers within ±{MAX_MAGNITUDE:g}"
                        + (" (colours >= 0)" if nonnegative_from < count else ""))
    return values


def rig_from_flags() -> Rig:
    """The Rig the flags describe (the default key light when nothing else lights the face)."""
    lights = tuple(parse_numbers("light", text, 5, nonnegative_from=2) for text in _LIGHT.value)
    if len(lights) > MAX_LIGHTS:
        raise UserError(f"{len(lights)} --light flags: at most {MAX_LIGHTS}")
    given = [f"--{name}" for name in ("sh", "sh_intensity") if flags.FLAGS[name].present]
    if _MATCH.value and given:  # the fitted environment replaces both: they would be ignored without a word
        raise UserError(f"--match fits the environment itself: give it without {' and '.join(given)}")
    if not lights and not _SH.value and not _MATCH.value:
        lights = (DEFAULT_LIGHT,)
    for name, value in (("sh_intensity", _SH_INTENSITY.value), ("shininess", _SHININESS.value),
                        ("saturation", _SATURATION.value), ("specular_scale", _SPECULAR.value),
                        ("translucency_scale", _TRANSLUCENCY.value), ("ao_strength", _AO.value)):
        if not 0 <= value <= MAX_MAGNITUDE:  # NaN too
            raise UserError(f"--{name}={value}: expected a number from 0 to {MAX_MAGNITUDE:g}")
    environment = bool(_SH.value or _MATCH.value)
    ambient = _AMBIENT.value or ("0,0,0" if environment else "0.1,0.1,0.1")
    return Rig(lights=lights, ambient=parse_numbers("ambient", ambient, 3),
               sh=read_sh(_SH.value) if _SH.value else None, sh_intensity=_SH_INTENSITY.value,
               shininess=_SHININESS.value, scatter=parse_numbers("scatter", _SCATTER.value, 3),
               tint=parse_numbers("tint", _TINT.value, 3), saturation=_SATURATION.value,
               specular_scale=_SPECULAR.value, translucency_scale=_TRANSLUCENCY.value, ao_strength=_AO.value)


def main(argv) -> None:
    logging.set_verbosity(logging.WARNING)  # JAX's backend probing logs at INFO
    if len(argv) > 1:
        sys.exit(f"maginet_jax.relight: error: unexpected arguments {argv[1:]}")
    try:
        sh_file = () if _SH.value in PRESETS else (_SH.value,)  # what read_sh read: never to be written over
        relight(_PASSES.value, _OUTPUT.value, rig_from_flags(), _SWEEP.value, _SWEEP_FORMAT.value, _MATCH.value,
                _HTML.value, also_read=sh_file)
    except UserError as e:
        sys.exit(f"maginet_jax.relight: error: {e}")
    except OSError as e:  # writing (permissions, a full disk): what the checks before it cannot foresee
        sys.exit(f"maginet_jax.relight: error: cannot write{f' {e.filename!r}' if e.filename else ''}: {e.strerror or e}")


if __name__ == "__main__":
    flags.mark_flag_as_required("passes")
    app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, prog="maginet_jax.relight"))

