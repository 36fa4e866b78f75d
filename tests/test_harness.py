"""The test harness itself (conftest.py): what a run of the suite leaves behind."""

import getpass
import os
import subprocess
import sys

from conftest import REPO


def test_a_run_leaves_nothing_in_the_temporary_directory(tmp_path):
    """Each run compiles into a fresh persistent cache (~100 MB for the suite) and points TMPDIR at a scratch
    directory, both made by the first process (xdist's controller) and shared by its workers; that process removes
    them when the run ends, with what libraries left there (the TFDS test's builder leaves an empty directory).
    Only pytest's base directory stays."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAGINET_JAX_TEST_SCRATCH", "JAX_COMPILATION_CACHE_DIR", "PYTEST_DEBUG_TEMPROOT",
                        "XLA_FLAGS", "EXECNET_DEBUG")}  # the last writes trace files
    env["TMPDIR"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "1",
                        "tests/test_model.py::test_peak_is_the_max_and_its_gradient_goes_to_one_element",
                        "tests/test_ffhq_tfds.py::test_split_by_subject_hash_listed_in_the_info"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "2 passed" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == ["pytest-of-" + getpass.getuser()]
