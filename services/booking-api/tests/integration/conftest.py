"""A real booking-api process (``python -m booking_api``: uvicorn, uvloop, httptools) on a
free port with the memory backend, stopped at the end of the module."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from pydantic import SecretStr

from slotstream_contracts.auth import JwtSettings
from slotstream_testkit.net import free_port, wait_for_port

SERVER_SECRET = "integration-secret-0123456789-abcdefghijklmnop"
INTERNAL_TOKEN = "integration-internal-0123456789-abcdefghijk"


@pytest.fixture(scope="module")
def server_jwt() -> JwtSettings:
    """The JWT settings the server under test verifies with."""
    return JwtSettings(secret=SecretStr(SERVER_SECRET))


def launch_server(port: int, log: IO[bytes], **settings: str) -> "subprocess.Popen[bytes]":
    """``python -m booking_api`` on the memory backend (``settings``: more or other
    variables), listening; the caller stops it."""
    env = {
        **os.environ,
        "BOOKING_API_STORAGE": "memory",
        "BOOKING_API_JWT__SECRET": SERVER_SECRET,
        "BOOKING_API_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "BOOKING_API_PORT": str(port),
        "BOOKING_API_LOG__LEVEL": "WARNING",
        **settings,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "booking_api"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=20)
    except TimeoutError:
        process.kill()
        process.wait()
        raise
    return process


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log_path = Path(tmp_path_factory.mktemp("booking-api")) / "server.log"
    with log_path.open("wb") as log:
        process = launch_server(port, log)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
