"""The `ffhq_uv_intrinsics` TFDS builder on fixture trees in the dataset's exact layout: build, split, masks,
bad data (strict and lenient), atomic builds, the build CLI, and training on the prepared dataset."""

import glob
import logging
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
from ml_collections import ConfigDict

from conftest import REPO, smoke
from data_pipeline import loader, make_fixture
from data_pipeline.ffhq_tfds import BadSubjectData, prepare
from data_pipeline.ffhq_uv_intrinsics import FFHQUVIntrinsicsSource, is_test_subject
from maginet_jax.errors import UserError

PASSES = ("albedo", "ambient_occlusion", "normal", "specular", "translucency", "raw_diffuse")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("raw"))
    make_fixture.write_fixture(root, num_subjects=24, resolution=64, seed=0)
    return root


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory):
    tfds_dir = str(tmp_path_factory.mktemp("tfds"))
    return prepare(raw, tfds_dir=tfds_dir, resolution=32, test_fraction=0.25), tfds_dir


def test_split_by_subject_hash_listed_in_the_info(built):
    builder, _ = built
    held_out = builder.info.metadata["held_out_subjects"]
    assert held_out == [f"{i:06d}" for i in range(24) if is_test_subject(f"{i:06d}", 0.25)] and held_out
    ds = builder.as_data_source()
    assert len(ds["train"]) + len(ds["test"]) == 24 and len(ds["test"]) == len(held_out)
    assert sorted(ds["test"][i]["subject_id"].decode() for i in range(len(ds["test"]))) == held_out
    assert builder.info.metadata["skipped_subjects"] == {}


def test_records_match_the_raw_reader(built, raw):
    builder, _ = built
    ds = builder.as_data_source(split="test")
    raw_src = FFHQUVIntrinsicsSource(raw, split="test", resolution=32, passes=PASSES, test_fraction=0.25)
    order = {ds[i]["subject_id"].decode(): i for i in range(len(ds))}
    for j, subject in enumerate(raw_src._ids):
        ours, theirs = ds[order[subject]], raw_src[j]
        np.testing.assert_array_equal(ours["mask"], theirs["mask"])
        for k in ("image", *PASSES):
            scale = 257 if k == "normal" else 1  # 16-bit stored normals vs the raw reader's 8-bit codes
            diff = np.abs(ours[k].astype(np.int64) - theirs[k].astype(np.int64) * scale)
            assert diff.max() <= scale, k  # 2×2 area averages rounded once or twice
        assert ours["normal"].dtype == np.uint16 and ours["mask"].shape == (32, 32, 1)


def test_grain_reads_the_prepared_dataset(built, raw):
    _, tfds_dir = built
    c = ConfigDict(dict(source="ffhq_uv_intrinsics", root=raw, tfds_dir=tfds_dir, resolution=32,
                        input_file="uv_map", uv_maps_dir="", test_fraction=0.25, lenient=False, seed=0,
                        pass_files=""))
    src = loader.make_source(c, "train", 0, ("albedo", "normal"))
    batch = next(iter(loader.make_loader(src, batch_size=4, crop_size=24, train=True, seed=0)))
    assert set(batch) == {"image", "mask", "albedo", "normal"}
    assert batch["normal"].shape == (4, 24, 24, 3) and batch["normal"].dtype == np.float32
    assert set(np.unique(batch["mask"])) <= {0.0, 1.0}


def test_split_is_stable_when_subjects_are_added(built, raw, tmp_path):
    bigger = str(tmp_path / "raw")
    shutil.copytree(raw, bigger)
    make_fixture.write_fixture(str(tmp_path / "more"), num_subjects=30, resolution=64, seed=0)
    for i in range(24, 30):
        shutil.copytree(tmp_path / "more" / "Data" / f"{i:06d}", os.path.join(bigger, "Data", f"{i:06d}"))
        shutil.copy(tmp_path / "more" / "uv-maps" / f"{i:06d}.png", os.path.join(bigger, "uv-maps"))
    grown = prepare(bigger, tfds_dir=str(tmp_path / "tfds"), resolution=32, test_fraction=0.25)
    old = built[0].info.metadata["held_out_subjects"]
    new = grown.info.metadata["held_out_subjects"]
    assert [s for s in new if int(s) < 24] == old


