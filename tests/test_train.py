"""Training: the loss falls on :smoke, an interrupted run resumes exactly, 8-way sharding matches 1 device.

The loop's tests train RefinementNet's :smoke config: the loop is the same for every stage, and it compiles in
a third of AlbedoNet's time (AlbedoNet's own runs: test_stages.py, the chained runs of conftest.py)."""

import collections
import dataclasses
import functools
import glob
import gzip
import json
import os
import re
import signal
import struct

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from conftest import Interrupted, crash_during_step, lpips_on, smoke, synthetic_batch, tamper_with_step, train_evals
from maginet_jax import train
from maginet_jax.errors import UserError
from maginet_jax.stages import supervised
from maginet_jax.training import runs, sharding
from maginet_jax.training.writers import read_metrics


def _config():
    c = smoke("refine")
    c.log_every_steps = 3  # not a divisor of the checkpoint interval: a resumed run's first logged row is then
    c.checkpoint_every_steps = 4  # the uninterrupted run's only if the loop logs at every checkpoint too
    return c


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("full"))
    c = _config()  # profiled at steps 3 (a log row) and 4 (a checkpoint); the runs compared with it are not
    c.profile_first_step, c.profile_num_steps = 3, 2
    state = train.train_and_evaluate(c, workdir)
    return workdir, state


def test_loss_falls_on_smoke(chain):
    rows = read_metrics(chain["albedo"])  # AlbedoNet's :smoke run (conftest.py)
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    evals = [r["eval/albedo_mse"] for r in rows if "eval/albedo_mse" in r]
    assert rows[0]["step"] == 0 and "eval/albedo_mse" in rows[0]  # the untrained model is evaluated
    assert losses[-1] < 0.75 * losses[0]
    assert evals[-1] < 0.75 * evals[0]
    assert rows[-1]["step"] == 12


def test_refine_run_finishes(uninterrupted):
    workdir, state = uninterrupted
    assert int(state.step) == 12 and read_metrics(workdir)[-1]["step"] == 12


def test_outputs_on_disk(uninterrupted):
    workdir, _ = uninterrupted
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "4", "8"]  # max_to_keep=3
    assert sorted(os.listdir(os.path.join(workdir, "samples"))) == [
        "step_0000000.png", "step_0000006.png", "step_0000012.png"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
    # the profile of steps 3 and 4: their two batches read and their steps run, the checkpoint of step 4 saved
    (trace,) = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*.trace.json.gz"))
    assert os.path.exists(trace.replace(".trace.json.gz", ".xplane.pb"))
    names = collections.Counter(e.get("name") for e in json.load(gzip.open(trace))["traceEvents"] if e.get("ph") == "X")
    assert names["_BatchDatasetIterator.__next__"] == 2 and names["PjitFunction(train_step)"] > 0
    assert any("checkpoint_manager.py" in n and " save" in n for n in names), sorted(names)[:50]


def _not_on_resume(config, mesh):
    raise AssertionError("a resumed run initialised its state")


def test_interrupted_run_resumes_exactly(uninterrupted, tmp_path, monkeypatch):
    full_dir, full_state = uninterrupted
    workdir = str(tmp_path)
    crash_during_step(monkeypatch, 7)  # the last checkpoint is step 4
    with pytest.raises(Interrupted):
        train.train_and_evaluate(_config(), workdir)
    assert max(r["step"] for r in read_metrics(workdir)) == 6  # rows past the checkpoint exist...
    monkeypatch.undo()
    # the resumed run starts from shapes alone: no state is initialised only to be overwritten by the restore
    monkeypatch.setitem(train.STAGES, "refine", dataclasses.replace(train.STAGES["refine"], init=_not_on_resume))
    resumed = train.train_and_evaluate(_config(), workdir)

    assert read_metrics(workdir) == read_metrics(full_dir)  # ...and are replaced, not duplicated
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(full_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _fail_with(error):
    def action(batch):
        raise error
    return action


def test_a_batch_that_fails_to_load_keeps_the_steps_before_it(uninterrupted, tmp_path, monkeypatch):
    full_dir, full_state = uninterrupted
    workdir = str(tmp_path)
    # the reader has consumed the batch when it fails (as grain's does, record by record): the save must not
    tamper_with_step(monkeypatch, 7, _fail_with(UserError("subject 00042: corrupt image")))
    with pytest.raises(UserError, match=r"^subject 00042: corrupt image; the steps to 6 are saved: rerun"):
        train.train_and_evaluate(_config(), workdir)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "6"]  # 6 is no checkpoint step
    monkeypatch.undo()
    resumed = train.train_and_evaluate(_config(), workdir)

    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(full_state)):  # the same batches, in order
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    evals = [[r for r in read_metrics(d) if "eval/albedo_mse" in r] for d in (workdir, full_dir)]
    assert evals[0] == evals[1]
    assert [r["step"] for r in read_metrics(workdir) if "train/loss" in r] == [3, 4, 6, 8, 9, 12]


