"""Shared helpers for the data tests: where the real data is, and a local HTTP mirror.

The real files are found through HESSFREE_DATA, else through the `shared/data` folder beside the
repository (relative to this file). Tests that need them skip when they are absent, with a reason
that starts with :data:`SKIP_PREFIX` and that the session's summary repeats (conftest.py); with
``HESSFREE_REQUIRE_DATA=1`` (CI sets it) an absent file fails the test instead.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import os
import threading
from pathlib import Path

import pytest

from hessfree.data.mnist import FILES

MNIST_GZ = [spec.gz_name for spec in FILES.values()]
#: the start of every skip reason for missing real data (conftest.py counts them)
SKIP_PREFIX = "real data missing:"
#: set to 1 to make missing real data fail the tests that need it (CI)
REQUIRE = "HESSFREE_REQUIRE_DATA"


def missing(what: str, root: Path) -> None:
    """Skip the test (or fail it under ``HESSFREE_REQUIRE_DATA=1``) for missing real data."""
    reason = f"{SKIP_PREFIX} {what} not found under {root} (set HESSFREE_DATA)"
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{reason}; {REQUIRE}=1 requires it")
    pytest.skip(reason)


def shared_data_root() -> Path:
    """HESSFREE_DATA if set, else <repo>/../shared/data."""
    env = os.environ.get("HESSFREE_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def mnist_dir() -> Path:
    """The folder holding the four real MNIST .gz files, or skip the test."""
    root = shared_data_root()
    for folder in (root / "mnist", root):
        if all((folder / name).is_file() for name in MNIST_GZ):
            return folder
    missing("the four MNIST .gz files", root)


def olivetti_root() -> Path:
    """A data root holding olivettifaces.mat (directly or in olivetti/), or skip the test."""
    root = shared_data_root()
    for folder in (root, root / "olivetti"):
        if (folder / "olivettifaces.mat").is_file():
            return root
    missing("olivettifaces.mat", root)


def regzip_with_change(src: Path, dst: Path, offset: int = -1) -> None:
    """Write ``src`` (a .gz) to ``dst`` as valid gzip with one content byte changed."""
    content = bytearray(gzip.decompress(src.read_bytes()))
    content[offset] = (content[offset] + 1) % 256
    dst.write_bytes(gzip.compress(bytes(content)))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


class LocalMirror:
    """A static file server on 127.0.0.1 (free port) in a daemon thread; ``url(sub)``."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.requests: list[str] = []
        handler = type("Handler", (_QuietHandler,), {"requests": self.requests})
        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(directory))
        )
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, sub: str = "") -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/{sub}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
