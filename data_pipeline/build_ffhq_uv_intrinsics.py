r"""Prepares a raw FFHQ-UV-Intrinsics copy as the `ffhq_uv_intrinsics` TFDS dataset (array_record), once.

    python -m data_pipeline.build_ffhq_uv_intrinsics --root /data/FFHQ-UV-Intrinsics \
        [--uv_maps_dir /data/FFHQ-UV/uv-maps] [--resolution 512|1024] [--input_file uv_map|diffuse|...] \
        [--pass_files albedo=diffuse,...] [--test_fraction 0.05] [--tfds_dir ~/tensorflow_datasets] [--lenient]

Training with `--config.data.source=ffhq_uv_intrinsics --config.data.root=DIR` does the same on first use;
run this ahead of a multi-host job, so that hosts do not all build it. Bad data (a missing pass, a corrupt or
truncated PNG, a wrong size or channel count) stops the build with one line naming the subject and file;
`--lenient` skips such subjects instead and records which, and why, in the dataset info (a split left without
subjects stops it). Nothing half-built is ever taken for the dataset.
"""

from __future__ import annotations

import re
import sys

from absl import app, flags

from data_pipeline.ffhq_tfds import prepare
from maginet_jax import cli


_ROOT = flags.DEFINE_string("root", None, "The raw copy: the directory holding Data/<ID>/.")
_UV = flags.DEFINE_string("uv_maps_dir", "", "FFHQ-UV's uv-maps/ (default: <root>/uv-maps).")
_RES = flags.DEFINE_integer("resolution", 512, "Stored size (512 or 1024 in the paper).")
_INPUT = flags.DEFINE_string("input_file", "uv_map", "Network input: 'uv_map' or a pass file stem, e.g. 'diffuse'.")
_PASS_FILES = flags.DEFINE_string("pass_files", "", "Targets whose file is not the default, e.g. 'albedo=diffuse'.")
_TEST = flags.DEFINE_float("test_fraction", 0.05, "Held-out share of subjects (hash of the subject ID).")
_DIR = flags.DEFINE_string("tfds_dir", "", "Where prepared datasets live (default: TFDS's, ~/tensorflow_datasets).")
_LENIENT = flags.DEFINE_bool("lenient", False, "Skip subjects with bad data (recorded) instead of stopping.")
flags.mark_flag_as_required("root")


def as_flags(message: str) -> str:
    """`message` with the training config's keys that are this CLI's flags (`data.tfds_dir`) named as the flags
    (`--tfds_dir`): `prepare` speaks to training runs too."""
    names = "|".join(holder.name for holder in (_ROOT, _UV, _RES, _INPUT, _PASS_FILES, _TEST, _DIR, _LENIENT))
    return re.sub(rf"\bdata\.({names})\b", r"--\1", message)


def main(argv) -> None:
    if len(argv) > 1:
        sys.exit(f"build_ffhq_uv_intrinsics: error: unexpected arguments {argv[1:]}")
    cli.quiet_library_logs()
    try:
        builder = prepare(_ROOT.value, tfds_dir=_DIR.value, resolution=_RES.value, input_file=_INPUT.value,
                          pass_files=_PASS_FILES.value, uv_maps_dir=_UV.value, test_fraction=_TEST.value,
                          lenient=_LENIENT.value)
    except ValueError as e:
        sys.exit(f"build_ffhq_uv_intrinsics: error: {as_flags(str(e))}")
    meta = builder.info.metadata
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
    print(f"{builder.data_dir}: {sizes}; held out {len(meta['held_out_subjects'])} subjects; "
          f"skipped {len(meta['skipped_subjects'])}" + (f": {sorted(meta['skipped_subjects'])}"
                                                         if meta["skipped_subjects"] else ""))


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, prog="build_ffhq_uv_intrinsics"))
