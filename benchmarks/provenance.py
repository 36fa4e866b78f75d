"""Which code a benchmark's figures came from, for its report."""

from __future__ import annotations

import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commit(repo: str = REPO) -> str | None:
    """The checkout's short commit, with "+changes" when tracked files outside benchmarks/results differ from it
    (figures from uncommitted code cannot be made again; results written by an earlier benchmark do not count);
    outside a git checkout (a copy of the tree on a benchmark machine), $BENCHMARK_COMMIT if set, else None
    (`repo`: the checkout, by default this one)."""
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return os.environ.get("BENCHMARK_COMMIT") or None
    changes = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
    return head + ("+changes" if changes else "")
