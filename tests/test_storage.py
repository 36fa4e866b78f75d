"""A workdir on a non-local filesystem: every artifact of a training run lands there, none on local disk.

`etils.epath.testing.mock_epath` serves gs://bucket/... from a temporary directory; orbax writes array data
through TensorStore, not epath, so its GCS key-value store is pointed at the same directory."""

import os

import pytest
from etils.epath import testing as epath_testing
from orbax.checkpoint._src.path import gcs_utils

from conftest import smoke
from maginet_jax import train
from maginet_jax.training.writers import read_metrics


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
    """Yields the local directory that serves gs:// (gs://bucket/x is <dir>/bucket/x)."""
    root = tmp_path / "gcs"
    root.mkdir()
    local = lambda p: str(p).replace("gs://", f"{root}/", 1) if str(p).startswith("gs://") else p

    def one(fn):
        return lambda original, path, *a, **k: fn(original, local(path), *a, **k)

    def two(original, path, dst, *a, **k):
        return original(local(path), local(dst), *a, **k)

    def glob(original, pattern):
        found = original(local(pattern))
        return [f.replace(f"{root}/", "gs://", 1) for f in found] if str(pattern).startswith("gs://") else found

    def walk(original, top, **k):
        for d, dirs, files in original(local(top), **k):
            yield (d.replace(f"{root}/", "gs://", 1) if str(top).startswith("gs://") else d), dirs, files

    call = lambda original, *a, **k: original(*a, **k)
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs",
                        lambda path: {"driver": "file", "path": local(path)})
    with epath_testing.mock_epath(**{f: one(call) for f in ("open", "exists", "isdir", "listdir", "makedirs", "mkdir",
                                                          "remove", "rmtree", "stat")},
                                  rename=two, replace=two, copy=two, glob=glob, walk=walk):
        yield root


def test_training_writes_every_artifact_to_the_workdir(fake_gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written to a relative local path would appear here
    c = smoke("refine", num_train_steps=4, eval_every_steps=4, checkpoint_every_steps=2)  # the fastest stage
    state = train.train_and_evaluate(c, "gs://bucket/run")
    assert int(state.step) == 4
    run = fake_gcs / "bucket" / "run"
    names = sorted(os.listdir(run))
    assert [n for n in names if not n.startswith("events.out.tfevents")] == [
        "checkpoints", "config.json", "metrics.jsonl", "samples"] and len(names) == 5
    assert sorted(os.listdir(run / "checkpoints")) == ["2", "4"]
    assert sorted(os.listdir(run / "samples")) == ["step_0000000.png", "step_0000004.png"]
    assert os.path.getsize(run / names[-1 if names[-1].startswith("events") else 0]) > 0
    assert [r["step"] for r in read_metrics("gs://bucket/run")][0] == 0
    assert sorted(os.listdir(tmp_path)) == ["gcs"]  # nothing on local disk by accident

    resumed = train.train_and_evaluate(c, "gs://bucket/run")  # and it resumes from there
    assert int(resumed.step) == 4


def test_raw_and_prepared_data_read_from_a_non_local_root(fake_gcs, tmp_path):
    import numpy as np
    from data_pipeline import make_fixture
    from data_pipeline.ffhq_tfds import prepare
    from data_pipeline.ffhq_uv_intrinsics import FFHQUVIntrinsicsSource
    local = str(fake_gcs / "bucket" / "raw")
    make_fixture.write_fixture(local, num_subjects=16, resolution=32, seed=0)  # 3 held out at 0.25
    kw = dict(split="train", resolution=16, passes=("albedo", "normal"), test_fraction=0.25)
    here, there = FFHQUVIntrinsicsSource(local, **kw), FFHQUVIntrinsicsSource("gs://bucket/raw", **kw)
    assert len(here) == len(there) > 0
    for k, v in here[0].items():
        np.testing.assert_array_equal(there[0][k], v)
    builder = prepare("gs://bucket/raw", tfds_dir=str(tmp_path / "tfds"), resolution=16, test_fraction=0.25)
    assert builder.info.metadata["raw_root"] == "gs://bucket/raw"
    assert sum(s.num_examples for s in builder.info.splits.values()) == 16
    prepare("gs://bucket/raw", tfds_dir=str(tmp_path / "tfds"), resolution=16, test_fraction=0.25)  # not stale
