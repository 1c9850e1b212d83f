"""Every request leaves one JSON log line carrying its request id; CORS when configured."""

import io
import logging
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest

from booking_api.adapters.memory import MemoryStorage
from booking_api.app import create_app
from booking_api.config import Settings
from slotstream_contracts.logs import configure_logging
from slotstream_contracts.settings import LogSettings


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("booking-api", LogSettings(level="INFO"))
    try:
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


async def test_request_log_lines_carry_the_request_id(
    client: httpx.AsyncClient, json_logs: io.StringIO
) -> None:
    await client.get("/api/instructors/nobody/schedule", headers={"X-Request-ID": "req-42"})
    lines = [orjson.loads(line) for line in json_logs.getvalue().splitlines()]
    [access] = [line for line in lines if line["event"] == "request"]
    assert access["request_id"] == "req-42"
    assert access["route"] == "/api/instructors/{instructor_id}/schedule"
    assert access["status"] == 404
    assert access["service"] == "booking-api"
    rejected = [line for line in lines if line["event"] == "request.rejected"]
    assert rejected[0]["request_id"] == "req-42"


@pytest.fixture
async def cors_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an API that lets pages of http://localhost:8080 call it."""
    configured = settings.model_copy(update={"cors_origins": ["http://localhost:8080"]})
    app = create_app(configured, storage=MemoryStorage())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://booking") as client:
        yield client


async def preflight_of(
    client: httpx.AsyncClient, path: str, method: str, headers: str
) -> httpx.Response:
    """The browser's question before a cross-origin ``method`` with ``headers``."""
    return await client.options(
        path,
        headers={
            "Origin": "http://localhost:8080",
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )


async def test_cors_preflight_for_configured_origins(cors_client: httpx.AsyncClient) -> None:
    preflight = await preflight_of(
        cors_client, "/api/bookings", "POST", "authorization,idempotency-key"
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:8080"
    other = await cors_client.get("/healthz", headers={"Origin": "http://evil.test"})
    assert "access-control-allow-origin" not in other.headers


async def test_cors_lets_a_page_on_another_origin_move_a_slot(
    cors_client: httpx.AsyncClient,
) -> None:
    """Moving a slot is PATCH with If-Match, and its answer's ETag is the next If-Match:
    the preflight allows both, and the page may read ETag, Retry-After and the replay mark."""
    preflight = await preflight_of(
        cors_client, "/api/slots/s1", "PATCH", "authorization,content-type,if-match"
    )
    assert preflight.status_code == 200, preflight.text
    answer = await cors_client.get("/healthz", headers={"Origin": "http://localhost:8080"})
    exposed = answer.headers["access-control-expose-headers"].lower().split(", ")
    assert {"etag", "retry-after", "idempotent-replayed"} <= set(exposed)
