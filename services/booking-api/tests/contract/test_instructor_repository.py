from datetime import UTC, datetime

import pytest

from booking_api.ports import DuplicateKey, Storage
from slotstream_contracts.documents import InstructorDocument

NOW = datetime(2026, 5, 4, 12, 0, 0, 123456, tzinfo=UTC)


def instructor(instructor_id: str, name: str) -> InstructorDocument:
    return InstructorDocument(id=instructor_id, name=name, timezone="Europe/Berlin", created_at=NOW)


async def test_insert_then_get_round_trips_with_millisecond_utc(storage: Storage) -> None:
    await storage.instructors.insert(instructor("i1", "Ada"))
    found = await storage.instructors.get("i1")
    assert found is not None
    assert found.name == "Ada"
    assert found.created_at == NOW.replace(microsecond=123000)
    assert found.created_at.utcoffset() is not None
    assert await storage.instructors.get("nobody") is None


async def test_ids_are_unique(storage: Storage) -> None:
    await storage.instructors.insert(instructor("i1", "Ada"))
    with pytest.raises(DuplicateKey):
        await storage.instructors.insert(instructor("i1", "Someone else"))
    found = await storage.instructors.get("i1")
    assert found is not None
    assert found.name == "Ada"


async def test_list_is_ordered_by_name_and_limited(storage: Storage) -> None:
    for instructor_id, name in [("i3", "Cleo"), ("i1", "Ada"), ("i2", "Bob")]:
        await storage.instructors.insert(instructor(instructor_id, name))
    assert [i.name for i in await storage.instructors.list(10)] == ["Ada", "Bob", "Cleo"]
    assert [i.id for i in await storage.instructors.list(2)] == ["i1", "i2"]
