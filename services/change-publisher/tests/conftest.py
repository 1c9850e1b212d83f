"""Shared helpers: stored documents as the booking-api writes them, and publisher wiring."""

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from change_publisher.adapters.memory import (
    MemoryChangeSource,
    MemoryCheckpointStore,
    MemoryDatabase,
    MemoryLeaseStore,
    MemoryProducer,
)
from change_publisher.domain.records import Router
from change_publisher.ports import ChangeSource, EventProducer
from change_publisher.publisher import Publisher, PublisherOptions
from slotstream_contracts.changelog import ChangeHistoryLost, InvalidResumeToken
from slotstream_contracts.changes import ClusterTime
from slotstream_contracts.documents import (
    BOOKINGS,
    NOTIFICATIONS,
    SLOTS,
    BookingDocument,
    NotificationDocument,
    SlotDocument,
)
from slotstream_contracts.entities import BookingStatus, NotificationKind, SlotStatus
from slotstream_contracts.topics import DEADLETTER_TOPIC, NOTIFICATIONS_TOPIC, SCHEDULE_TOPIC

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
ROUTER = Router(
    {SLOTS: SCHEDULE_TOPIC, BOOKINGS: NOTIFICATIONS_TOPIC, NOTIFICATIONS: NOTIFICATIONS_TOPIC},
    DEADLETTER_TOPIC,
)


class Docs:
    """Stored documents (camelCase, ``_id``) like the booking-api writes them: built from
    the contract's document models; ``fields`` override afterwards, so a test may store a
    document the models would refuse."""

    @staticmethod
    def slot(slot_id: str = "s1", instructor: str = "i1", **fields: Any) -> dict[str, Any]:
        document = SlotDocument(
            id=slot_id,
            instructor_id=instructor,
            start=NOW + timedelta(days=1),
            end=NOW + timedelta(days=1, hours=1),
            status=SlotStatus.AVAILABLE,
            version=1,
            created_at=NOW,
            updated_at=NOW,
        )
        return {**document.to_document(), **fields}

    @staticmethod
    def booking(booking_id: str = "b1", slot_id: str = "s1", **fields: Any) -> dict[str, Any]:
        document = BookingDocument(
            id=booking_id,
            slot_id=slot_id,
            instructor_id="i1",
            student_id="u1",
            slot_start=NOW + timedelta(days=1),
            slot_end=NOW + timedelta(days=1, hours=1),
            status=BookingStatus.ACTIVE,
            version=1,
            created_at=NOW,
        )
        return {**document.to_document(), **fields}

    @staticmethod
    def notification(note_id: str = "n1", user: str = "u1", **fields: Any) -> dict[str, Any]:
        document = NotificationDocument(
            id=note_id,
            user_id=user,
            kind=NotificationKind.BOOKING_CREATED,
            message="Your booking is confirmed",
            booking_id="b1",
            slot_id="s1",
            version=1,
            created_at=NOW,
        )
        return {**document.to_document(), **fields}


@pytest.fixture
def docs() -> type[Docs]:
    return Docs


@pytest.fixture
def database() -> MemoryDatabase:
    return MemoryDatabase()


PublisherFactory = Callable[..., Publisher]


@pytest.fixture
def checkpoints() -> MemoryCheckpointStore:
    return MemoryCheckpointStore()


@pytest.fixture
def leases() -> MemoryLeaseStore:
    return MemoryLeaseStore()


@pytest.fixture
def make_publisher(
    database: MemoryDatabase, checkpoints: MemoryCheckpointStore, leases: MemoryLeaseStore
) -> PublisherFactory:
    """A publisher over the fake source, sharing the stores with every other one built."""

    def make(
        *,
        producer: EventProducer | None = None,
        source: ChangeSource | None = None,
        instance: str = "p1",
        router: Router = ROUTER,
        **options: Any,
    ) -> Publisher:
        settings: dict[str, Any] = {
            "stream_name": "test",
            "instance_id": instance,
            "collections": (SLOTS, BOOKINGS, NOTIFICATIONS),
            "checkpoint_interval": 0.05,
            "lease_ttl": 2.0,
            "backoff_initial": 0.05,
            "backoff_max": 0.2,
            **options,
        }
        return Publisher(
            PublisherOptions(**settings),
            source=source or MemoryChangeSource(database, wait=0.05),
            checkpoints=checkpoints,
            leases=leases,
            producer=producer or MemoryProducer(),
            router=router,
        )

    return make


TOKEN = "internal-secret"


class FakeFeed:
    """``/internal/changes`` and ``/internal/snapshot`` over a MemoryDatabase."""

    def __init__(self, database: MemoryDatabase) -> None:
        self.database = database
        self.requests: list[httpx.Request] = []

    def problem(self, status: int, detail: str) -> httpx.Response:
        return httpx.Response(
            status,
            content=orjson.dumps({"title": "error", "status": status, "detail": detail}),
            headers={"content-type": "application/problem+json"},
        )

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("X-Internal-Token") != TOKEN:
            return self.problem(403, "missing or wrong X-Internal-Token")
        log = self.database.log
        params = request.url.params
        if request.url.path == "/internal/snapshot":
            at = log.cluster_time
            docs = list(self.database.collections.get(params["collection"], {}).values())
            copy = {"operationTime": at.model_dump(), "documents": docs}
            return httpx.Response(200, content=orjson.dumps(copy))
        limit = int(params.get("limit", "1000"))
        wait = float(params.get("wait", "0"))
        try:
            if "atOperationTime" in params:
                match = re.fullmatch(r"(\d+)\.(\d+)", params["atOperationTime"])
                assert match is not None
                events = log.read_from_time(ClusterTime(t=int(match[1]), i=int(match[2])), limit)
                if not events and wait > 0:
                    events = await log.wait_after(log.latest_token, limit, wait)
            else:
                after = params.get("after")
                token = None if after is None else {"_data": after}
                events = await log.wait_after(token, limit, wait)
        except ChangeHistoryLost as exc:
            return self.problem(410, str(exc))
        except InvalidResumeToken as exc:
            return self.problem(400, str(exc))
        body: dict[str, Any] = {
            "changes": [e.model_dump(mode="json", by_alias=True) for e in events],
            "postBatchResumeToken": events[-1].token if events else log.latest_token,
        }
        return httpx.Response(200, content=orjson.dumps(body))