def test_any_read_error_keeps_the_steps_but_one_right_after_a_checkpoint_has_none_to_keep(tmp_path, monkeypatch):
    tamper_with_step(monkeypatch, 6, _fail_with(OSError("stale file handle")))
    with pytest.raises(OSError, match="stale file handle"):
        train.train_and_evaluate(_config(), str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "5"]
    tamper_with_step(monkeypatch, 1, _fail_with(OSError("stale file handle")))  # (resumed at 5: step 6)
    with pytest.raises(OSError, match="stale file handle"):
        train.train_and_evaluate(_config(), str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "5"]


def test_checkpoint_of_another_model_is_a_clear_error(uninterrupted, tmp_path):
    import shutil
    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted[0], workdir)
    before = {p: os.path.getmtime(os.path.join(workdir, p)) for p in ("metrics.jsonl", "config.json")}
    c = _config()
    c.model.widths = (8, 16)
    with pytest.raises(UserError, match="does not fit this config"):
        train.train_and_evaluate(c, workdir)
    assert before == {p: os.path.getmtime(os.path.join(workdir, p)) for p in before}
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "4", "8"]


def test_a_checkpoint_cut_short_is_one_error(uninterrupted, tmp_path):
    """Its shapes fit, its data files do not hold them (a copy or disk that ran out): orbax raises a bare Exception
    wrapping a page of TensorStore specs, which a resume and a fine-tuning run's start printed as tracebacks."""
    import shutil
    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted[0], workdir)
    for path in glob.glob(os.path.join(workdir, "checkpoints", "12", "state", "ocdbt.process_0", "d", "*")):
        os.truncate(path, 50)
    c = _config()
    c.num_train_steps = 14
    with pytest.raises(UserError, match=r"^cannot read checkpoint 12 in .* \(a file cut short, missing or damaged\?\): "
                                        r"OUT_OF_RANGE: Error reading") as e:
        train.train_and_evaluate(c, workdir)
    assert len(str(e.value)) < 500
    directory = os.path.join(workdir, "checkpoints", "12", "state")
    like = {"model": supervised.init(_config(), sharding.make_mesh(c.mesh))[1].params["model"]}
    with pytest.raises(UserError, match=rf"^init.from_workdir: cannot read the checkpoint in '{directory}' \(a file"):
        runs.restore_params(directory, like, what="init.from_workdir")


