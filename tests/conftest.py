"""Fixtures shared by the cross-service suites (integration and e2e)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.devstack import DevStack, Ports, StackError

log = logging.getLogger("devstack")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """The `make demo` stack on free ports, seeded, shared by the integration and browser
    tests (started once per session); every process is stopped at the end. Its supervisor
    restarts a crashed publisher, gateway or edge (DevStack.kill / wait_restarted); tests
    that stop a part on purpose start it again before they finish."""
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.skip("nginx is not installed (make test installs it when run as root)")
    state = tmp_path_factory.mktemp("devstack")
    devstack = DevStack(state, Ports.free(), log_level="WARNING", progress=log.info)
    try:
        devstack.start()
    except StackError as exc:
        pytest.fail(f"the demo stack did not start: {exc}")
    try:
        yield devstack
    finally:
        devstack.stop()
