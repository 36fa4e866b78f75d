r"""Predicts the six passes of face images (UV textures or portraits) with three trained stages.

    python -m maginet_jax.predict --albedo_workdir=runs/albedo_demo --refine_workdir=runs/refine_demo \
        --passes_workdir=runs/passes_demo --input=IMAGE_OR_DIRECTORY --output=DIR [--native] [--size=N] \
        [--mask=FILE | --no_mask]
    python -m maginet_jax.predict --joint_workdir=runs/joint_demo --input=... --output=DIR [...]

A jointly fine-tuned run (configs/joint.py) holds all three networks and replaces the three workdirs. Each run's
latest checkpoint is used, or `--<run>_step=N`'s (e.g. one `keep_best_checkpoints` kept).

Writes, for each input `<stem>`: `<stem>_albedo.png` (the refined albedo), `<stem>_<pass>.png` for every pass
the passes run predicts (ambient_occlusion, normal, specular, translucency, raw_diffuse), and a labelled
contact sheet `<stem>_sheet.png`.

Sizes: an input of any aspect, up to 8192 pixels on its longer side, is padded to a square (edge pixels repeated),
resized to the working size S (the passes run's training crop size, or --size up to 4096; stage 1 runs at S/2),
and every output is mapped back to the input's exact size. --native keeps the S×S outputs (of the padded square) instead.

Normals: 16-bit RGB PNGs, renormalised to unit length after resizing, encoded as code = round((n + 1) / 2 ·
65535) per component in the texture's tangent frame (x right, y up, z out of the skin), like the training
data. Other passes are 8-bit (grey for one-channel passes).

Masking: outside the face the networks' outputs are unconstrained, so every pass is written as 0 where the texture
is not valid, as in the training data: by default where the input is black (every channel <= 2/255, the
background of a UV texture), or where `--mask FILE` is dark (< 0.5 after resizing it to each input; one file
serves a directory of textures that share a UV layout). `--no_mask` writes the raw outputs.

A directory is processed in name order with a progress bar; files that cannot be read are reported and
skipped, and the exit status is then 1. Bad input (a missing path, an empty directory, a run of the wrong
stage) is one error line and exit status 1.
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from PIL import Image
from tqdm import tqdm

from maginet_jax import cli, image_io
from maginet_jax.errors import UserError, check_number
from maginet_jax.models import pix2pixhd
from maginet_jax.models.albedo_net import size_multiple
from maginet_jax.stages import joint, passes, supervised
from maginet_jax.training import compiler, images, runs, sharding

_ALBEDO = flags.DEFINE_string("albedo_workdir", "", "A finished stage-1 (configs/albedo.py) run.")
_REFINE = flags.DEFINE_string("refine_workdir", "", "A finished stage-2 (configs/refine.py) run; without it the "
                              "stage-1 albedo is upsampled bilinearly.")
_PASSES = flags.DEFINE_string("passes_workdir", "", "A finished stage-3 (configs/passes.py) run.")
_JOINT = flags.DEFINE_string("joint_workdir", "", "A finished joint fine-tuning (configs/joint.py) run, in place of "
                             "the three runs above.")
_INPUT = flags.DEFINE_string("input", None, "An image file, or a directory of them.")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory (created if needed).")
_NATIVE = flags.DEFINE_bool("native", False, "Keep outputs at the working size S×S instead of the input's size.")
_SIZE = flags.DEFINE_integer("size", 0, "Working size S, up to 4096 (0: the size the passes run was trained at).")
_MASK = flags.DEFINE_string("mask", "", "An image whose bright pixels (>= 0.5) mark the valid texture region, resized "
                            "to each input (default: the input's non-black pixels).")
_NO_MASK = flags.DEFINE_bool("no_mask", False, "Write the raw outputs, also outside the face.")
_STEPS = {run: flags.DEFINE_integer(f"{run}_step", 0, f"The checkpoint of --{run}_workdir to use, e.g. one "
                                    f"keep_best_checkpoints kept (0: the latest).")
          for run in ("albedo", "refine", "passes", "joint")}
flags.mark_flags_as_required(["input", "output"])

def fit_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A [0, 1] mask image (H, W, C) resized to (height, width) and thresholded at 0.5: (height, width, 1)."""
    grey = mask.mean(axis=-1, keepdims=True)
    return (resize(grey, height, width) >= 0.5).astype(np.float32)


def resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear (area-filtered when shrinking) resize of an HWC float image, channel by channel."""
    if x.shape[:2] == (height, width):
        return x
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c]), mode="F").resize(
        (width, height), Image.BILINEAR)) for c in range(x.shape[-1])], axis=-1)


def unit_normals(encoded: np.ndarray) -> np.ndarray:
    """[0, 1]-encoded normals → renormalised to unit vectors, re-encoded (degenerate ones point out: +z)."""
    n = encoded.astype(np.float32) * 2.0 - 1.0
    length = np.linalg.norm(n, axis=-1, keepdims=True)
    n = np.where(length > 1e-6, n / np.maximum(length, 1e-6), np.array([0.0, 0.0, 1.0], np.float32))
    return (n + 1.0) / 2.0


# Limits that turn an out-of-memory crash into one error line. An input is padded to a square of its longer side
# and every output is mapped back through one (float32: 0.8 GB each at 8192², so a 1 × 40000 strip needed 19 GB);
# the working size is the networks' image side, 4× the paper's largest at 4096.
MAX_SIDE = 8192
MAX_SIZE = 4096


class Predictor:
    """The chained networks of three finished runs, or of one joint run (`stages.passes.predict`), jitted at one
    working size."""

    def __init__(self, albedo_workdir: str, refine_workdir: str, passes_workdir: str, size: int = 0, *,
                 joint_workdir: str = "", steps: dict[str, int] | None = None):
        """`steps`: {"albedo" | "refine" | "passes" | "joint": the checkpoint of that run to use}, 0 or absent for
        the latest."""
        steps = steps or {}
        workdirs = dict(albedo=albedo_workdir, refine=refine_workdir, passes=passes_workdir, joint=joint_workdir)
        for run, step in steps.items():
            check_number(f"--{run}_step", step, integer=True, at_least=0)
            if step and not workdirs[run]:
                raise UserError(f"--{run}_step={step} is set but --{run}_workdir is empty")
        if not 0 <= size <= MAX_SIZE:
            raise UserError(f"working size {size} must be in [1, {MAX_SIZE}] (0: the passes run's crop size)")
        given = [f"--{n}_workdir" for n, w in (("albedo", albedo_workdir), ("refine", refine_workdir),
                                                ("passes", passes_workdir)) if w]
        if joint_workdir and given:
            raise UserError(f"--joint_workdir holds all three networks: give it without {', '.join(given)}")
        if not joint_workdir and not (albedo_workdir and passes_workdir):
            raise UserError("give --albedo_workdir and --passes_workdir (and optionally --refine_workdir), or "
                            "--joint_workdir")
        mesh = sharding.make_mesh((("data", 1),), jax.devices()[:1])
        if joint_workdir:
            config, graphdefs, params = runs.load_params(joint_workdir, joint.networks, stage="joint",
                                                         what="--joint_workdir", mesh=mesh,
                                                         names=("albedo", "refine", "generator"),
                                                         step=steps.get("joint", 0), hint="")
            upstream = {n: (graphdefs[n], params.pop(n)) for n in ("albedo", "refine")}
            albedo_model = config.albedo.model
        else:
            init = ml_collections.ConfigDict(dict(albedo_workdir=albedo_workdir, refine_workdir=refine_workdir,
                                                  albedo_step=steps.get("albedo", 0),
                                                  refine_step=steps.get("refine", 0)))
            upstream = supervised.load_upstream(init, mesh, label="--{}_workdir", hint="")
            albedo_model = runs.read_config(albedo_workdir, expect_stage="albedo", what="--albedo_workdir").model
            config, graphdefs, params = runs.load_params(passes_workdir, passes.networks, stage="passes",
                                                         what="--passes_workdir", mesh=mesh, names=("generator",),
                                                         step=steps.get("passes", 0), hint="")
        self.passes = tuple(config.passes)
        self.size = size or config.data.crop_size
        multiple = int(np.lcm(2 * size_multiple(albedo_model), pix2pixhd.generator_multiple(config.model)))
        if self.size % multiple:
            raise UserError(f"working size {self.size} must be a multiple of {multiple} for these networks")
        self._params, self._frozen_nets = params, {"upstream": upstream}
        self._run = jax.jit(functools.partial(passes.predict, config=config, graphdefs=graphdefs),
                            compiler_options=compiler.options(config))

    def __call__(self, image: np.ndarray, native: bool = False, mask: np.ndarray | None = None
                 ) -> dict[str, np.ndarray]:
        """{"albedo": ..., pass: ...} as HWC float arrays in [0, 1], at the input's size unless `native`; with a
        0/1 `mask` (H, W, 1) at the input's size, every output is 0 where it is 0."""
        h, w = image.shape[:2]
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        square = lambda x: np.pad(x, ((top, side - h - top), (left, side - w - left), (0, 0)), mode="edge")  # noqa: E731
        got, _ = self._run(self._params, self._frozen_nets, {"image": resize(square(image), self.size, self.size)[None]})
        outputs = {k: np.asarray(got[k][0]) for k in ("albedo", *self.passes)}  # jit returns keys sorted
        if native and mask is not None:
            mask = fit_mask(square(mask), self.size, self.size)
        elif not native:
            outputs = {k: resize(v, side, side)[top:top + h, left:left + w] for k, v in outputs.items()}
        outputs = {k: np.clip(v, 0.0, 1.0) for k, v in outputs.items()}
        if "normal" in outputs and outputs["normal"].shape[-1] == 3:
            outputs["normal"] = unit_normals(outputs["normal"])
        if mask is not None:
            outputs = {k: v * mask for k, v in outputs.items()}
        return outputs