@pytest.mark.filterwarnings("ignore:Sharding info not provided")  # the test's own read of checkpoint 4
def test_fine_tuning_starts_from_an_earlier_runs_parameters(uninterrupted, tmp_path):
    source = uninterrupted[0]
    c = _config()
    c.init.from_workdir, c.num_train_steps = source, 1
    train.train_and_evaluate(c, str(tmp_path / "tuned"))
    first, last = train_evals(str(tmp_path / "tuned"))[0], train_evals(source)[-1]
    assert first["step"] == 0 and last["step"] == 12
    assert {k: v for k, v in first.items() if k != "step"} == {k: v for k, v in last.items() if k.startswith("eval/")}
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["init"]["from_step"] == 12  # pinned
    # a resume does not read it (gone, or given otherwise); config.json keeps what the run started from
    resumed = c.copy_and_resolve_references()
    resumed.init.from_workdir, resumed.num_train_steps = str(tmp_path / "gone"), 2
    train.train_and_evaluate(resumed, str(tmp_path / "tuned"))
    saved = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert saved["num_train_steps"] == 2 and (saved["init"]["from_workdir"], saved["init"]["from_step"]) == (source, 12)
    # an earlier checkpoint, by step
    c.init.from_step = 4
    _, state = supervised.init(c, sharding.make_mesh(c.mesh))
    with ocp.PyTreeCheckpointer() as checkpointer:
        saved = checkpointer.restore(os.path.join(source, "checkpoints", "4", "state"))["params"]["model"]
    mine, saved = jax.tree.leaves(nnx.to_pure_dict(state.params["model"])), jax.tree.leaves(saved)  # (in key order)
    assert len(mine) == len(saved) == 6 and all(np.array_equal(a, b) for a, b in zip(mine, saved))
    # another stage's run, another architecture, no checkpoint: one error, before anything is written
    (tmp_path / "albedo").mkdir()
    (tmp_path / "albedo" / "config.json").write_text(json.dumps(smoke("albedo").to_dict()))
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "config.json").write_text(json.dumps(c.to_dict()))
    c.init.from_step = 0
    wide = c.copy_and_resolve_references()
    wide.model.widths = (8, 16)
    for config, source, error in [
            (c, str(tmp_path / "albedo"), "holds a 'albedo' run, not 'refine'"),
            (wide, source, "has another architecture than the config: model.widths: (8, 8) there, (8, 16) here"),
            (c, str(tmp_path / "started"), "has no finished checkpoint yet")]:
        config.init.from_workdir = source
        with pytest.raises(UserError, match=re.escape(f"init.from_workdir={source!r} {error}")):
            train.run(config, str(tmp_path / "bad"))
        assert not os.path.exists(tmp_path / "bad")  # checked before the workdir is made


def test_a_directory_that_is_not_a_run_is_refused(tmp_path):
    """Training into it wrote its config.json, metrics.jsonl and samples over the user's files of those names."""
    for name, files, foreign in [("project", {"notes.txt": "mine", "metrics.jsonl": "mine"}, "notes.txt"),
                                 ("settings", {"config.json": '{"my": "settings"}'}, "config.json")]:
        (tmp_path / name).mkdir()
        for file, text in files.items():
            (tmp_path / name / file).write_text(text)
        with pytest.raises(UserError, match=re.escape(f"--workdir={str(tmp_path / name)!r} holds files of something "
                                                      f"else than a run ({foreign})")):
            train.run(_config(), str(tmp_path / name))
        assert {f: (tmp_path / name / f).read_text() for f in files} == files
    (tmp_path / "dry").mkdir()  # what a dry run and launch/local_multiprocess.sh's LOG_ALL=1 leave are a run's
    (tmp_path / "dry" / "dry_run.json").write_text("{}")
    (tmp_path / "dry" / "process_1.log").write_text("")
    (tmp_path / "dry" / ".write_test_0123").write_text("")  # another process's prepare_workdir, at that moment
    runs.check_not_foreign(str(tmp_path / "dry"))


def test_checkpoints_kept_beside_the_latest(tmp_path, monkeypatch):
    """max_checkpoints_to_keep latest ones, every keep_checkpoints_every_steps-th and the keep_best_checkpoints with
    the best eval PSNR, also among those a resumed run finds (orbax reads their PSNR back)."""
    c = _config()
    c.num_train_steps, c.checkpoint_every_steps, c.eval_every_steps, c.max_checkpoints_to_keep = 8, 2, 4, 1
    c.keep_checkpoints_every_steps, c.keep_best_checkpoints = 6, 1
    psnr, evaluate = {0: 5.0, 4: 30.0, 8: 10.0, 10: 20.0}, train.evaluate_and_show
    monkeypatch.setattr(train, "evaluate_and_show", lambda step, *a: {**evaluate(step, *a), "eval/psnr": psnr[step]})
    train.train_and_evaluate(c, str(tmp_path))
    assert sorted(map(int, os.listdir(tmp_path / "checkpoints"))) == [4, 6, 8]  # the best, a 6th, the latest
    c.num_train_steps = 10
    train.train_and_evaluate(c, str(tmp_path))
    assert sorted(map(int, os.listdir(tmp_path / "checkpoints"))) == [4, 6, 10]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # the 1e39 weight, as intended
