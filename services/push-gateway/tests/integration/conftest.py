"""Real Tansu, two real gateway servers (uvicorn, uvloop, in threads) on free ports, and a
fake booking-api serving snapshots over HTTP."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI, Header, Response
from pydantic import SecretStr

from push_gateway.app import build_server
from push_gateway.config import GatewayKafkaSettings, Settings
from push_gateway.testing import snapshot
from slotstream_contracts.auth import JwtSettings
from slotstream_contracts.entities import SlotData
from slotstream_contracts.settings import TopicSettings
from slotstream_testkit.kafka import KafkaEndpoint, create_topics
from slotstream_testkit.net import free_port

#: no leeway, so a token minted to expire in a second ends its stream a second later
INTERNAL_TOKEN = "integration-internal-token-3e8a1f0c9b7d"
JWT = JwtSettings(secret=SecretStr("integration-secret-7c1e9a4f0b3d8e2a6f5c"), leeway_seconds=0)


@dataclass
class FakeBookingApi:
    slots: dict[str, list[SlotData]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    #: stream tickets → the redemption answer (sub, role, name, expiresAt), each good once
    tickets: dict[str, dict[str, object]] = field(default_factory=dict)
    port: int = 0

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/api/instructors/{instructor_id}/schedule")
        async def schedule(instructor_id: str) -> Response:
            self.requests.append(instructor_id)
            if instructor_id.startswith("ghost"):
                return Response(status_code=404)
            body = snapshot(instructor_id, self.slots.get(instructor_id, []))
            return Response(body.model_dump_json(by_alias=True), media_type="application/json")

        @app.post("/internal/stream-tickets/redeem")
        async def redeem(
            body: dict[str, str], x_internal_token: str | None = Header(default=None)
        ) -> Response:
            if x_internal_token != INTERNAL_TOKEN:
                return Response(status_code=403)
            answer = self.tickets.pop(body["ticket"], None)
            if answer is None:
                return Response(status_code=404)
            return Response(orjson.dumps(answer), media_type="application/json")

        return app


class ServerThread:
    """A uvicorn server running in its own thread and event loop (uvloop)."""

    def __init__(self, server: uvicorn.Server, port: int) -> None:
        self.server = server
        self.port = port
        self._thread = threading.Thread(target=server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_path: str, timeout: float = 30) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + ready_path, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"server on {self.port} not ready")

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(15)


@pytest.fixture(scope="module")
def topics(kafka: KafkaEndpoint) -> TopicSettings:
    tag = uuid.uuid4().hex[:8]
    names = TopicSettings(
        schedule=f"test.{tag}.schedule",
        notifications=f"test.{tag}.notifications",
        presence=f"test.{tag}.presence",
    )
    asyncio.run(
        create_topics(
            kafka.bootstrap_servers,
            {names.schedule: 3, names.notifications: 2, names.presence: 1},
            {names.presence: {"cleanup.policy": "compact"}},
        )
    )
    return names


@pytest.fixture(scope="module")
def booking_api() -> Iterator[FakeBookingApi]:
    fake = FakeBookingApi(port=free_port())
    config = uvicorn.Config(fake.app(), host="127.0.0.1", port=fake.port, log_config=None)
    thread = ServerThread(uvicorn.Server(config), fake.port).start("/api/instructors/x/schedule")
    try:
        yield fake
    finally:
        thread.stop()


def start_gateway_process(
    kafka: KafkaEndpoint,
    topics: TopicSettings,
    booking_api: "FakeBookingApi",
    port: int,
    log: Path,
    **extra: str,
) -> "subprocess.Popen[bytes]":
    """``python -m push_gateway`` in its own session (the caller stops it), its stderr and
    its workers' in ``log``: a pipe nobody reads until the end can fill up and stall them."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "GATEWAY_TOPICS__SCHEDULE": topics.schedule,
        "GATEWAY_TOPICS__NOTIFICATIONS": topics.notifications,
        "GATEWAY_TOPICS__PRESENCE": topics.presence,
        "GATEWAY_BOOKING_API_URL": f"http://127.0.0.1:{booking_api.port}",
        "GATEWAY_LOG__LEVEL": "WARNING",
        "GATEWAY_JWT__SECRET": JWT.secret.get_secret_value() if JWT.secret else "",
        **extra,
    }
    with log.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "push_gateway"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )


def stop_gateway_process(process: "subprocess.Popen[bytes]") -> int:
    """SIGTERM (if it still runs) and its exit status; its whole session is killed if it
    has not stopped within 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait(5)


def wait_ready(process: "subprocess.Popen[bytes]", url: str, log: Path) -> None:
    """Until ``url`` answers 200 (60 s), failing at once if the process exits."""
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, f"the gateway exited: {log.read_text()}"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} not ready: {log.read_text()}"
        time.sleep(0.1)


def gateway_settings(
    kafka: KafkaEndpoint, topics: TopicSettings, booking_api: FakeBookingApi, **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": free_port(),
        "instance_id": f"gw-{uuid.uuid4().hex[:6]}",
        "booking_api_url": f"http://127.0.0.1:{booking_api.port}",
        "kafka": GatewayKafkaSettings(bootstrap_servers=kafka.bootstrap_servers),
        "topics": topics,
        "jwt": JWT,
        "internal_token": INTERNAL_TOKEN,
        "max_pending_bytes": 16 * 1024,
        "presence_interval_seconds": 0.3,
        "cors_origins": ["http://page.example"],
        **overrides,
    }
    return Settings.model_validate(values)


@pytest.fixture(scope="module")
def gateways(
    kafka: KafkaEndpoint, topics: TopicSettings, booking_api: FakeBookingApi
) -> Iterator[tuple[ServerThread, ServerThread]]:
    started: list[ServerThread] = []
    try:
        for limit in (100, 6):
            settings = gateway_settings(kafka, topics, booking_api, max_connections=limit)
            started.append(ServerThread(build_server(settings), settings.port).start("/readyz"))
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()