def _break(root, case):
    folder = os.path.join(root, "Data", "000005")
    from PIL import Image
    if case == "truncated":
        data = open(os.path.join(folder, "normal.png"), "rb").read()
        open(os.path.join(folder, "normal.png"), "wb").write(data[:200])
        return "normal.png", "corrupt or truncated"
    if case == "missing":
        os.remove(os.path.join(folder, "specular.png"))
        return "specular.png", "missing"
    if case == "size":
        Image.new("L", (64, 48)).save(os.path.join(folder, "translucency.png"))
        return "translucency.png", "size 64x48"
    Image.new("L", (64, 64), 128).save(os.path.join(folder, "light_normalized.png"))
    return "light_normalized.png", "1 channel (a grey image); expected 3"


@pytest.mark.parametrize("case", ["truncated", "missing", "size", "channels"])
def test_bad_data_strict_then_lenient(raw, tmp_path, case, caplog):
    root = str(tmp_path / "raw")
    shutil.copytree(raw, root)
    name, reason = _break(root, case)
    tfds_dir = str(tmp_path / "tfds")
    with pytest.raises(BadSubjectData) as e:
        prepare(root, tfds_dir=tfds_dir, resolution=32, test_fraction=0.25)
    assert e.value.subject == "000005" and e.value.path.endswith(name) and reason in str(e.value)
    assert "subject 000005" in str(e.value) and name in str(e.value)
    # nothing that a later read would take for a complete dataset
    dataset_dir = os.path.join(tfds_dir, "ffhq_uv_intrinsics", "r32-uv_map-test250")
    assert not os.path.isdir(dataset_dir) or os.listdir(dataset_dir) == []
    lenient = prepare(root, tfds_dir=tfds_dir, resolution=32, test_fraction=0.25, lenient=True)
    skipped = lenient.info.metadata["skipped_subjects"]
    assert list(skipped) == ["000005"] and name in skipped["000005"]
    assert sum(s.num_examples for s in lenient.info.splits.values()) == 23
    with caplog.at_level(logging.WARNING):  # a strict run reuses it, and is told what it leaves out
        prepare(root, tfds_dir=tfds_dir, resolution=32, test_fraction=0.25)
    assert "leaves out 1 subjects with bad files" in caplog.text and f"000005: {skipped['000005']}" in caplog.text


def test_a_split_left_without_subjects_is_one_error(raw, tmp_path):
    """Lenient, with every subject of a split bad, the build ended in TFDS's AssertionError "No examples were
    yielded" after a traceback. It is one line saying why, and leaves nothing a later run would take for the
    dataset (the train split was written before the test split failed)."""
    root, tfds_dir = str(tmp_path / "raw"), str(tmp_path / "tfds")
    shutil.copytree(raw, root)
    held_out = [f"{i:06d}" for i in range(24) if is_test_subject(f"{i:06d}", 0.25)]
    for subject in held_out:
        os.remove(os.path.join(root, "Data", subject, "specular.png"))
    with pytest.raises(ValueError, match=rf"^no usable subjects remain in the test split: all {len(held_out)} have "
                                         rf"bad files \(skipped as lenient\), e\.g\. subject {held_out[0]}: "
                                         r"\S+/specular\.png: missing$"):
        prepare(root, tfds_dir=tfds_dir, resolution=32, test_fraction=0.25, lenient=True)
    assert os.listdir(os.path.join(tfds_dir, "ffhq_uv_intrinsics", "r32-uv_map-test250")) == []


