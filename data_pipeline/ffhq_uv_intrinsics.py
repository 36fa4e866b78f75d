"""Direct PNG reader for a user's raw FFHQ-UV-Intrinsics copy (never shipped; CC BY-NC-ND 4.0).

Layout: `<root>/Data/<ID>/{ambient_occlusion, diffuse, normal, specular, translucency, light_normalized}.png`;
optionally FFHQ-UV's lit textures `<uv_maps_dir>/<ID>.png` (same IDs). Which file is the network input is
`input_file`: "uv_map" (FFHQ-UV's texture, the default) or one of the pass files, e.g. "diffuse".
The face mask is texture validity: texels where the albedo is not black.
The split is by subject ID hash, so it is stable when subjects are added. Roots may be any path
`etils.epath` reads (local, gs://, ...).
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
from etils import epath
from PIL import Image

from maginet_jax import image_io
from maginet_jax.errors import UserError, first_line

# Our pass name → file stem in FFHQ-UV-Intrinsics.
PASS_FILES = {"albedo": "light_normalized", "ambient_occlusion": "ambient_occlusion", "normal": "normal",
              "specular": "specular", "translucency": "translucency", "raw_diffuse": "diffuse"}
CHANNELS = {"albedo": 3, "ambient_occlusion": 1, "normal": 3, "specular": 1, "translucency": 1,
            "raw_diffuse": 3, "image": 3}


def is_test_subject(subject_id: str, test_fraction: float) -> bool:
    """Deterministic hash split: a subject's side never changes, whatever else is in the dataset."""
    h = int(hashlib.sha256(subject_id.encode()).hexdigest()[:8], 16)
    return h / 2**32 < test_fraction


def fit(codes: np.ndarray, channels: int, size: int) -> np.ndarray:
    """Decoded codes (`image_io.decode`) with `channels` channels (grey repeated; colour to ITU-R 601 luma, as
    Pillow's "L") at size×size (box-filtered if needed)."""
    if codes.shape[2] != channels:
        if codes.shape[2] == 1:
            codes = np.repeat(codes, channels, axis=2)
        else:
            luma = codes.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
            codes = np.round(luma)[..., None].astype(codes.dtype)
    if codes.shape[:2] != (size, size):
        chans = [np.asarray(Image.fromarray(codes[..., c]).resize((size, size), Image.BOX)) for c in range(channels)]
        codes = np.stack(chans, axis=-1).astype(codes.dtype)
    return codes


class BadSubjectData(ValueError):
    """A subject's file is missing, corrupt, or of the wrong size or channel count."""

    def __init__(self, subject: str, path: str, reason: str):
        super().__init__(f"subject {subject}: {path}: {reason}")
        self.subject, self.path, self.reason = subject, str(path), reason


def read_codes(path, subject: str = "") -> np.ndarray:
    """`image_io.decode` of the file at `path`; BadSubjectData (naming `subject`) if it is missing or unreadable."""
    try:
        return image_io.decode(epath.Path(path).read_bytes())
    except FileNotFoundError:
        raise BadSubjectData(subject, path, "missing") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadSubjectData(subject, path, f"corrupt or truncated image ({first_line(e)})") from None


def read_png(path, channels: int, size: int, subject: str = "") -> np.ndarray:
    """The image at `path` as (size, size, channels) uint8 or uint16 codes (`fit` of `read_codes`)."""
    return fit(read_codes(path, subject), channels, size)