def test_a_resume_that_fails_in_its_first_steps_leaves_config_json(uninterrupted, tmp_path):
    """config.json describes the checkpoints: a resumed run's config replaces it only with its first checkpoint
    (it was written before the first step, so a resume that then failed left a config no checkpoint was made with)."""
    import shutil
    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted[0], workdir)
    before = open(os.path.join(workdir, "config.json")).read()
    c = _config()
    c.num_train_steps, c.losses.mse = 16, 1e39  # inf in float32: the loss of step 13 is not finite
    with pytest.raises(UserError, match="non-finite training scalars at step 13"):
        train.train_and_evaluate(c, workdir)
    assert open(os.path.join(workdir, "config.json")).read() == before
    c.losses.mse = _config().losses.mse
    train.train_and_evaluate(c, workdir)
    assert json.load(open(os.path.join(workdir, "config.json")))["num_train_steps"] == 16


def _send(signum):
    def action(batch):
        os.kill(os.getpid(), signum)  # delivered to the main thread before the step runs
        return batch
    return action


@pytest.mark.parametrize("how", ["preemption notice", "SIGTERM", "SIGINT"])
def test_stop_request_saves_and_stops(how, tmp_path, monkeypatch):
    if how == "preemption notice":  # what a multi-process run gets from JAX's preemption service
        monkeypatch.setattr(ocp.CheckpointManager, "reached_preemption", lambda self, step: step == 5)
    else:
        tamper_with_step(monkeypatch, 5, _send(getattr(signal, how)))
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    c = _config()
    c.profile_first_step = 4  # a window of 5 steps: the stop ends it at step 5, with its trace written
    state = train.train_and_evaluate(c, str(tmp_path))
    assert int(state.step) == 5
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "5"]
    assert len(glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))) == 1
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_ctrl_c_in_a_multi_process_run_is_left_to_the_preemption_service():
    """With several processes, Ctrl-C becomes a SIGTERM for JAX's preemption service, which picks the step all
    processes stop at; the process that got it stopping at its own step left the others waiting for it. A
    second Ctrl-C stops at once."""
    from maginet_jax.training.processes import StopSignals
    forwarded = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: forwarded.append(signum))  # the service's
    stop = StopSignals(multiprocess=True).install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert forwarded == [signal.SIGTERM] and stop.received is None
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
        signal.signal(signal.SIGTERM, previous)


def test_no_sample_images(tmp_path):
    """num_sample_images=0 turns the sample grids off (it was a TypeError after the workdir was written)."""
    c = smoke("refine", num_train_steps=2, eval_every_steps=2, num_sample_images=0)
    train.train_and_evaluate(c, str(tmp_path))
    assert not (tmp_path / "samples").exists()
    assert [r["step"] for r in read_metrics(str(tmp_path)) if "eval/albedo_mse" in r] == [0, 2]


def _poison(batch):
    return {**batch, "image": np.full_like(batch["image"], np.nan)}


def test_non_finite_loss_stops_before_saving(tmp_path, monkeypatch):
    tamper_with_step(monkeypatch, 5, _poison)  # checkpoint 4 is good; step 5's loss is NaN
    with pytest.raises(UserError) as e:
        train.train_and_evaluate(_config(), str(tmp_path))
    assert str(e.value).startswith("non-finite training scalars at step 5: ") and "loss=nan" in str(e.value)
    assert str(e.value).endswith("stopped without saving (the newest checkpoint is step 4)")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]
    assert max(r["step"] for r in read_metrics(str(tmp_path))) == 4  # no row of NaNs logged


