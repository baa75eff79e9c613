"""Shared pytest set-up: keep torch to the machine's cores, skip `gpu` tests without CUDA."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def mlflow_tracking_uri_restored():
    """`mlflow.set_tracking_uri` also sets $MLFLOW_TRACKING_URI, which the subprocesses of every later test inherit
    (a sweep then probed a tracking server stopped long before): each test leaves both as it found them."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and os.environ.get("MLFLOW_TRACKING_URI") != before:
        mlflow.set_tracking_uri(before)


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory):
    """The tiny demo corpus (12 clips a speaker) and its fbank cache, made once for every test that sweeps it
    (a module may define its own `demo` of another size)."""
    from tfmamba.demo import ensure_demo_data

    return ensure_demo_data(tmp_path_factory.mktemp("demo"), clips_per_speaker=12, progress=False)


def _started_postgres():
    """A started `servers.PostgresServer`; skipped where PostgreSQL is not installed, except on CI, where a missing
    server is a failure."""
    from servers import PostgresServer, postgres_bin

    if postgres_bin() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not installed: .ci/run installs Debian's postgresql package")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    server = PostgresServer()
    server.start()
    return server


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on 127.0.0.1 for the session (Debian's package; `.ci/run` installs it)."""
    server = _started_postgres()
    yield server
    server.stop()


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of the test's own, which it may shut down and restart."""
    server = _started_postgres()
    yield server
    server.stop()


@pytest.fixture
def small_disks(tmp_path):
    """Small tmpfs mounts that fill up (`disks.SmallDisks`), unmounted after the test; skipped unless root."""
    from disks import SmallDisks

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    disks = SmallDisks(tmp_path)
    yield disks
    disks.unmount_all()
