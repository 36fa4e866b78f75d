"""Test set-up: 8 virtual CPU devices (for the sharding tests) and parsed absl flags (for grain workers)."""

import os
import sys
import tempfile

# Must precede the first jax import of the session.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests train the same small programs again (resume, chained stages): compile each once per session.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="maginet-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def smoke_config():
    """The :smoke albedo config, unlocked copies so tests can adjust it."""
    from configs import albedo
    return albedo.get_config("smoke")


class Interrupted(Exception):
    """Raised by `crash_during_step` in place of a train step."""


def crash_during_step(monkeypatch, step: int) -> None:
    """Makes the next training run die while running train step number `step` (counted from its start)."""
    from maginet_jax.training import steps
    make = steps.jit_train_step

    def crashing(*args, **kwargs):
        run_step, calls = make(*args, **kwargs), []

        def run(state, batch):
            calls.append(1)
            if len(calls) == step:
                raise Interrupted
            return run_step(state, batch)
        return run

    monkeypatch.setattr(steps, "jit_train_step", crashing)


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


def train_evals(workdir: str) -> list[dict]:
    """The metrics.jsonl rows of a run that hold eval/* scalars."""
    from maginet_jax.training import loop
    return [r for r in loop.read_metrics(workdir) if any(k.startswith("eval/") for k in r)]


@pytest.fixture(scope="session")
def chain(tmp_path_factory):
    """Three chained :smoke runs, albedo → refine (from it) → passes (from both): ({stage: workdir}, passes state)."""
    from maginet_jax.training import loop
    root = tmp_path_factory.mktemp("chain")
    dirs = {s: str(root / s) for s in ("albedo", "refine", "passes")}
    loop.train_and_evaluate(smoke("albedo"), dirs["albedo"])
    loop.train_and_evaluate(smoke("refine", **{"init.albedo_workdir": dirs["albedo"]}), dirs["refine"])
    state = loop.train_and_evaluate(smoke("passes", **{"init.albedo_workdir": dirs["albedo"],
                                                       "init.refine_workdir": dirs["refine"]}), dirs["passes"])
    return dirs, state