def test_divergence_saves_no_checkpoint(tmp_path):
    # The reproduction: a learning rate of 1e8 without clipping. Patch-LPIPS is what overflows (without
    # it the normalised, sigmoid-capped AlbedoNet stays finite for the 12 steps).
    c = smoke("albedo", **lpips_on("albedo"))
    c.optim.learning_rate, c.optim.grad_clip_norm = 1e8, 0.0
    with pytest.raises(UserError, match=r"non-finite training scalars at step \d+: .*no checkpoint yet"):
        train.train_and_evaluate(c, str(tmp_path))
    assert os.listdir(tmp_path / "checkpoints") == []


def _placed(c, devices):
    """(mesh, graphdefs, initial state, frozen networks) of the :smoke stage on `devices`."""
    mesh = sharding.make_mesh(c.mesh, devices)
    graphdefs, state = supervised.init(c, mesh)
    return mesh, graphdefs, state, jax.device_put(supervised.frozen_nets(c, mesh), sharding.replicated(mesh))


def _gradients(c, devices, batch):
    """d loss / d params on a batch split over `devices` (data-parallel), as a numpy tree."""
    mesh, graphdefs, state, frozen_nets = _placed(c, devices)
    rep = sharding.replicated(mesh)
    grad = jax.jit(jax.grad(functools.partial(supervised.loss_fn, config=c, graphdefs=graphdefs), has_aux=True),
                   in_shardings=(rep, rep, sharding.batch_sharding(mesh), rep), out_shardings=rep)
    grads, _ = grad(state.params, frozen_nets, sharding.to_global(batch, mesh), state.rng)
    return np.concatenate([np.ravel(g) for g in jax.tree.leaves(jax.device_get(grads))])


def _run_steps(c, devices, batch, num_steps=2):
    """The scalars of `num_steps` steps of the train step exactly as the loop jits it, on `devices`."""
    mesh, graphdefs, state, frozen_nets = _placed(c, devices)
    step = train.jit_train_step(c, graphdefs, mesh, jax.tree.map(lambda x: x.sharding, state))
    scalars = []
    for _ in range(num_steps):
        state, out = step(state, sharding.to_global(batch, mesh), frozen_nets)
        scalars.append(jax.device_get(out))
    leaf = jax.tree.leaves(state.params)[0]
    assert len(leaf.sharding.device_set) == len(devices) and leaf.sharding.is_fully_replicated
    return scalars


@pytest.fixture(scope="module")
def eight_examples():
    return synthetic_batch()


def test_sharded_gradients_match_single_device(eight_examples):
    assert jax.device_count() == 8, "conftest sets 8 virtual CPU devices"
    c = smoke("refine")  # the fastest to compile; AlbedoNet on every mesh axis: test_scaling.py
    g1 = _gradients(c, jax.devices()[:1], eight_examples)
    g8 = _gradients(c, jax.devices(), eight_examples)
    assert np.abs(g1).max() > 1e-4  # the loss does depend on the parameters
    # fp32 with another reduction order: the gradients agree to 5e-4 of the largest. Against a float64 gradient,
    # the one-device fp32 one is off by up to 1.8e-4 of the largest on an AVX-512 CPU (the last conv's kernel,
    # summed over every pixel), the 8-way one by 0.8e-4. A sharding bug (a loss or gradient not reduced over all
    # shards) is off by O(1); one example of the eight counted twice in place of another, by 1.6e-2. (Compared
    # as gradients, not Adam updates: Adam's first steps are ~lr·sign(g), and a gradient that is pure round-off
    # may flip sign with the order.)
    np.testing.assert_allclose(g8, g1, rtol=0, atol=5e-4 * np.abs(g1).max())


