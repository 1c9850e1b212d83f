"""Shared helpers: stored documents as the booking-api writes them, and publisher wiring."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

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
from slotstream_contracts.documents import BOOKINGS, NOTIFICATIONS, SLOTS
from slotstream_contracts.topics import DEADLETTER_TOPIC, NOTIFICATIONS_TOPIC, SCHEDULE_TOPIC

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
ROUTER = Router(
    {SLOTS: SCHEDULE_TOPIC, BOOKINGS: SCHEDULE_TOPIC, NOTIFICATIONS: NOTIFICATIONS_TOPIC},
    DEADLETTER_TOPIC,
)


class Docs:
    """Stored documents (camelCase, ``_id``) like the booking-api writes them."""

    @staticmethod
    def slot(slot_id: str = "s1", instructor: str = "i1", **fields: Any) -> dict[str, Any]:
        return {
            "_id": slot_id,
            "instructorId": instructor,
            "start": NOW + timedelta(days=1),
            "end": NOW + timedelta(days=1, hours=1),
            "status": "available",
            "bookingId": None,
            "studentId": None,
            "version": 1,
            "createdAt": NOW,
            "updatedAt": NOW,
            **fields,
        }

    @staticmethod
    def booking(booking_id: str = "b1", slot_id: str = "s1", **fields: Any) -> dict[str, Any]:
        return {
            "_id": booking_id,
            "slotId": slot_id,
            "instructorId": "i1",
            "studentId": "u1",
            "slotStart": NOW + timedelta(days=1),
            "slotEnd": NOW + timedelta(days=1, hours=1),
            "status": "active",
            "version": 1,
            "createdAt": NOW,
            "cancelledAt": None,
            **fields,
        }

    @staticmethod
    def notification(note_id: str = "n1", user: str = "u1", **fields: Any) -> dict[str, Any]:
        return {
            "_id": note_id,
            "userId": user,
            "kind": "booking.created",
            "message": "Your booking is confirmed",
            "bookingId": "b1",
            "slotId": "s1",
            "read": False,
            "version": 1,
            "createdAt": NOW,
            **fields,
        }


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
            router=ROUTER,
        )

    return make
