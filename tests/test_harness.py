"""The test harness itself (conftest.py): what a run of the suite leaves behind."""

import os
import subprocess
import sys

from conftest import REPO


def test_a_run_removes_its_compilation_cache(tmp_path):
    """Each run compiles into a fresh persistent cache (~100 MB for the suite), made by the first process (xdist's
    controller) and shared by its workers; that process removes it when the run ends."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_COMPILATION_CACHE_DIR", "XLA_FLAGS", "EXECNET_DEBUG")}  # the last writes trace files
    env["TMPDIR"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "1", f"--basetemp={tmp_path / 'base'}",
                        "tests/test_model.py::test_peak_is_the_max_and_its_gradient_goes_to_one_element"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]