def read_input(path: str) -> np.ndarray:
    """`image_io.read_image`, and UserError for an image whose longer side exceeds MAX_SIDE."""
    image = image_io.read_image(path)
    if max(image.shape[:2]) > MAX_SIDE:
        raise UserError(f"{path!r} is {image.shape[1]}×{image.shape[0]}: its longer side exceeds {MAX_SIDE} pixels "
                        f"(it is padded to a square of that side); resize or crop it first")
    return image


def list_inputs(path: str) -> list[str]:
    """The files to process: `path` itself, or the visible files directly inside the directory `path`."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UserError(f"--input {path!r} does not exist")
    files = sorted(os.path.join(path, f) for f in os.listdir(path)
                   if not f.startswith(".") and os.path.isfile(os.path.join(path, f)))
    if not files:
        raise UserError(f"--input directory {path!r} holds no files")
    stems = [stem(f) for f in files]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise UserError(f"--input directory {path!r}: several files share the stem(s) {clashes}, so their "
                        f"outputs would overwrite each other")
    return files


def stem(path: str) -> str:
    """An input's file name without its extension: what its outputs' names start with."""
    return os.path.splitext(os.path.basename(path))[0]


def output_file(output_dir: str, input_path: str, name: str) -> str:
    """Where the output `name` (a pass, or "sheet") of the input at `input_path` is written."""
    return os.path.join(output_dir, f"{stem(input_path)}_{name}.png")


def write_outputs(output_dir: str, path: str, image: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
    """The pass PNGs and the labelled contact sheet of the input at `path`."""
    for name, x in outputs.items():
        image_io.write_png(output_file(output_dir, path, name), x, bits=16 if name == "normal" else 8)
    tiles = [("input", image)] + [(name.replace("_", " "), x) for name, x in outputs.items()]
    image_io.write_png(output_file(output_dir, path, "sheet"), images.contact_sheet(tiles, tile=256))


def predict(albedo_workdir: str, refine_workdir: str, passes_workdir: str, input_path: str, output_dir: str,
            native: bool = False, size: int = 0, mask: str = "", no_mask: bool = False, joint_workdir: str = "",
            steps: dict[str, int] | None = None) -> list[str]:
    """Runs the whole pipeline; returns the error lines of inputs that were skipped."""
    if mask and no_mask:
        raise UserError("--mask and --no_mask contradict each other: give one")
    files = list_inputs(input_path)
    single = len(files) == 1 and os.path.isfile(input_path)
    first = read_input(files[0]) if single else None  # a single unreadable file is the error itself
    mask_image = image_io.read_image(mask) if mask else None
    predictor = Predictor(albedo_workdir, refine_workdir, passes_workdir, size, joint_workdir=joint_workdir,
                          steps=steps)
    outputs = [output_file(output_dir, f, name) for f in files for name in ("albedo", *predictor.passes, "sheet")]
    written = {image_io.file_identity(path) for path in outputs}
    overwritten = [f for f in [*files, *([mask] if mask else [])] if image_io.file_identity(f) in written]
    if overwritten:  # e.g. --output is the input directory, which holds a.png and a_normal.png
        raise UserError(f"--output {output_dir!r} would overwrite the input {overwritten[0]!r}: write elsewhere")
    image_io.check_not_directories(outputs)
    created = not os.path.exists(output_dir)
    runs.prepare_workdir(output_dir, what="--output")  # only once every input has been checked

    def one(path: str, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        valid = None if no_mask else fit_mask(mask_image, h, w) if mask else image_io.texture_mask(image)
        write_outputs(output_dir, path, image, predictor(image, native, valid))

    if single:
        one(files[0], first)
        return []
    skipped = []
    for path in tqdm(files, desc="predict", unit="image", file=sys.stderr):
        try:
            image = read_input(path)
        except UserError as e:
            tqdm.write(f"skipped: {e}", file=sys.stderr)
            skipped.append(str(e))
            continue
        one(path, image)
    if created and len(skipped) == len(files):  # leave no empty --output behind when nothing could be read
        os.rmdir(output_dir)
    return skipped


def main(argv) -> None:
    logging.set_verbosity(logging.WARNING)  # orbax logs ~20 INFO lines per restored run
    if len(argv) > 1:
        sys.exit(f"maginet_jax.predict: error: unexpected arguments {argv[1:]}")
    try:
        skipped = predict(_ALBEDO.value, _REFINE.value, _PASSES.value, _INPUT.value, _OUTPUT.value, _NATIVE.value,
                          _SIZE.value, _MASK.value, _NO_MASK.value, _JOINT.value,
                          steps={run: flag.value for run, flag in _STEPS.items()})
    except UserError as e:
        sys.exit(f"maginet_jax.predict: error: {e}")
    except OSError as e:  # writing an output: a full disk, the directory removed meanwhile
        sys.exit(f"maginet_jax.predict: error: cannot write {e.filename!r}: {e.strerror or e}")
    if skipped:
        sys.exit(f"maginet_jax.predict: error: {len(skipped)} file(s) could not be read and were skipped")


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, prog="maginet_jax.predict"))
