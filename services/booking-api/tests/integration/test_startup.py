"""A booking-api started while MongoDB does not answer (nothing listens on its port; no
MongoDB needed). It must serve from the first moment — ``/healthz`` 200, ``/readyz`` and
every API request 503 problem+json with ``Retry-After`` — log one line per attempt naming
the host (never the password), and with ``BOOKING_API_MONGO_START_TIMEOUT_SECONDS`` give up
with one line and exit 69. The half where MongoDB comes up later is
``tests/unit/test_mongo_startup.py``."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from slotstream_contracts.auth import JwtSettings, Role, mint_token
from slotstream_contracts.settings import MONGO_UNREACHABLE_EXIT_CODE
from slotstream_testkit.net import free_port

from .conftest import SERVER_SECRET, launch_server

pytestmark = pytest.mark.integration

PASSWORD = "n0t-in-any-log-4f7c1b"


def _mongo_settings(mongo_port: int, **more: str) -> dict[str, str]:
    return {
        "BOOKING_API_STORAGE": "mongo",
        "BOOKING_API_MONGO_URL": (
            f"mongodb://booking-api:{PASSWORD}@127.0.0.1:{mongo_port}/?directConnection=true"
        ),
        "BOOKING_API_LOG__LEVEL": "INFO",
        **more,
    }


def _stop(process: "subprocess.Popen[bytes]") -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def _events(text: str, event: str) -> list[dict[str, object]]:
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


async def test_mongo_not_answering_at_start_serves_unready_503_and_says_why(
    tmp_path: Path, server_jwt: JwtSettings
) -> None:
    port, mongo_port, log_path = free_port(), free_port(), tmp_path / "server.log"
    began = time.monotonic()
    with log_path.open("wb") as log:
        # a short driver timeout: an attempt against a closed port lasts that long
        process = launch_server(
            port, log, **_mongo_settings(mongo_port, BOOKING_API_MONGO_TIMEOUT_MS="500")
        )
        listening = time.monotonic() - began
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                assert (await client.get("/healthz")).status_code == 200
                ready = await client.get("/readyz")
                assert ready.status_code == 503, ready.text
                assert ready.headers["content-type"] == "application/problem+json"
                assert ready.headers["retry-after"] == "1"
                assert "starting" in ready.json()["detail"]
                listing = await client.get("/api/instructors")
                assert listing.status_code == 503, listing.text
                assert listing.headers["content-type"] == "application/problem+json"
                assert listing.headers["retry-after"] == "1"
                student = mint_token(server_jwt, "s1", Role.STUDENT)
                booking = await client.post(
                    "/api/bookings",
                    json={"slotId": "sl_0123456789abcdef"},
                    headers={"Authorization": f"Bearer {student}"},
                )
                assert booking.status_code == 503, booking.text
                assert booking.headers["retry-after"] == "1"
                # at least two attempts, each one line; the process keeps running
                deadline = time.monotonic() + 20
                while len(_events(log_path.read_text(), "mongodb not reachable: retrying")) < 2:
                    assert process.poll() is None, log_path.read_text()
                    assert time.monotonic() < deadline, log_path.read_text()
                    await asyncio.sleep(0.2)
                assert (await client.get("/healthz")).status_code == 200
                assert (await client.get("/readyz")).status_code == 503
        finally:
            code = await asyncio.to_thread(_stop, process)
    text = log_path.read_text()
    assert code in (0, -signal.SIGTERM), text
    assert listening < 20
    assert "Traceback" not in text
    assert PASSWORD not in text
    retries = _events(text, "mongodb not reachable: retrying")
    for line in retries:
        assert line["hosts"] == f"127.0.0.1:{mongo_port}", line
        assert str(line["error"]).startswith("ServerSelectionTimeoutError: "), line
        assert "Connect call failed" in str(line["error"]) or "refused" in str(line["error"])
    # nothing else warns per attempt (stamina's retry lines, the driver's own)
    warnings = [
        line
        for line in (orjson.loads(ln) for ln in text.splitlines() if ln.startswith("{"))
        if line.get("level") in ("warning", "error")
    ]
    assert warnings == retries, warnings


def test_mongo_not_answering_within_its_start_timeout_exits_69_with_one_line(
    tmp_path: Path,
) -> None:
    port, mongo_port, log_path = free_port(), free_port(), tmp_path / "server.log"
    # An attempt lasts the driver's timeout (2 s): the first fails, and is said; the second
    # begins with less than that left of the bound, and is cut at the bound.
    settings = _mongo_settings(
        mongo_port,
        BOOKING_API_MONGO_TIMEOUT_MS="2000",
        BOOKING_API_MONGO_START_TIMEOUT_SECONDS="3",
    )
    with log_path.open("wb") as log:
        process = launch_server(port, log, **settings)
        began = time.monotonic()
        try:
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            code = process.wait(timeout=30)
        finally:
            _stop(process)
    waited = time.monotonic() - began
    text = log_path.read_text()
    assert code == MONGO_UNREACHABLE_EXIT_CODE, text[-3000:]
    assert waited < 5.5, (waited, text[-3000:])
    assert "Traceback" not in text
    assert PASSWORD not in text
    assert _events(text, "mongodb not reachable: retrying")
    (gave_up,) = _events(text, "mongodb not reachable: giving up")
    assert gave_up["hosts"] == f"127.0.0.1:{mongo_port}"
    assert gave_up["exit_code"] == MONGO_UNREACHABLE_EXIT_CODE
    assert str(gave_up["error"]).startswith("ServerSelectionTimeoutError: ")


def test_malformed_mongo_url_refuses_to_start_with_one_line_and_exit_2() -> None:
    """The driver refuses this URL when the client is built; that used to happen in the
    server's start: exit 3 and a traceback. Now a bad setting: one line, exit 2."""
    env = {
        **os.environ,
        "BOOKING_API_JWT__SECRET": SERVER_SECRET,
        "BOOKING_API_PORT": str(free_port()),
        "BOOKING_API_STORAGE": "mongo",
        # an unescaped ':' in the password
        "BOOKING_API_MONGO_URL": f"mongodb://booking-api:pa:{PASSWORD}@127.0.0.1:27017/",
    }
    ran = subprocess.run(
        [sys.executable, "-m", "booking_api"], env=env, capture_output=True, timeout=30
    )
    out, err = ran.stdout.decode(), ran.stderr.decode()
    assert ran.returncode == 2, (ran.returncode, out[-3000:], err[-3000:])
    assert err.startswith("booking-api: refusing to start, bad settings:"), err
    assert "BOOKING_API_MONGO_URL" in err
    assert "Traceback" not in out + err
    assert PASSWORD not in out + err
