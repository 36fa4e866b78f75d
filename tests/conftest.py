"""Test set-up: 8 virtual CPU devices (for the sharding tests) and parsed absl flags (for grain workers)."""

import atexit
import fcntl
import functools
import gc
import os
import shutil
import subprocess
import sys
import tempfile

# Must precede the first jax import of the session.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The first process of a run to import this file (xdist's controller, or a lone pytest) makes a scratch directory
# for the run and deletes it when it exits, after its workers (at exit rather than in a pytest hook, which a usage
# error skips). The workers and every subprocess inherit it through the environment:
# - as the JAX compilation cache: many tests train the same small programs again (resume, chained stages,
#   subprocesses), and compile each once per run (~100 MB);
# - as TMPDIR, so what libraries leave in the temporary directory goes with it (TFDS makes an empty directory
#   there for each dataset builder made before its dataset is prepared). pytest's own base directories stay
#   where they were (PYTEST_DEBUG_TEMPROOT), so a failed test's files can still be looked at after the run.
if "MAGINET_JAX_TEST_SCRATCH" not in os.environ:
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
    scratch = os.environ["MAGINET_JAX_TEST_SCRATCH"] = os.environ["TMPDIR"] = tempfile.mkdtemp(prefix="maginet-jax-")
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(scratch, "jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The committed profile of AlbedoNet's bf16 train step on an H100 (what `step_profile --trace_dir` keeps).
H100_PROFILE = os.path.join("benchmarks", "results", "nvidia-h100-80gb-hbm3", "profile_albedo_bfloat16")


def run_script(*cmd, env=None, timeout=600) -> str:
    """Runs `cmd` in the repository (without the tests' 8-device XLA_FLAGS; `env` adds variables), asserts it
    succeeded (showing its output's end if not) and returns its stdout."""
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, **(env or {})}
    r = subprocess.run(list(cmd), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r.stdout


@pytest.fixture
def highest_precision():
    """Full-float32 matmuls and convolutions within the test (parity with PyTorch references). Scoped to the
    test: set at import, it held for every test of the worker, so they compiled programs other than the
    users' (and their own subprocesses'), which the compilation cache could not share."""
    import jax
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture
def smoke_config():
    """The :smoke albedo config, unlocked copies so tests can adjust it."""
    from configs import albedo
    return albedo.get_config("smoke")


class Interrupted(BaseException):
    """Raised by `crash_during_step` in place of a training batch."""


class _TamperedIterator:
    """A training-data iterator that hands its `step`-th batch to `action` (which may raise, or return the
    batch to use); checkpoints still see the real iterator's state (grain saves it through get_state /
    set_state)."""

    def __init__(self, it, step: int, action):
        self._it, self._left, self._action = it, step, action

    def __iter__(self):
        return self

    def __next__(self):
        self._left -= 1
        batch = next(self._it)
        return self._action(batch) if self._left == 0 else batch

    def __getattr__(self, name):  # get_state, set_state, start_prefetch: what grain's checkpoints call
        return getattr(self._it, name)


class _TamperedLoader:
    def __init__(self, loader, step: int, action):
        self._loader, self._step, self._action = loader, step, action

    def __iter__(self):
        return _TamperedIterator(iter(self._loader), self._step, self._action)


def tamper_with_step(monkeypatch, step: int, action) -> None:
    """Makes the next training run pass the batch of its train step number `step` (counted from its start)
    through `action(batch) -> batch`."""
    from data_pipeline import loader
    make = loader.make_loader

    def tampered(source, **kwargs):
        data = make(source, **kwargs)
        return _TamperedLoader(data, step, action) if kwargs["train"] else data

    monkeypatch.setattr(loader, "make_loader", tampered)


def crash_during_step(monkeypatch, step: int) -> None:
    """Makes the next training run die at train step number `step` (counted from its start), as a crash
    would: while reading that step's batch, with the steps before it done and not saved since the last
    checkpoint."""
    def crash(batch):
        raise Interrupted
    tamper_with_step(monkeypatch, step, crash)


def jit_apply(module, *args):
    """module(*args) as one jitted program: op by op, every op of every new shape compiles by itself (seconds for
    a small network on 2 cores). Compiled once per graph definition and argument shapes."""
    from flax import nnx
    graphdef, state = nnx.split(module)
    return _jitted_merge_call()(graphdef, state, *args)


@functools.cache
def _jitted_merge_call():
    import jax
    from flax import nnx
    return jax.jit(lambda graphdef, state, *args: nnx.merge(graphdef, state)(*args), static_argnums=0)


def random_module(make, seed: int = 0):
    """The module `make()` builds, its parameters drawn by numpy: kernels N(0, 1/fan-in), norm scales 1 + N(0, 0.1²),
    biases N(0, 0.1²). For tests that need some weights, not NNX's initialisation: JAX's RNG compiles a program per
    parameter shape (eagerly) or one slow-to-compile program (jitted), ~20 s for a small AlbedoNet on 2 cores."""
    from flax import nnx
    import jax
    import numpy as np
    module = nnx.eval_shape(make)
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = str(getattr(path[-1], "key", path[-1]))
        z = rng.standard_normal(x.shape).astype(np.float32)
        if name == "kernel":
            return z / np.sqrt(max(int(np.prod(x.shape[:-1])), 1))
        return 1.0 + 0.1 * z if name == "scale" else 0.1 * z

    nnx.update(module, jax.tree_util.tree_map_with_path(draw, nnx.state(module, nnx.Param)))
    return module


def synthetic_batch(passes=(), *, n: int = 8, resolution: int = 32, seed: int = 1) -> dict:
    """One training batch (random crop and flip) of `n` synthetic records with the albedo and `passes`."""
    from data_pipeline import loader
    from data_pipeline.synthetic import SyntheticSource
    source = SyntheticSource(num_records=n, resolution=resolution, seed=seed, passes=("albedo", *passes))
    return next(iter(loader.make_loader(source, batch_size=n, crop_size=resolution, train=True, seed=0)))


def smoke(stage: str, **overrides):
    """The :smoke config of `stage`, with dotted-key overrides, e.g. smoke("passes", **{"gan.mode": "hinge"})."""
    import importlib
    c = importlib.import_module(f"configs.{stage}").get_config("smoke")
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for part in parents:
            target = target[part]
        target[leaf] = value
    return c


def lpips_on(stage: str) -> dict:
    """The override that switches patch-LPIPS back on (off in the albedo and refine :smoke configs) at the weight
    of `stage`'s full config."""
    import importlib
    return {"losses.lpips": importlib.import_module(f"configs.{stage}").get_config().losses.lpips}


def train_evals(workdir: str) -> list[dict]:
    """The metrics.jsonl rows of a run that hold eval/* scalars."""
    from maginet_jax.training.writers import read_metrics
    return [r for r in read_metrics(workdir) if any(k.startswith("eval/") for k in r)]


@pytest.fixture(scope="session")
def chain(tmp_path_factory):
    """Three chained :smoke runs, albedo → refine (from it) → passes (from both): {stage: workdir}.

    Trained once per test run, in the directory the xdist workers share: the first worker to need them trains
    them while holding a lock, and a worker that needs them meanwhile waits, so their tests can run on both."""
    from maginet_jax.train import train_and_evaluate
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "chain"
    dirs = {s: str(root / s) for s in ("albedo", "refine", "passes")}
    root.mkdir(exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done").exists():
            for workdir in dirs.values():
                shutil.rmtree(workdir, ignore_errors=True)  # what a failed attempt left
            train_and_evaluate(smoke("albedo"), dirs["albedo"])
            train_and_evaluate(smoke("refine", **{"init.albedo_workdir": dirs["albedo"]}), dirs["refine"])
            train_and_evaluate(smoke("passes", **{"init.albedo_workdir": dirs["albedo"],
                                                  "init.refine_workdir": dirs["refine"]}), dirs["passes"])
            (root / "done").touch()
    return dirs


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    """Work for `-n 2 --dist loadgroup` (pyproject's addopts): each module's tests go to one worker, so its
    module-scoped runs train once."""
    for item in items:
        item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def pytest_sessionfinish(session):
    """A worker's heap holds every program it traced. At the end pytest collects garbage five times over (to
    report exceptions raised in finalizers); in a full run a worker was still collecting when execnet's 5 s wait
    for it ran out, and execnet then sends the worker a SIGINT (the "KeyboardInterrupt in _xla_gc_callback" at
    the end of a run). One collection here still runs the finalizers; freezing what survives lets the five skip it."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        gc.collect()
        gc.freeze()
