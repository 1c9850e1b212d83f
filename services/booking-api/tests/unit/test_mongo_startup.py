"""The booking-api started before MongoDB answers, then MongoDB comes up: the half of
``tests/integration/test_startup.py`` that needs a database, with a fake at the seam (the
memory store, whose start fails as the driver does until it is "up")."""

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from pydantic import SecretStr
from pymongo.errors import ServerSelectionTimeoutError
from structlog.testing import capture_logs

from booking_api.adapters.memory import MemoryStorage
from booking_api.app import create_app
from booking_api.config import Settings
from booking_api.startup import MongoStartup, mongo_hosts
from slotstream_contracts.settings import MONGO_UNREACHABLE_EXIT_CODE

PASSWORD = "n0t-in-any-log-9d2e"
URL = f"mongodb://booking-api:{PASSWORD}@db1:27017,db2:27017/slotstream?replicaSet=rs0"
#: what the driver raises when no server answers: the address and cause, then the timeout
#: and the whole topology description
UNREACHABLE = (
    "db1:27017: [Errno 111] Connection refused (configured timeouts: connectTimeoutMS: "
    "5000.0ms), Timeout: 5.0s, Topology Description: <TopologyDescription …>"
)


class LateStorage(MemoryStorage):
    """The memory store, whose start fails as against a MongoDB that does not answer until
    :attr:`up`; counts the attempts."""

    def __init__(self) -> None:
        super().__init__()
        self.up = False
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        if not self.up:
            raise ServerSelectionTimeoutError(UNREACHABLE)


async def _until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_unready_with_503s_until_mongodb_answers_then_serves(
    settings: Settings, auth: Callable[..., dict[str, str]]
) -> None:
    late = LateStorage()
    mongo = settings.model_copy(update={"storage": "mongo", "mongo_url": SecretStr(URL)})
    app = create_app(mongo, open_storage=lambda _settings: late)
    transport = httpx.ASGITransport(app=app)
    with capture_logs() as logs:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://booking") as client,
        ):
            assert (await client.get("/healthz")).status_code == 200
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.headers["content-type"] == "application/problem+json"
            assert ready.headers["retry-after"] == "1"
            assert ready.json()["type"] == "urn:slotstream:problem:starting"
            listing = await client.get("/api/instructors")
            assert listing.status_code == 503
            assert listing.headers["content-type"] == "application/problem+json"
            assert listing.headers["retry-after"] == "1"
            create = await client.post(
                "/api/instructors", json={"name": "Ada"}, headers=auth("i1", "instructor")
            )
            assert create.status_code == 503

            await _until(lambda: late.starts >= 3)
            late.up = True
            deadline = time.monotonic() + 10
            while (await client.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            create = await client.post(
                "/api/instructors", json={"name": "Ada"}, headers=auth("i1", "instructor")
            )
            assert create.status_code == 201, create.text
            listing = await client.get("/api/instructors")
            assert [i["name"] for i in listing.json()] == ["Ada"]

    assert PASSWORD not in repr(logs)
    retries = [e for e in logs if e["event"] == "mongodb not reachable: retrying"]
    assert len(retries) == late.starts - 1
    for attempt, line in enumerate(retries, start=1):
        assert line["hosts"] == "db1:27017,db2:27017"
        assert line["attempt"] == attempt
        assert line["error"] == (
            "ServerSelectionTimeoutError: db1:27017: [Errno 111] Connection refused "
            "(configured timeouts: connectTimeoutMS: 5000.0ms)"
        )
        assert 0 < line["retry_in"] <= 5
    (started,) = [e for e in logs if e["event"] == "mongodb reachable: started"]
    assert started["attempts"] == late.starts


async def test_gives_up_after_its_start_timeout_with_one_line() -> None:
    async def unreachable() -> None:
        raise ServerSelectionTimeoutError(UNREACHABLE)

    startup = MongoStartup("db1:27017", start_timeout_seconds=0.5, driver_timeout_seconds=5)
    began = time.monotonic()
    with capture_logs() as logs:
        assert await startup.run([unreachable]) is False
    assert time.monotonic() - began < 0.5 + 0.1  # given up, not slept past (+ timer slack)
    assert startup.gave_up
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["mongodb not reachable: giving up"]
    assert errors[0]["hosts"] == "db1:27017"
    assert errors[0]["exit_code"] == MONGO_UNREACHABLE_EXIT_CODE == 69
    assert errors[0]["attempts"] == startup.attempts


async def test_a_start_runs_every_step_again_until_all_succeed_in_one_attempt() -> None:
    done: list[str] = []
    failures = iter([True, False])

    async def indexes() -> None:
        done.append("indexes")

    async def tickets() -> None:
        done.append("tickets")
        if next(failures):
            raise ServerSelectionTimeoutError(UNREACHABLE)

    assert await MongoStartup("db1:27017", None, 5).run([indexes, tickets]) is True
    assert done == ["indexes", "tickets", "indexes", "tickets"]


@pytest.mark.parametrize(
    ("url", "hosts"),
    [
        ("mongodb://127.0.0.1:27017/?replicaSet=rs0", "127.0.0.1:27017"),
        (URL, "db1:27017,db2:27017"),
        (
            "mongodb://u:p%40ss%2Fw@mongo-0.mongo:27017,mongo-1.mongo?tls=true",
            "mongo-0.mongo:27017,mongo-1.mongo",
        ),
        ("mongodb+srv://user:secret@cluster0.example.net/slotstream", "cluster0.example.net"),
        ("mongodb://user:secret@[::1]:27017", "[::1]:27017"),
        ("mongodb://%2Ftmp%2Fmongodb-27017.sock/", "%2Ftmp%2Fmongodb-27017.sock"),
    ],
)
def test_mongo_hosts_are_the_hosts_without_credentials(url: str, hosts: str) -> None:
    assert mongo_hosts(url) == hosts