def layout(root: str, input_file: str, uv_maps_dir: str = "") -> tuple[epath.Path, epath.Path, list[str]]:
    """(Data/ directory, lit-texture directory, sorted subject IDs) of the raw copy at `root`; ValueError
    if it is not one, or if `input_file` is the lit texture and there is none."""
    if input_file != "uv_map" and input_file not in PASS_FILES.values():
        raise ValueError(f"input_file {input_file!r} is not 'uv_map' or one of {sorted(PASS_FILES.values())}")
    data = epath.Path(root) / "Data"
    if not data.is_dir():
        raise ValueError(f"{root!r} is not an FFHQ-UV-Intrinsics copy: it has no Data/ directory")
    uv_dir = epath.Path(uv_maps_dir) if uv_maps_dir else epath.Path(root) / "uv-maps"
    if input_file == "uv_map" and not uv_dir.is_dir():
        raise ValueError(f"FFHQ-UV textures not found at {str(uv_dir)!r}: set data.uv_maps_dir, or "
                         f"data.input_file=diffuse to learn from the raw diffuse pass")
    # Hidden directories (.ipynb_checkpoints, a sync tool's) are not subjects.
    return data, uv_dir, sorted(d.name for d in data.iterdir() if d.is_dir() and not d.name.startswith("."))


def subject_files(data: epath.Path, uv_dir: epath.Path, subject: str, stems: dict[str, str]) -> dict[str, epath.Path]:
    """{record key: PNG path} of one subject, for {record key: file stem} ("uv_map" = the lit texture)."""
    return {k: uv_dir / f"{subject}.png" if stem == "uv_map" else data / subject / f"{stem}.png"
            for k, stem in stems.items()}


def parse_pass_files(spec: str) -> dict[str, str]:
    """"albedo=diffuse,raw_diffuse=light_normalized" → PASS_FILES with those targets replaced ("" = default)."""
    files = dict(PASS_FILES)
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, stem = item.partition("=")
        if name not in PASS_FILES or not stem:
            raise ValueError(f"pass_files entry {item!r}: expected <pass>=<file stem> with a pass from "
                             f"{tuple(PASS_FILES)}")
        files[name] = stem
    return files


class FFHQUVIntrinsicsSource:
    """Random access to one split of a raw FFHQ-UV-Intrinsics copy, records like `SyntheticSource`'s."""

    def __init__(self, root: str, *, split: str, resolution: int, passes: Sequence[str] = ("albedo",),
                 input_file: str = "uv_map", uv_maps_dir: str = "", test_fraction: float = 0.05,
                 pass_files: str = ""):
        data_dir, self._uv_dir, ids = layout(root, input_file, uv_maps_dir)
        self._ids = [i for i in ids if is_test_subject(i, test_fraction) == (split == "test")]
        if not self._ids:
            raise ValueError(f"no {split} subjects under {str(data_dir)!r}")
        self._data_dir, self._res, self._passes, self._input = data_dir, int(resolution), tuple(passes), input_file
        self._split = split
        files = parse_pass_files(pass_files)
        self._stems = {"image": input_file, **{p: files[p] for p in set(self._passes) | {"albedo"}}}
        # A file stem that the first subjects all lack is a typo (files are otherwise read only when a batch
        # needs them: a run would fail at its first evaluation, its workdir written).
        first = self._ids[:3]
        for key in self._stems:
            paths = [subject_files(data_dir, self._uv_dir, i, {key: self._stems[key]})[key] for i in first]
            if not any(path.exists() for path in paths):
                others = f", nor does the {key} file of {', '.join(first[1:])}" if first[1:] else ""
                raise ValueError(f"{paths[0]} does not exist{others}: check data.input_file, data.pass_files and "
                                 "data.uv_maps_dir")

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        files = subject_files(self._data_dir, self._uv_dir, self._ids[index], self._stems)
        try:
            rec = {k: read_png(path, CHANNELS[k], self._res, self._ids[index]) for k, path in files.items()}
        except BadSubjectData as e:  # one line, not a traceback from a grain worker
            raise UserError(f"{e} (data.source='ffhq_uv_intrinsics' checks every file when it prepares the "
                            "dataset, and can skip bad subjects)") from None
        valid = np.any(rec["albedo"] > 0, axis=-1, keepdims=True)
        rec["mask"] = np.where(valid, 255, 0).astype(np.uint8)
        if "albedo" not in self._passes:
            del rec["albedo"]
        return rec

    def __repr__(self) -> str:
        return (f"FFHQUVIntrinsicsSource(data_dir={str(self._data_dir)!r}, split={self._split!r}, n={len(self)}, "
                f"resolution={self._res}, input={self._input!r}, passes={self._passes})")
