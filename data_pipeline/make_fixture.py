r"""Writes a small tree in the exact FFHQ-UV-Intrinsics (+ FFHQ-UV uv-maps) layout from the synthetic generator.

    python -m data_pipeline.make_fixture --out DIR --num_subjects N [--resolution 64] [--seed 0] [--overwrite]

Gives `DIR/Data/<ID>/{ambient_occlusion, diffuse, normal, specular, translucency, light_normalized}.png` and
`DIR/uv-maps/<ID>.png` (the lit texture), IDs zero-padded to six digits: at most 10**6 subjects, of 16 to 1024
pixels (the paper's largest size), from a seed in [0, 2**32). Try the real-data path with it:
`--config.data.source=ffhq_uv_intrinsics --config.data.root=DIR`. A DIR that holds anything is refused unless
`--overwrite` is given: the tree has the real dataset's file names, and would replace a copy of it.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from PIL import Image

from data_pipeline import synthetic
from data_pipeline.ffhq_uv_intrinsics import PASS_FILES
from maginet_jax import cli


def write_fixture(out: str, num_subjects: int, resolution: int = 64, seed: int = 0) -> list[str]:
    """Writes the tree and returns the subject IDs."""
    ids = [f"{i:06d}" for i in range(num_subjects)]
    os.makedirs(os.path.join(out, "uv-maps"), exist_ok=True)
    for i, subject in enumerate(ids):
        sample = synthetic.generate(seed, i, resolution, "train")
        folder = os.path.join(out, "Data", subject)
        os.makedirs(folder, exist_ok=True)
        for name, stem in PASS_FILES.items():
            arr = synthetic.quantize(sample[name])
            Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(os.path.join(folder, f"{stem}.png"))
        Image.fromarray(synthetic.quantize(sample["image"])).save(os.path.join(out, "uv-maps", f"{subject}.png"))
    return ids


# The flags' bounds are checked as they are parsed, before anything is written: out of range, the generator failed
# half-way (a negative seed), or asked for terabytes (a million pixels a side).
MAX_SUBJECTS = 10**6  # the IDs are six digits
MAX_RESOLUTION = 1024  # the paper's largest size

_OUT = flags.DEFINE_string("out", None, "Output directory ('.' for the current one).", required=True)
flags.register_validator(_OUT, bool, "an empty path would write into the current directory: give --out=. for it")
_NUM = flags.DEFINE_integer("num_subjects", 20, "Number of subjects.", lower_bound=1, upper_bound=MAX_SUBJECTS)
_RES = flags.DEFINE_integer("resolution", 64, "Texture size in pixels.", lower_bound=16, upper_bound=MAX_RESOLUTION)
_SEED = flags.DEFINE_integer("seed", 0, "Synthetic dataset seed (32 bits, as the training's data.seed).",
                             lower_bound=0, upper_bound=2**32 - 1)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Write into a --out that already holds files.")


def main(argv):
    if len(argv) > 1:
        sys.exit(f"make_fixture: error: unexpected arguments {argv[1:]}")
    if os.path.isdir(_OUT.value) and os.listdir(_OUT.value) and not _OVERWRITE.value:
        sys.exit(f"make_fixture: error: --out={_OUT.value!r} is not empty; its files of the dataset's names would be "
                 "replaced: give --overwrite, or an empty or new directory")
    try:
        ids = write_fixture(_OUT.value, _NUM.value, _RES.value, _SEED.value)
    except OSError as e:
        sys.exit(f"make_fixture: error: cannot write under --out={_OUT.value!r}: {e.strerror}: {e.filename!r}")
    print(f"wrote {len(ids)} subjects to {_OUT.value}")


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, prog="make_fixture"))
