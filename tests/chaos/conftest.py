"""The chaos suite's own stack: it kills and cuts things, so it never shares the session
``stack`` of the integration and browser tests."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.devstack import Ports, StackError

from .harness import OUTPUT, ChaosStack

log = logging.getLogger("chaos")


@pytest.fixture(scope="module")
def chaos_stack() -> Iterator[ChaosStack]:
    """Its state dir (logs of every process) stays in test-output/chaos/stack for a look
    after a failure; the next run replaces it, and the figures of the last run."""
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.skip("nginx is not installed (make test installs it when run as root)")
    state = OUTPUT / "stack"
    shutil.rmtree(state, ignore_errors=True)
    for figures in OUTPUT.glob("*.json"):  # the table shows this run's scenarios only
        figures.unlink()
    stack = ChaosStack(state, Ports.free(), log_level="WARNING", progress=log.info)
    try:
        stack.start()
    except StackError as exc:
        pytest.fail(f"the chaos stack did not start: {exc}")
    try:
        yield stack
    finally:
        stack.stop()