def test_sharded_adam_step_metrics_match(eight_examples):
    c = smoke("refine", **lpips_on("refine"))
    # Patch-LPIPS's frozen AlexNet runs inside the sharded step too (VGG is passed in the same way, as a
    # replicated frozen_nets pair, and would add two VGG16 compiles here).
    m1 = _run_steps(c, jax.devices()[:1], eight_examples)
    m8 = _run_steps(c, jax.devices(), eight_examples)
    assert "lpips" in m1[0] and m1[0].keys() == m8[0].keys()
    for step1, step8 in zip(m1, m8):
        for k in step1:
            # The gradient itself differs between the meshes by another reduction order (the last conv's kernel
            # gradient by 3.6e-4 in relative L2 at 1 against 8 devices), and its norm by up to as much.
            np.testing.assert_allclose(step8[k], step1[k], rtol=5e-4 if k == "grad_norm" else 1e-5, err_msg=k)


def test_mesh_errors():
    with pytest.raises(UserError, match="needs 16 devices"):
        sharding.make_mesh((("data", 16),))
    with pytest.raises(UserError, match="mesh axis 'batch' is not used"):
        sharding.make_mesh((("batch", -1),))
    # an axis nothing is sharded over would halve data parallelism and repeat the work: refused, by name
    with pytest.raises(UserError, match="mesh axis 'model' is not used"):
        sharding.make_mesh((("data", -1), ("model", 2)))
    with pytest.raises(UserError, match="names an axis twice"):
        sharding.make_mesh((("data", 2), ("data", 4)))
    with pytest.raises(UserError, match="must be \\(axis, size\\) pairs"):
        sharding.make_mesh(("data", -1))
    assert dict(sharding.make_mesh((("data", -1),)).shape) == {"data": 8, "fsdp": 1, "spatial": 1}
    # as config.json has it; axes not named have size 1
    assert dict(sharding.make_mesh([["fsdp", 2]], jax.devices()[:2]).shape) == {"data": 1, "fsdp": 2, "spatial": 1}
    assert dict(sharding.make_mesh((("spatial", 2), ("data", -1))).shape) == {"data": 4, "fsdp": 1, "spatial": 2}


def _events(path) -> list:
    """The events of a TensorBoard event file (records: length, its CRC, the Event, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event
    data, events, at = path.read_bytes(), [], 0
    while at < len(data):
        (n,) = struct.unpack("<Q", data[at:at + 8])
        events.append(Event.FromString(data[at + 12:at + 12 + n]))
        at += 12 + n + 4
    return events


def test_tensorboard_marks_the_steps_a_resumed_run_writes_again(tmp_path):
    """A resumed run's event file opens with TensorBoard's purge marker at its first step, so the steps the crashed
    run logged past its checkpoint are not drawn twice; a run that starts over marks step 0."""
    from tensorboardX.proto.event_pb2 import SessionLog
    from maginet_jax.training.writers import create_writer
    for resume_step in (0, 40):
        d = tmp_path / str(resume_step)
        w = create_writer(str(d), resume_step=resume_step, is_main=True)
        w.write_scalars(resume_step + 1, {"train/loss": 0.5})
        w.close()
        (events_file,) = d.glob("events.out.tfevents*")
        events = _events(events_file)
        starts = [e.step for e in events if e.HasField("session_log") and e.session_log.status == SessionLog.START]
        assert starts == [resume_step + 1 if resume_step else 0]
        assert [e.step for e in events if e.HasField("summary")] == [resume_step + 1]


def test_metrics_of_a_run_killed_before_its_first_checkpoint_start_over(tmp_path):
    # found by benchmarks/kill_resume.py: a kill after the step-0 evaluation left its row, written again on restart
    from maginet_jax.training.writers import JsonlWriter
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "eval/albedo_mse": 0.1}\n{"step": 2, "train/loss": 0.5}\n')
    JsonlWriter(runs.run_path(str(path)), resume_step=0)
    assert path.read_text() == ""
    path.write_text('{"step": 0, "eval/albedo_mse": 0.1}\n{"step": 2, "train/loss": 0.5}\n{"step": 3}\n')
    JsonlWriter(runs.run_path(str(path)), resume_step=2)
    assert [r["step"] for r in map(json.loads, path.read_text().splitlines())] == [0, 2]
