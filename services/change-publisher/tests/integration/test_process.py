"""``python -m change_publisher`` as deployed: env settings, ops port, the real booking-api's
change feed, SIGTERM."""

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from pydantic import SecretStr

from slotstream_contracts.auth import JwtSettings, Role, mint_token
from slotstream_contracts.settings import KAFKA_UNREACHABLE_EXIT_CODE
from slotstream_testkit.kafka import KafkaEndpoint
from slotstream_testkit.net import free_port

from .conftest import Topics, consume, header

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class BookingApi:
    url: str
    jwt: JwtSettings
    internal_token: str


@pytest.fixture
def booking_api(tmp_path: Path) -> Iterator[BookingApi]:
    """The real booking-api (memory backend) as a process: its ``/internal/changes`` is
    what the publisher reads in feed mode, not a stand-in that could drift from it."""
    port = free_port()
    secret = secrets.token_urlsafe(48)
    internal = secrets.token_urlsafe(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKING_API_")} | {
        "BOOKING_API_HOST": "127.0.0.1",
        "BOOKING_API_PORT": str(port),
        "BOOKING_API_STORAGE": "memory",
        "BOOKING_API_JWT__SECRET": secret,
        "BOOKING_API_INTERNAL_TOKEN": internal,
    }
    with open(tmp_path / "booking-api.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "booking_api"], env=env, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            if process.poll() is not None:
                raise AssertionError((tmp_path / "booking-api.log").read_text()[-2000:])
            time.sleep(0.1)
        yield BookingApi(url, JwtSettings(secret=SecretStr(secret)), internal)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def create_slot(api: BookingApi, instructor: str) -> str:
    """An instructor and one slot, through the public API (the slot change is published)."""
    token = mint_token(api.jwt, instructor, Role.INSTRUCTOR, "Ada", timedelta(minutes=10))
    headers = {"Authorization": f"Bearer {token}"}
    start = (datetime.now(UTC) + timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=10) as client:
        created = await client.post("/api/instructors", json={"name": "Ada", "timezone": "UTC"})
        assert created.status_code in (200, 201), created.text
        slot = await client.post(
            f"/api/instructors/{instructor}/slots",
            json={"start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat()},
        )
        assert slot.status_code == 201, slot.text
        return str(slot.json()["id"])


def publisher_env(
    api: BookingApi, kafka: KafkaEndpoint, topics: Topics, port: int
) -> dict[str, str]:
    """``python -m change_publisher`` in feed mode on ``api``, ops on ``port``."""
    return os.environ | {
        "PUBLISHER_SOURCE": "feed",
        "PUBLISHER_FEED_URL": api.url,
        "PUBLISHER_FEED_TOKEN": api.internal_token,
        "PUBLISHER_FEED_WAIT": "0.5",
        "PUBLISHER_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "PUBLISHER_ENABLE_IDEMPOTENCE": str(kafka.supports_idempotence).lower(),
        "PUBLISHER_TOPICS__SCHEDULE": topics.schedule,
        "PUBLISHER_TOPICS__NOTIFICATIONS": topics.notifications,
        "PUBLISHER_TOPICS__DEADLETTER": topics.deadletter,
        "PUBLISHER_HTTP_HOST": "127.0.0.1",
        "PUBLISHER_HTTP_PORT": str(port),
    }


async def spawn_publisher(env: dict[str, str], log_path: Path) -> "subprocess.Popen[bytes]":
    """``python -m change_publisher`` with ``env``, its output in ``log_path``."""

    def start() -> "subprocess.Popen[bytes]":
        with open(log_path, "wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "change_publisher"], env=env, stdout=log, stderr=log
            )

    return await asyncio.to_thread(start)


async def wait_ready(port: int, process: "subprocess.Popen[bytes]", log_path: Path) -> None:
    """Until the publisher on ``port`` is ready: a deadline in seconds, not in attempts (a
    loaded machine takes many seconds to start a Python process)."""
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/readyz")).status_code == 200:
                    return
            if process.poll() is not None or time.monotonic() > deadline:
                log = await asyncio.to_thread(log_path.read_text)
                raise AssertionError(f"the publisher is not ready: {log[-2000:]}")
            await asyncio.sleep(0.05)


async def test_process_serves_ops_publishes_and_stops_gracefully_on_sigterm(
    kafka: KafkaEndpoint,
    topics: Topics,
    booking_api: BookingApi,
    tmp_path: Path,
) -> None:
    port = free_port()
    env = publisher_env(booking_api, kafka, topics, port) | {"PUBLISHER_INSTANCE_ID": "proc-1"}
    log_path = tmp_path / "publisher.log"

    process = await spawn_publisher(env, log_path)
    try:
        await wait_ready(port, process, log_path)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            ready = await client.get("/readyz")
            assert ready.json()["role"] == "leader"
            slot_id = await create_slot(booking_api, "i1")
            records = await consume(
                kafka.bootstrap_servers, (topics.schedule,), lambda rs: rs != []
            )
            assert [header(r, "ce_type") for r in records] == [b"slot.created"]
            assert records[0].key == b"i1"
            assert slot_id.encode() in records[0].value
            counted = 'publisher_events_total{type="slot.created"} 1.0'
            for _ in range(100):  # counters are flushed every checkpoint interval
                metrics = (await client.get("/metrics")).text
                if counted in metrics:
                    break
                await asyncio.sleep(0.05)
            assert counted in metrics
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    logs = log_path.read_text()
    assert '"lease released"' in logs
    assert '"publisher stopped"' in logs


async def test_feed_mode_resumes_after_kill_9_from_its_checkpoint_file(
    kafka: KafkaEndpoint,
    topics: Topics,
    booking_api: BookingApi,
    tmp_path: Path,
) -> None:
    """What changed while the publisher was dead is published after its restart: the
    checkpoint (``PUBLISHER_CHECKPOINT_FILE``) outlives the process."""
    port = free_port()
    checkpoint = tmp_path / "state" / "checkpoint.json"
    env = publisher_env(booking_api, kafka, topics, port) | {
        "PUBLISHER_CHECKPOINT_FILE": str(checkpoint),
        "PUBLISHER_CHECKPOINT_INTERVAL": "0.1",
    }

    def spawn() -> "subprocess.Popen[bytes]":
        with open(tmp_path / "publisher.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "change_publisher"], env=env, stdout=log, stderr=log
            )

    async def started() -> "subprocess.Popen[bytes]":
        process = await asyncio.to_thread(spawn)
        await wait_ready(port, process, tmp_path / "publisher.log")
        return process

    first = await started()
    try:
        await create_slot(booking_api, "i1")
        await consume(kafka.bootstrap_servers, (topics.schedule,), lambda rs: rs != [])
        for _ in range(100):  # the checkpoint follows the acknowledgement
            if checkpoint.exists():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    finally:
        first.kill()  # kill -9: no goodbye, no final checkpoint
        first.wait(5)
    while_down = await create_slot(booking_api, "i2")
    second = await started()
    try:
        records = await consume(
            kafka.bootstrap_servers,
            (topics.schedule,),
            lambda rs: any(while_down.encode() in r.value for r in rs),
            within=30,
        )
    finally:
        second.terminate()
        second.wait(20)
    assert {r.key for r in records} == {b"i1", b"i2"}


async def test_kafka_unreachable_at_start_is_unready_then_exits_69_after_its_start_timeout(
    booking_api: BookingApi, tmp_path: Path
) -> None:
    """Kafka not answering (a closed port): the process stays up, live and unready, retrying
    with one line per attempt that names the address and the reason;
    ``PUBLISHER_KAFKA__START_TIMEOUT_SECONDS`` bounds it: then one line and exit 69."""
    port = free_port()
    nowhere = KafkaEndpoint(f"127.0.0.1:{free_port()}", "none", False)
    topics = Topics(schedule="none.s", notifications="none.n", deadletter="none.d")
    env = publisher_env(booking_api, nowhere, topics, port) | {
        "PUBLISHER_KAFKA__START_TIMEOUT_SECONDS": "4",
        "PUBLISHER_BACKOFF_INITIAL": "0.2",
        "PUBLISHER_BACKOFF_MAX": "1",
    }
    log_path = tmp_path / "publisher.log"

    process = await spawn_publisher(env, log_path)
    health: set[tuple[int, int]] = set()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 40
            while process.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    live, ready = await client.get("/healthz"), await client.get("/readyz")
                    health.add((live.status_code, ready.status_code))
                await asyncio.sleep(0.1)
        code = process.poll()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
    text = log_path.read_text()
    assert code == KAFKA_UNREACHABLE_EXIT_CODE, text[-3000:]
    # live and unready while it retried (its last moments, given up: /healthz 503 too)
    assert (200, 503) in health
    assert {ready for _live, ready in health} == {503}
    assert "Traceback" not in text
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    gave_up = [line for line in lines if line["event"] == "kafka not reachable: giving up"]
    assert len(gave_up) == 1, text[-3000:]
    assert gave_up[0]["bootstrap_servers"] == nowhere.bootstrap_servers
    # one line per failed attempt (the last one's is the give-up line), each naming the
    # address and the reason; nothing else about Kafka (aiokafka's own error is folded in)
    retries = [line for line in lines if line["event"] == "kafka not reachable: retrying"]
    assert len(retries) >= 2, text[-3000:]
    for line in retries:
        assert line["bootstrap_servers"] == nowhere.bootstrap_servers
        assert "Connection refused" in line["error"], line
    address = nowhere.bootstrap_servers
    about_kafka = [line for line in lines if address in orjson.dumps(line).decode()]
    assert about_kafka == [*retries, *gave_up], text[-3000:]
    assert gave_up[0]["attempts"] == len(retries) + 1
