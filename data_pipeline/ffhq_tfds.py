"""TFDS builder `ffhq_uv_intrinsics`: a user's raw FFHQ-UV-Intrinsics copy, prepared once as array_record.

Reads `manual_dir` = the raw copy (`Data/<ID>/*.png`, optionally FFHQ-UV's `uv-maps/<ID>.png`), checks every
file, resizes to the config's resolution (512 or 1024) at build time, derives the face mask from texture
validity, splits by subject-ID hash, and writes `image`, `mask`, the six passes (normals 16-bit) and
`subject_id` per example. Works without TensorFlow: read it back with `builder.as_data_source()` (grain).
The dataset info's metadata lists the held-out subject IDs and, with `lenient=True`, the skipped subjects and
why, and records the raw root and a fingerprint of the files read: a later `prepare` from another root, or
after files changed, stops with one line rather than train on stale data. tfds writes into an `incomplete.*`
directory renamed only when the build finishes, so an interrupted build is never taken for a dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Sequence

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from google.protobuf import json_format
from jax.experimental import multihost_utils

from data_pipeline.ffhq_uv_intrinsics import (CHANNELS, PASS_FILES, BadSubjectData, fit, is_test_subject, layout,
                                              parse_pass_files, read_codes, subject_files)
from maginet_jax.errors import UserError, first_line, root_cause_line

RESOLUTIONS = (512, 1024)  # the predefined configs; any size >= 16 works (tests use small ones)

# TFDS warns at every first build: of a config not in BUILDER_CONFIGS, and that the version directory it is about to
# make has no dataset_info.json yet. Noise before the progress bars, and before the one line of an error.
logging.get_absl_logger().addFilter(lambda record: not str(record.msg).startswith(
    ("Using custom data configuration:", "Variant folder %s has no %s")))


def read_checked(path, subject: str, channels: int, size: int, dtype=np.uint8) -> np.ndarray:
    """An (size, size, channels) array of `dtype` from one PNG, or BadSubjectData saying what is wrong.

    Files must be square and at least `size` wide (box-filtered down to it); 3-channel passes must be colour.
    """
    codes = read_codes(path, subject)
    h, w, c = codes.shape
    if w != h or w < size:
        raise BadSubjectData(subject, path, f"size {w}x{h}; expected a square of at least {size}")
    if channels == 3 and c == 1:
        raise BadSubjectData(subject, path, "1 channel (a grey image); expected 3")
    arr = fit(codes, channels, size)
    if arr.dtype == dtype:
        return arr
    scale = np.iinfo(dtype).max / np.iinfo(arr.dtype).max  # 8 → 16 bits is ×257, exact
    return np.round(arr.astype(np.float64) * scale).astype(dtype)


def config_name(resolution: int, input_file: str, test_fraction: float, pass_files: str = "") -> str:
    name = f"r{resolution}-{input_file}-test{round(test_fraction * 1000):03d}"
    changed = sorted(f"{k}={v}" for k, v in parse_pass_files(pass_files).items() if PASS_FILES[k] != v)
    return name + ("-" + "-".join(c.replace("=", ".") for c in changed) if changed else "")


@dataclasses.dataclass
class FfhqUvIntrinsicsConfig(tfds.core.BuilderConfig):
    """Which input, which size, which held-out share: each combination is its own prepared dataset."""

    resolution: int = 512
    input_file: str = "uv_map"  # FFHQ-UV's texture, or a pass file stem such as "diffuse"
    test_fraction: float = 0.05
    pass_files: str = ""  # target file of each pass where not the default, e.g. "albedo=diffuse"


def make_config(resolution: int = 512, input_file: str = "uv_map", test_fraction: float = 0.05,
                pass_files: str = "") -> FfhqUvIntrinsicsConfig:
    """A builder config, validated; ValueError names the bad option."""
    if resolution < 16:
        raise ValueError(f"resolution {resolution} is below 16 (the paper's are {RESOLUTIONS})")
    if input_file != "uv_map" and input_file not in PASS_FILES.values():
        raise ValueError(f"input_file {input_file!r} is not 'uv_map' or one of {sorted(PASS_FILES.values())}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction {test_fraction} must be in (0, 1)")
    parse_pass_files(pass_files)
    return FfhqUvIntrinsicsConfig(name=config_name(resolution, input_file, test_fraction, pass_files),
                                  resolution=resolution, input_file=input_file, test_fraction=test_fraction,
                                  pass_files=pass_files)


class FfhqUvIntrinsics(tfds.core.GeneratorBasedBuilder):
    """FFHQ-UV-Intrinsics (ubisoft-laforge; CC BY-NC-ND 4.0, research only), from your own copy."""

    # A new version is prepared afresh next to an older one (TFDS keeps each in its own directory).
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "First prepared version: six passes, mask, hash split by subject ID.",
                     "1.1.0": "16-bit colour normals keep 16 bits (1.0.0 read them at 8); alpha is multiplied in."}
    BUILDER_CONFIGS = [make_config(512), make_config(1024)]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download FFHQ-UV-Intrinsics from its authors (github.com/ubisoft/ubisoft-laforge-FFHQ-UV-Intrinsics) and "
        "unzip it so that <manual_dir>/Data/<ID>/{ambient_occlusion,diffuse,normal,specular,translucency,"
        "light_normalized}.png exist; for the default input, also FFHQ-UV's uv-maps/<ID>.png (same IDs).")

    def __init__(self, *, uv_maps_dir: str = "", lenient: bool = False, **kwargs):
        self._uv_maps_dir, self._lenient = uv_maps_dir, lenient
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.resolution
        tensor = lambda c, dtype=np.uint8: tfds.features.Tensor(shape=(size, size, c), dtype=dtype,
                                                                 encoding=tfds.features.Encoding.ZLIB)
        features = {"subject_id": tfds.features.Text(), "image": tensor(3), "mask": tensor(1)}
        features.update({p: tensor(CHANNELS[p], np.uint16 if p == "normal" else np.uint8) for p in PASS_FILES})
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                     metadata=tfds.core.MetadataDict(), homepage=(
                                         "https://github.com/ubisoft/ubisoft-laforge-FFHQ-UV-Intrinsics"),
                                     description=self.__doc__)

    def _split_generators(self, dl_manager):
        c = self.builder_config
        files = raw_files(str(dl_manager.manual_dir), c, self._uv_maps_dir)
        ids = list(files)
        test = [i for i in ids if is_test_subject(i, c.test_fraction)]
        if not test or len(test) == len(ids):
            raise ValueError(f"{len(ids)} subjects under {str(dl_manager.manual_dir)!r} give {len(test)} held-out "
                             f"subjects at test_fraction={c.test_fraction}: both splits need subjects")
        self.info.metadata.update(held_out_subjects=test, input_file=c.input_file, test_fraction=c.test_fraction,
                                  pass_files=parse_pass_files(c.pass_files), skipped_subjects={},
                                  raw_root=_root(dl_manager.manual_dir), raw_files=fingerprint(files))
        return {"train": self._generate_examples("train", [(i, files[i]) for i in ids if i not in set(test)]),
                "test": self._generate_examples("test", [(i, files[i]) for i in test])}

    def _generate_examples(self, split: str, subjects):
        size = self.builder_config.resolution
        skipped = []
        for subject, paths in subjects:
            try:
                record = {k: read_checked(path, subject, CHANNELS[k], size, np.uint16 if k == "normal" else np.uint8)
                          for k, path in paths.items()}
            except BadSubjectData as e:
                if not self._lenient:
                    raise
                self.info.metadata["skipped_subjects"][subject] = f"{e.path}: {e.reason}"
                skipped.append(e)
                continue
            record["mask"] = np.where(np.any(record["albedo"] > 0, axis=-1, keepdims=True), 255, 0).astype(np.uint8)
            yield subject, {"subject_id": subject, **record}
        if len(skipped) == len(subjects):  # (TFDS's own error is an AssertionError that names no subject)
            raise ValueError(f"no usable subjects remain in the {split} split: all {len(subjects)} have bad files "
                             f"(skipped as lenient), e.g. {skipped[0]}")


def raw_files(root: str, config: FfhqUvIntrinsicsConfig, uv_maps_dir: str = "") -> dict[str, dict[str, epath.Path]]:
    """{subject: {record key: PNG path}} of every file a build with `config` reads from the raw copy at `root`."""
    data, uv_dir, ids = layout(root, config.input_file, uv_maps_dir)
    stems = {"image": config.input_file, **parse_pass_files(config.pass_files)}
    return {i: subject_files(data, uv_dir, i, stems) for i in ids}


def fingerprint(files: dict[str, dict[str, epath.Path]]) -> dict[str, str]:
    """{subject: digest of its files' paths, sizes and modification times}: what a prepared dataset was built
    from, cheap to recompute (no file is read)."""
    out = {}
    for subject, paths in files.items():
        stats = []
        for key, path in sorted(paths.items()):
            try:
                st = path.stat()
                stats.append((key, str(path), st.length, st.mtime))
            except FileNotFoundError:
                stats.append((key, str(path), None, None))
        out[subject] = hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]
    return out


def _root(path: str) -> str:
    return str(path) if "://" in str(path) else os.path.abspath(path)


def check_not_stale(builder, root: str, uv_maps_dir: str) -> None:
    """ValueError (one line) if the prepared dataset was built from another raw copy, or from files that
    changed since: training on it would silently use other data than `root` holds."""
    meta, where = builder.info.metadata, builder.data_dir
    fix = f"delete {where} to prepare it again, or give another data.tfds_dir"
    if meta.get("raw_root") != _root(root):
        source = f"from {meta['raw_root']!r}" if "raw_root" in meta else "by a version that recorded no root"
        raise ValueError(f"the prepared dataset {where} was built {source}, not from data.root={root!r}: {fix}")
    then, now = meta["raw_files"], fingerprint(raw_files(root, builder.builder_config, uv_maps_dir))
    changed = sorted(s for s in set(then) & set(now) if then[s] != now[s])
    added, removed = sorted(set(now) - set(then)), sorted(set(then) - set(now))
    if changed or added or removed:
        example = (changed or added or removed)[0]
        textures = f" and data.uv_maps_dir={uv_maps_dir!r}" if uv_maps_dir else ""  # either may be what changed
        raise ValueError(f"data.root={root!r}{textures} changed since {where} was prepared: files of {len(changed)} "
                         f"subjects changed, {len(added)} subjects added, {len(removed)} removed (e.g. {example}): "
                         f"{fix}")


def prepare(root: str, *, tfds_dir: str = "", resolution: int = 512, input_file: str = "uv_map",
            pass_files: str = "", uv_maps_dir: str = "", test_fraction: float = 0.05, lenient: bool = False):
    """The prepared builder for these options, building it first (with progress bars) when absent.

    Raises ValueError (bad options or data; BadSubjectData names the subject and file).
    """
    config = make_config(resolution, input_file, test_fraction, pass_files)
    # One of BUILDER_CONFIGS (the paper's sizes with the default options) must be asked for by name: TFDS refuses
    # a config object named like a listed one, and a grain worker rebuilds the builder from what it was given.
    if config.name in {c.name for c in FfhqUvIntrinsics.BUILDER_CONFIGS}:
        config = config.name
    try:  # (an unwritable tfds_dir fails in the constructor, which creates it)
        builder = FfhqUvIntrinsics(config=config, data_dir=tfds_dir or None,
                                   file_format="array_record", uv_maps_dir=uv_maps_dir, lenient=lenient)
        # In a multi-process run process 0 builds and the others wait for it at a barrier (never two builders);
        # all of them read the finished dataset afterwards. `tfds_dir` must then be storage every host sees.
        if builder.is_prepared():  # every process checks, so a stale dataset stops them all alike
            check_not_stale(builder, root, uv_maps_dir)
        elif jax.process_index() == 0:
            layout(root, input_file, uv_maps_dir)  # TFDS's own check of a missing root is an AssertionError
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=root))
    except OSError as e:
        raise ValueError(f"cannot prepare the dataset under data.tfds_dir={tfds_dir or '(TFDS default)'!r}: "
                         f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}") from None
    except json_format.ParseError as e:  # a prepared dataset's dataset_info.json cut short or edited
        name = make_config(resolution, input_file, test_fraction, pass_files).name
        raise ValueError(f"the prepared dataset {FfhqUvIntrinsics.name}/{name} under data.tfds_dir="
                         f"{tfds_dir or '(TFDS default)'!r} is damaged ({first_line(e)}): remove its directory to "
                         "prepare it again") from None
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"prepared {builder.data_dir}")
        builder = FfhqUvIntrinsics(config=config, data_dir=tfds_dir or None,
                                   file_format="array_record", uv_maps_dir=uv_maps_dir, lenient=lenient)
    skipped = builder.info.metadata.get("skipped_subjects") or {}
    if skipped:  # said at every use: a run without data.lenient reuses a dataset that a lenient one prepared
        first = next(iter(skipped))
        logging.warning("the prepared dataset %s leaves out %d subjects with bad files (prepared with "
                        "data.lenient), e.g. %s: %s", builder.data_dir, len(skipped), first, skipped[first])
    return builder


class PreparedSource:
    """One split of the prepared (TFDS array_record) FFHQ-UV-Intrinsics, records like `SyntheticSource`'s;
    `where` (the dataset's directory) names it in errors."""

    def __init__(self, data_source, passes: Sequence[str], where: str = ""):
        self._ds, self._keys, self._where = data_source, ("image", "mask", *passes), where

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        try:
            record = self._ds[index]
        except Exception as e:  # a file cut short or gone (array_record raises RuntimeError): one line, not a trace
            raise UserError(f"cannot read record {index} of the prepared dataset {self._where or self._ds!r} "
                            f"({root_cause_line(e)}): remove its directory to prepare it again") from None
        return {k: record[k] for k in self._keys}

    def __repr__(self) -> str:
        return f"PreparedSource({self._ds!r}, keys={self._keys})"
