"""Test set-up: 8 virtual CPU devices (for the sharding tests) and parsed absl flags (for grain workers)."""

import os
import sys

# Must precede the first jax import of the session.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
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
