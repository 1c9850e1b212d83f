"""``python -m change_publisher`` as deployed: env settings, ops port, the feed, SIGTERM."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import Response

from change_publisher.adapters.memory import MemoryDatabase
from slotstream_contracts.documents import SLOTS
from slotstream_testkit.kafka import KafkaEndpoint
from slotstream_testkit.net import free_port

from ..conftest import TOKEN, Docs, FakeFeed
from .conftest import Topics, consume, header

pytestmark = pytest.mark.integration


@pytest.fixture
async def feed_server(database: MemoryDatabase) -> AsyncIterator[str]:
    """The fake booking-api feed on a real port (the process cannot use a mock transport)."""
    feed = FakeFeed(database)

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope)
        answer = await feed(
            httpx.Request(request.method, str(request.url), headers=request.headers.raw)
        )
        response = Response(answer.content, status_code=answer.status_code)
        await response(scope, receive, send)  # type: ignore[arg-type]

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_process_serves_ops_publishes_and_stops_gracefully_on_sigterm(
    kafka: KafkaEndpoint,
    topics: Topics,
    database: MemoryDatabase,
    feed_server: str,
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PUBLISHER_SOURCE": "feed",
        "PUBLISHER_FEED_URL": feed_server,
        "PUBLISHER_FEED_TOKEN": TOKEN,
        "PUBLISHER_FEED_WAIT": "0.5",
        "PUBLISHER_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "PUBLISHER_ENABLE_IDEMPOTENCE": str(kafka.supports_idempotence).lower(),
        "PUBLISHER_TOPICS__SCHEDULE": topics.schedule,
        "PUBLISHER_TOPICS__NOTIFICATIONS": topics.notifications,
        "PUBLISHER_TOPICS__DEADLETTER": topics.deadletter,
        "PUBLISHER_HTTP_HOST": "127.0.0.1",
        "PUBLISHER_HTTP_PORT": str(port),
        "PUBLISHER_INSTANCE_ID": "proc-1",
    }
    log_path = tmp_path / "publisher.log"

    def start() -> "subprocess.Popen[bytes]":
        with open(log_path, "wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "change_publisher"], env=env, stdout=log, stderr=log
            )

    process = await asyncio.to_thread(start)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(300):
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            ready = await client.get("/readyz")
            assert ready.json()["role"] == "leader"
            database.insert(SLOTS, Docs.slot("s1", "i1"))
            records = await consume(
                kafka.bootstrap_servers, (topics.schedule,), lambda rs: rs != []
            )
            assert [header(r, "ce_type") for r in records] == [b"slot.created"]
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
