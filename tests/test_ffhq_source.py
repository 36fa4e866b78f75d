"""The raw FFHQ-UV-Intrinsics reader, on a fixture tree in the dataset's exact layout."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from data_pipeline import loader, make_fixture
from data_pipeline.ffhq_uv_intrinsics import FFHQUVIntrinsicsSource, is_test_subject, layout
from conftest import REPO


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ffhq"))
    make_fixture.write_fixture(root, num_subjects=24, resolution=32, seed=0)
    return root


def test_layout(fixture_root):
    assert sorted(os.listdir(os.path.join(fixture_root, "Data", "000003"))) == [
        "ambient_occlusion.png", "diffuse.png", "light_normalized.png", "normal.png", "specular.png",
        "translucency.png"]
    assert os.path.isfile(os.path.join(fixture_root, "uv-maps", "000003.png"))


def test_hidden_directories_are_not_subjects(fixture_root, tmp_path):
    root = str(tmp_path / "raw")
    shutil.copytree(fixture_root, root)
    os.makedirs(os.path.join(root, "Data", ".ipynb_checkpoints"))
    assert layout(root, "uv_map")[2] == layout(fixture_root, "uv_map")[2] == [f"{i:06d}" for i in range(24)]


def test_split_is_disjoint_complete_and_by_id(fixture_root):
    train = FFHQUVIntrinsicsSource(fixture_root, split="train", resolution=32, test_fraction=0.25)
    test = FFHQUVIntrinsicsSource(fixture_root, split="test", resolution=32, test_fraction=0.25)
    assert len(train) + len(test) == 24 and len(test) > 0
    assert set(train._ids).isdisjoint(test._ids)
    assert all(is_test_subject(i, 0.25) for i in test._ids)


def test_records_match_the_generator(fixture_root):
    from data_pipeline import synthetic
    src = FFHQUVIntrinsicsSource(fixture_root, split="train", resolution=32, test_fraction=0.25,
                                 passes=("albedo", "ambient_occlusion", "normal"))
    subject = src._ids[0]
    rec = src[0]
    sample = synthetic.generate(0, int(subject), 32, "train")
    np.testing.assert_array_equal(rec["image"], synthetic.quantize(sample["image"]))
    np.testing.assert_array_equal(rec["albedo"], synthetic.quantize(sample["albedo"]))
    assert rec["ambient_occlusion"].shape == (32, 32, 1)
    # Texture validity recovers the generator's mask wherever its albedo is not black.
    np.testing.assert_array_equal(rec["mask"][..., 0] > 0, synthetic.quantize(sample["albedo"]).any(-1))
    assert np.mean(rec["mask"] > 0) > 0.5


def test_resize_on_read_and_other_input(fixture_root):
    src = FFHQUVIntrinsicsSource(fixture_root, split="train", resolution=16, input_file="diffuse",
                                 passes=("albedo",))
    rec = src[1]
    assert rec["image"].shape == (16, 16, 3) and rec["albedo"].shape == (16, 16, 3)
    batch = next(iter(loader.make_loader(src, batch_size=4, crop_size=16, train=True, seed=0)))
    assert batch["image"].shape == (4, 16, 16, 3) and batch["mask"].max() == 1.0


def test_target_files_are_an_option(fixture_root):
    """data.pass_files, as the prepared dataset has it (was ignored by this reader: albedo=diffuse trained on
    light_normalized all the same)."""
    default = FFHQUVIntrinsicsSource(fixture_root, split="train", resolution=32, passes=("albedo", "raw_diffuse"))
    swapped = FFHQUVIntrinsicsSource(fixture_root, split="train", resolution=32, passes=("albedo",),
                                     pass_files="albedo=diffuse")
    np.testing.assert_array_equal(swapped[0]["albedo"], default[0]["raw_diffuse"])
    assert np.any(default[0]["albedo"] != default[0]["raw_diffuse"])
    with pytest.raises(ValueError, match="expected <pass>=<file stem>"):
        FFHQUVIntrinsicsSource(fixture_root, split="train", resolution=32, pass_files="albdo=diffuse")
    # a file no subject has: was found when a batch needed it (a run's first evaluation, its workdir written)
    with pytest.raises(ValueError, match=r"Data/\d+/lightnormalized.png does not exist, nor does the albedo file of "
                                         r"\d+, \d+: check data.input_file, data.pass_files"):
        FFHQUVIntrinsicsSource(fixture_root, split="train", resolution=32, pass_files="albedo=lightnormalized")


def test_errors(fixture_root, tmp_path):
    with pytest.raises(ValueError, match="no Data/ directory"):
        FFHQUVIntrinsicsSource(str(tmp_path), split="train", resolution=32)
    with pytest.raises(ValueError, match="FFHQ-UV textures not found"):
        FFHQUVIntrinsicsSource(fixture_root, split="train", resolution=32, uv_maps_dir=str(tmp_path / "none"))
    with pytest.raises(ValueError, match="input_file"):
        FFHQUVIntrinsicsSource(fixture_root, split="train", resolution=32, input_file="albedo_lit")


def _make_fixture(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "data_pipeline.make_fixture", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_make_fixture_cli(tmp_path):
    r = _make_fixture(f"--out={tmp_path / 'raw'}", "--num_subjects=2", "--resolution=16", f"--seed={2**32 - 1}")
    assert r.returncode == 0 and sorted(os.listdir(tmp_path / "raw" / "Data")) == ["000000", "000001"]
    precious = tmp_path / "raw" / "Data" / "000000" / "normal.png"
    precious.write_bytes(b"a real dataset's file")
    r = _make_fixture(f"--out={tmp_path / 'raw'}", "--num_subjects=1", "--resolution=16")
    assert r.returncode == 1 and r.stderr.strip().startswith(
        f"make_fixture: error: --out={str(tmp_path / 'raw')!r} is not empty") and len(r.stderr.splitlines()) == 1
    assert precious.read_bytes() == b"a real dataset's file"
    r = _make_fixture(f"--out={tmp_path / 'raw'}", "--num_subjects=1", "--resolution=16", "--overwrite")
    assert r.returncode == 0 and precious.read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "file").write_text("")
    r = _make_fixture(f"--out={tmp_path / 'file' / 'raw'}")
    assert r.returncode == 1 and r.stderr.strip() == (
        f"make_fixture: error: cannot write under --out={str(tmp_path / 'file' / 'raw')!r}: Not a directory: "
        f"{str(tmp_path / 'file' / 'raw')!r}")


@pytest.mark.parametrize("flag, error", [
    ("--out=", "flag --out=: an empty path would write into the current directory: give --out=. for it"),
    ("--seed=-1", "flag --seed=-1: -1 is not an integer in the range [0, 4294967295]"),
    ("--seed=4294967296", "flag --seed=4294967296: 4294967296 is not an integer in the range [0, 4294967295]"),
    ("--resolution=1025", "flag --resolution=1025: 1025 is not an integer in the range [16, 1024]"),
    ("--num_subjects=1000001", "flag --num_subjects=1000001: 1000001 is not an integer in the range [1, 1000000]"),
])
def test_make_fixture_refuses_bad_flags_before_writing(tmp_path, flag, error):
    """An empty --out wrote into the current directory, past the guard of a non-empty one; a negative seed was a
    traceback, and a million pixels a side one of allocating 3.6 TiB, each after uv-maps/ was made. Each is one line
    now, and nothing is written."""
    precious = tmp_path / "Data" / "000000" / "normal.png"
    precious.parent.mkdir(parents=True)
    precious.write_bytes(b"a real dataset's file")
    r = _make_fixture(f"--out={tmp_path / 'raw'}", "--num_subjects=1", "--resolution=16", flag, cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip() == f"make_fixture: error: {error}"
    assert os.listdir(tmp_path) == ["Data"] and os.listdir(precious.parent) == ["normal.png"]
    assert precious.read_bytes() == b"a real dataset's file"


@pytest.mark.parametrize("case", ["missing", "truncated"])
def test_a_bad_file_names_its_subject(fixture_root, tmp_path, case):
    """Read in a grain worker, a missing or broken file was a 49-line traceback from grain; it is one line
    naming the subject and the file (a UserError, which the CLIs print as one line)."""
    from maginet_jax.errors import UserError
    root = str(tmp_path / "raw")
    shutil.copytree(fixture_root, root)
    src = FFHQUVIntrinsicsSource(root, split="train", resolution=32, test_fraction=0.25)
    subject = src._ids[1]
    path = os.path.join(root, "Data", subject, "light_normalized.png")
    if case == "missing":
        os.remove(path)
    else:
        open(path, "r+b").truncate(100)
    with pytest.raises(UserError, match=rf"^subject {subject}: .*light_normalized\.png") as e:
        src[1]
    assert "\n" not in str(e.value)
    assert set(src[0]) == {"image", "albedo", "mask"}  # the others still read
