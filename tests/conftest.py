"""Shared fixtures of the test suite.

The helper modules beside the tests (``curvature_cases``: small models and dense references;
``data_fixtures``: where the real data is, a local HTTP mirror) are put on ``sys.path`` here,
explicitly, so the suite does not depend on pytest's import mode.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Runs the suite compares bit for bit (a resumed run against an uninterrupted one, --jobs 1
# against --jobs 2) must use the same number of threads, and `--threads auto` follows the
# machine's load, which changes while the suite runs: every run of the suite (subprocesses
# too) takes one thread, as `--threads auto` does when OMP_NUM_THREADS is set
# (hessfree.runs.threads; its own tests set the load and the variable themselves).
os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import data_fixtures  # noqa: E402  (needs the path above)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """``$HESSFREE_DATA``, else ``shared/data`` beside the repository (may not exist)."""
    return data_fixtures.shared_data_root()


@pytest.fixture(scope="session")
def mnist_folder() -> Path:
    """The folder holding the four real MNIST files (skips the test when absent)."""
    return data_fixtures.mnist_dir()


@pytest.fixture(scope="session")
def olivetti_data_root() -> Path:
    """A data root holding ``olivettifaces.mat`` (skips the test when absent)."""
    return data_fixtures.olivetti_root()


@pytest.fixture
def local_mirror(tmp_path):
    """A static HTTP server on 127.0.0.1 serving ``tmp_path/'served'``."""
    served = tmp_path / "served"
    served.mkdir()
    mirror = data_fixtures.LocalMirror(served)
    yield mirror
    mirror.close()


#: ``HESSFREE_TEST_MEMORY=1``: record each test's peak resident memory (Linux: VmHWM, reset
#: before each test through /proc/self/clear_refs) and list the largest at the end; the
#: test process only (a test's subprocesses are not counted)
MEMORY = bool(os.environ.get("HESSFREE_TEST_MEMORY")) and Path("/proc/self/clear_refs").exists()
_peaks: list[tuple[int, str]] = []


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(key + ":"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """With ``MEMORY``: the peak resident memory while the test ran (set-up excluded)."""
    if MEMORY:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current resident set
    yield
    if MEMORY:
        _peaks.append((_status_kb("VmHWM"), item.nodeid))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say loudly how many tests skipped for missing real data, and how to make them run;
    with ``HESSFREE_TEST_MEMORY=1``, the tests of largest peak resident memory."""
    if _peaks:
        terminalreporter.write_sep("=", "largest peak resident memory of the test process")
        for kb, nodeid in sorted(_peaks, reverse=True)[:15]:
            terminalreporter.write_line(f"{kb / 1024:8.0f} MiB  {nodeid}")
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if data_fixtures.SKIP_PREFIX in str(r.longrepr)]
    if skipped:
        terminalreporter.write_sep(
            "!", f"{len(skipped)} real-data tests SKIPPED: MNIST / Olivetti not found under "
            f"{data_fixtures.shared_data_root()}; set HESSFREE_DATA (and "
            f"{data_fixtures.REQUIRE}=1 to make this a failure, as CI does)", yellow=True)