def test_build_cli(raw, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "data_pipeline.build_ffhq_uv_intrinsics", *a],
                                    cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    root = str(tmp_path / "raw")
    shutil.copytree(raw, root)
    os.remove(os.path.join(root, "Data", "000007", "diffuse.png"))
    args = [f"--root={root}", f"--tfds_dir={tmp_path / 'tfds'}", "--resolution=32", "--test_fraction=0.25"]
    r = run(*args)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("build_ffhq_uv_intrinsics: error: subject 000007: ")
    r = run(*args, "--lenient")
    assert r.returncode == 0 and "skipped 1: ['000007']" in r.stdout
    r = run(f"--root={tmp_path / 'nowhere'}", f"--tfds_dir={tmp_path / 'tfds2'}")  # TFDS's check: a traceback
    assert r.returncode == 1 and not (tmp_path / "tfds2").exists()
    assert r.stderr.strip() == (f"build_ffhq_uv_intrinsics: error: {str(tmp_path / 'nowhere')!r} "  # no TFDS warning
                                "is not an FFHQ-UV-Intrinsics copy: it has no Data/ directory")
    r = run(*args, f"--uv_maps_dir={tmp_path / 'none'}")  # the error names the flags, not the training config's keys
    assert r.returncode == 1 and r.stderr.strip() == (
        f"build_ffhq_uv_intrinsics: error: FFHQ-UV textures not found at {str(tmp_path / 'none')!r}: set "
        "--uv_maps_dir, or --input_file=diffuse to learn from the raw diffuse pass")
    r = run()
    assert r.returncode == 1 and r.stderr.strip() == ("build_ffhq_uv_intrinsics: error: flag --root=None: "
                                                      "Flag --root must have a value other than None.")


def test_training_prepares_the_dataset_on_first_use(raw, tmp_path):
    from maginet_jax.train import train_and_evaluate
    c = smoke("refine", **{"data.source": "ffhq_uv_intrinsics", "data.root": raw, "data.resolution": 32,
                           "data.tfds_dir": str(tmp_path / "tfds"), "data.test_fraction": 0.25,
                           "num_train_steps": 2, "eval_every_steps": 2})
    state = train_and_evaluate(c, str(tmp_path / "run"))
    assert int(state.step) == 2
    assert os.path.isdir(tmp_path / "tfds" / "ffhq_uv_intrinsics" / "r32-uv_map-test250" / "1.1.0")


def test_target_files_are_an_option(built, raw):
    builder, tfds_dir = built
    swapped = prepare(raw, tfds_dir=tfds_dir, resolution=32, test_fraction=0.25, pass_files="albedo=diffuse")
    assert swapped.builder_config.name == "r32-uv_map-test250-albedo.diffuse"
    assert swapped.info.metadata["pass_files"]["albedo"] == "diffuse"
    a, b = builder.as_data_source(split="test")[0], swapped.as_data_source(split="test")[0]
    assert a["subject_id"] == b["subject_id"]
    np.testing.assert_array_equal(b["albedo"], a["raw_diffuse"])
    with pytest.raises(ValueError, match="expected <pass>=<file stem>"):
        prepare(raw, tfds_dir=tfds_dir, resolution=32, test_fraction=0.25, pass_files="albdo=diffuse")


def test_an_unwritable_tfds_dir_is_one_error(raw, tmp_path):
    (tmp_path / "file").write_text("")  # (a directory without write permission is writable by root)
    with pytest.raises(ValueError, match=f"cannot prepare the dataset under data.tfds_dir='{tmp_path}/file/tfds': "
                                         "Not a directory"):
        prepare(raw, tfds_dir=str(tmp_path / "file" / "tfds"), resolution=32, test_fraction=0.25)


