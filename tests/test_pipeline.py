"""Source → decode → augment → batch: dtypes, shared geometry, normal flips, sharding and exact resume."""

import os
import signal
import subprocess
import sys
import time

import grain
import numpy as np
import pytest

from conftest import REPO
from data_pipeline import loader, synthetic


def _source(n=16, res=24, split="train", passes=("albedo", "normal")):
    return synthetic.SyntheticSource(num_records=n, resolution=res, split=split, seed=3, passes=passes)


def test_source_records():
    src = _source()
    rec = src[5]
    assert set(rec) == {"image", "mask", "albedo", "normal"}
    assert rec["image"].dtype == np.uint8 and rec["normal"].dtype == np.uint16
    assert rec["image"].shape == (24, 24, 3) and rec["mask"].shape == (24, 24, 1)
    assert set(np.unique(rec["mask"])) <= {0, 255}
    np.testing.assert_array_equal(src[5]["albedo"], rec["albedo"])
    assert not np.array_equal(_source(split="test")[5]["albedo"], rec["albedo"])
    with pytest.raises(IndexError):
        src[16]
    with pytest.raises(ValueError, match="unknown passes"):
        _source(passes=("albedo", "depth"))


def test_decode_scales_by_dtype():
    out = loader.Decode().map({"a": np.array([0, 255], np.uint8), "n": np.array([65535], np.uint16),
                                   "f": np.array([0.5], np.float32)})
    np.testing.assert_allclose(out["a"], [0.0, 1.0])
    np.testing.assert_allclose(out["n"], [1.0])
    np.testing.assert_allclose(out["f"], [0.5])


def _coded_record(h=8, w=8):
    # Every key carries the same position code, so any geometric mismatch between keys shows up.
    pos = (np.arange(h * w, dtype=np.float32).reshape(h, w, 1) + 1) / (h * w + 1)
    mask = np.ones((h, w, 1), np.float32)
    mask[:, :2] = 0.0
    normal = np.concatenate([np.full((h, w, 1), 0.8), pos, np.full((h, w, 1), 0.9)], -1).astype(np.float32) * mask
    return {"image": np.repeat(pos, 3, -1), "albedo": np.repeat(pos, 3, -1), "mask": mask, "normal": normal,
            "lights": np.arange(4, dtype=np.float32)}


def test_flip_mirrors_every_key_and_negates_normal_x_inside_mask():
    rec = _coded_record()
    out = loader.flip_horizontal(rec)
    for k in ("image", "albedo", "mask"):
        np.testing.assert_array_equal(out[k], rec[k][:, ::-1])
    np.testing.assert_array_equal(out["lights"], rec["lights"])
    inside = out["mask"][..., 0] > 0
    np.testing.assert_allclose(out["normal"][..., 0][inside], 0.2, rtol=1e-6)  # n_x = 0.6 → -0.6
    assert np.all(out["normal"][~inside] == 0)  # invalid texels stay zero
    np.testing.assert_array_equal(out["normal"][..., 1:], rec["normal"][:, ::-1, 1:])
    # Flipping twice restores the record.
    np.testing.assert_allclose(loader.flip_horizontal(out)["normal"], rec["normal"], atol=1e-7)


def test_random_crop_flip_is_shared_across_keys_and_seeded():
    rec = _coded_record(12, 12)
    aug = loader.RandomCropFlip(8)
    flips = 0
    for seed in range(12):
        out = aug.random_map(rec, np.random.default_rng(seed))
        assert out["image"].shape == (8, 8, 3) and out["normal"].shape == (8, 8, 3)
        np.testing.assert_array_equal(out["image"][..., :1], out["albedo"][..., :1])
        np.testing.assert_array_equal(out["image"][..., 1:2], out["normal"][..., 1:2] / out["mask"].clip(1e-9)
                                      * out["mask"] + out["image"][..., 1:2] * (1 - out["mask"]))
        again = aug.random_map(rec, np.random.default_rng(seed))
        np.testing.assert_array_equal(again["image"], out["image"])
        flips += bool(out["image"][0, 0, 0] > out["image"][0, -1, 0])
    assert 0 < flips < 12  # both branches were taken
    with pytest.raises(ValueError, match="exceeds the record size"):
        loader.RandomCropFlip(13).random_map(rec, np.random.default_rng(0))


def test_center_crop():
    out = loader.CenterCrop(4).map(_coded_record(8, 8))
    np.testing.assert_array_equal(out["image"], _coded_record(8, 8)["image"][2:6, 2:6])


def _loader(src, **kw):
    args = dict(batch_size=4, crop_size=16, train=True, seed=0)
    args.update(kw)
    return loader.make_loader(src, **args)


def test_batches_shapes_and_ranges():
    batch = next(iter(_loader(_source())))
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["mask"].shape == (4, 16, 16, 1)
    for v in batch.values():
        assert v.min() >= 0.0 and v.max() <= 1.0


def test_iterator_state_resumes_exactly():
    it = iter(_loader(_source()))
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]  # crosses the 16-record epoch boundary (4 batches/epoch)
    resumed = iter(_loader(_source()))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_eval_pass_keeps_partial_batch_and_is_ordered():
    batches = list(_loader(_source(n=10, split="test"), train=False))
    assert [len(b["image"]) for b in batches] == [4, 4, 2]
    again = list(_loader(_source(n=10, split="test"), train=False))
    np.testing.assert_array_equal(batches[2]["albedo"], again[2]["albedo"])


def test_shards_are_disjoint_and_cover_the_source():
    src = _source(n=12)
    seen = []
    for i in range(2):
        opts = grain.sharding.ShardOptions(shard_index=i, shard_count=2, drop_remainder=True)
        batches = list(_loader(src, train=False, batch_size=2, shard_options=opts))
        seen.append({b["albedo"][j].tobytes() for b in batches for j in range(len(b["albedo"]))})
    assert len(seen[0]) == len(seen[1]) == 6 and not seen[0] & seen[1]


def _records(batches):
    return sorted(b["albedo"][j].tobytes() for b in batches for j in range(len(b["albedo"])))


def test_worker_processes_resume_exactly_and_read_the_same_records():
    # Workers batch round-robin, so batches are composed differently than in-process, from the same records.
    serial = iter(_loader(_source(), worker_count=0))
    first = [next(serial) for _ in range(2)]
    it = iter(_loader(_source(), worker_count=2))
    try:
        assert _records([next(it) for _ in range(2)]) == _records(first)
        state = it.get_state()
        expected = [next(it) for _ in range(3)]
    finally:
        del it
    resumed = iter(_loader(_source(), worker_count=2))
    try:
        resumed.set_state(state)
        for want in expected:
            np.testing.assert_array_equal(next(resumed)["image"], want["image"])
    finally:
        del resumed
    with pytest.raises(ValueError, match="[Ww]orker count"):
        iter(_loader(_source(), worker_count=0)).set_state(state)


# A main process with grain workers, run as `python -m` (as the CLIs are: its workers then import this module before
# multiprocessing knows their parent). It prints "ready" once every worker has sent a batch (a worker still starting
# has not set itself up yet); after a SIGINT or SIGTERM (which it notes, as the training loop does) it reads more
# batches than the workers' buffers hold, and prints "read".
_WORKERS_MAIN = """
import signal, time
from absl import flags
from data_pipeline import loader, synthetic


def main():
    got = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda s, frame: got.append(s))
    it = iter(loader.make_loader(synthetic.SyntheticSource(num_records=8, resolution=16), batch_size=2,
                                 crop_size=16, train=True, seed=0, worker_count=2))
    for _ in range(4):  # the workers take turns: both have set themselves up once each has sent a batch
        next(it)
    print("ready", flush=True)
    while not got:
        time.sleep(0.05)
    time.sleep(1.0)  # a worker that did not ignore the signal is dead by now
    for _ in range(20):
        next(it)
    print("read", flush=True)


if __name__ == "__main__":
    flags.FLAGS.mark_as_parsed()
    main()
"""


def _start_workers_main(tmp_path) -> subprocess.Popen:
    (tmp_path / "workers_main.py").write_text(_WORKERS_MAIN)
    env = {**os.environ, "PYTHONPATH": REPO}
    main = subprocess.Popen([sys.executable, "-m", "workers_main"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    assert main.stdout.readline().strip() == "ready"
    return main


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit status may wait for a reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_workers_end_when_the_main_process_is_killed(tmp_path):
    main = _start_workers_main(tmp_path)
    try:
        workers = _children(main.pid)
        assert workers, "no grain worker processes were started"
    finally:
        main.kill()  # SIGKILL: no atexit, no daemon clean-up
        main.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(map(_running, workers)):
        time.sleep(0.1)
    alive = [w for w in workers if _running(w)]
    assert not alive, f"grain workers {alive} outlived their killed main process"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_workers_leave_a_stop_signal_to_the_main_process(tmp_path, signum):
    """Ctrl-C in a terminal, or a batch system's warning SIGTERM, reaches every process of the group: workers that
    died of it made the training loop's next batch a traceback, and the checkpoint it was about to save was lost."""
    main = _start_workers_main(tmp_path)
    try:
        os.killpg(main.pid, signum)
        out, _ = main.communicate(timeout=60)
    finally:
        main.kill()
    assert main.returncode == 0 and out.strip() == "read", out


@pytest.mark.parametrize("stage", ["albedo", "refine", "passes", "joint"])
def test_paper_configs_read_ahead_within_a_few_gib(stage):
    """What the training workers may hold read ahead at the paper configs, in records as the synthetic source
    codes them (a prepared dataset's are the same arrays): under 4 GiB. grain's default read-ahead, 500 records a
    worker, was 35 GiB at 1024² with every pass (8.8 GiB a worker, measured)."""
    import importlib
    config = importlib.import_module(f"configs.{stage}").get_config("")
    d = config.data
    record = synthetic.SyntheticSource(num_records=1, resolution=32, passes=("albedo", *config.get("passes", ())))[0]
    record_bytes = sum(np.asarray(v).nbytes for v in record.values()) * (d.resolution / 32) ** 2
    held = d.read_buffer_size * max(d.worker_count, 1) * record_bytes
    assert held < 4 * 2**30, f"{held / 2**30:.1f} GiB"


def test_held_out_pass_reads_ahead_as_configured(monkeypatch, smoke_config):
    """The evaluation's loader takes data.read_threads and data.read_buffer_size (it took grain's 16 threads and
    500 records, in the training process, whatever the config said)."""
    import jax
    from maginet_jax import evaluator
    seen = {}

    def fake(source, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop")
    monkeypatch.setattr(loader, "make_loader", fake)
    smoke_config.data.read_threads, smoke_config.data.read_buffer_size = 3, 7
    with pytest.raises(RuntimeError, match="stop"):
        evaluator.evaluate(None, None, None, smoke_config, jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)))
    assert (seen["read_threads"], seen["read_buffer_size"]) == (3, 7)