def test_a_damaged_prepared_dataset_is_one_error(built, raw, tmp_path):
    """Its dataset_info.json cut short (was protobuf's ParseError, a traceback), a data file cut short (was
    array_record's RuntimeError at the first batch, a traceback)."""
    tfds_dir = str(tmp_path / "tfds")
    shutil.copytree(built[1], tfds_dir)
    (info,) = glob.glob(os.path.join(tfds_dir, "ffhq_uv_intrinsics", "r32-uv_map-test250", "*", "dataset_info.json"))
    good = open(info).read()
    open(info, "w").write("{")
    with pytest.raises(ValueError, match=r"the prepared dataset ffhq_uv_intrinsics/r32-uv_map-test250 under "
                                         rf"data.tfds_dir='{tfds_dir}' is damaged \(.*\): remove its directory"):
        prepare(raw, tfds_dir=tfds_dir, resolution=32, test_fraction=0.25)
    open(info, "w").write(good)
    for path in glob.glob(os.path.join(os.path.dirname(info), "*train.array_record*")):
        os.truncate(path, 100)
    source = loader.make_source(ConfigDict(dict(source="ffhq_uv_intrinsics", root=raw, tfds_dir=tfds_dir,
                                                resolution=32, input_file="uv_map", pass_files="", uv_maps_dir="",
                                                test_fraction=0.25, lenient=False)), "train", 0, ("albedo",))
    with pytest.raises(UserError, match=rf"^cannot read record 0 of the prepared dataset '{os.path.dirname(info)}' "
                                        r"\(.+\): remove its directory to prepare it again$"):
        source[0]


def test_prepared_data_from_another_root_is_refused(built, raw, tmp_path):
    _, tfds_dir = built
    copy = str(tmp_path / "copy")
    shutil.copytree(raw, copy)
    _break(copy, "truncated")  # never read: the copy's name matches the dataset prepared from `raw`
    with pytest.raises(ValueError, match=f"was built from '{raw}', not from data.root='{copy}': delete "):
        prepare(copy, tfds_dir=tfds_dir, resolution=32, test_fraction=0.25)


def test_prepared_data_whose_files_changed_is_refused(raw, tmp_path):
    root, tfds_dir = str(tmp_path / "raw"), str(tmp_path / "tfds")
    shutil.copytree(raw, root)
    prepare(root, tfds_dir=tfds_dir, resolution=32, test_fraction=0.25)
    prepare(root, tfds_dir=tfds_dir, resolution=32, test_fraction=0.25)  # unchanged: reused
    _break(root, "size")
    shutil.copytree(os.path.join(root, "Data", "000003"), os.path.join(root, "Data", "000099"))
    with pytest.raises(ValueError, match=r"changed since .* was prepared: files of 1 subjects changed, 1 subjects "
                                         r"added, 0 removed \(e.g. 000005\)"):
        prepare(root, tfds_dir=tfds_dir, resolution=32, test_fraction=0.25)


def test_prepared_data_from_other_textures_is_refused(raw, tmp_path):
    """Another --uv_maps_dir of the same subjects: its message used to blame data.root alone."""
    root, tfds_dir, textures = str(tmp_path / "raw"), str(tmp_path / "tfds"), str(tmp_path / "textures")
    shutil.copytree(raw, root)
    prepare(root, tfds_dir=tfds_dir, resolution=32, test_fraction=0.25)
    shutil.copytree(os.path.join(root, "uv-maps"), textures)
    with pytest.raises(ValueError, match=rf"^data.root='{root}' and data.uv_maps_dir='{textures}' changed since "):
        prepare(root, tfds_dir=tfds_dir, resolution=32, test_fraction=0.25, uv_maps_dir=textures)


def test_the_paper_resolution_with_default_options(tmp_path):
    """512² with the default input and split is one of the builder's listed configs, which TFDS refuses to take as
    another object of the same name: the paper's own setting failed to prepare until it was asked for as listed."""
    root = str(tmp_path / "raw")
    make_fixture.write_fixture(root, num_subjects=17, resolution=512, seed=0)  # subject 16: the first held out
    builder = prepare(root, tfds_dir=str(tmp_path / "tfds"))
    assert builder.builder_config.name == "r512-uv_map-test050"
    source = pickle.loads(pickle.dumps(builder.as_data_source(split="train")))  # as a grain worker gets it
    record = source[0]
    assert record["image"].shape == (512, 512, 3) and record["mask"].shape == (512, 512, 1)
