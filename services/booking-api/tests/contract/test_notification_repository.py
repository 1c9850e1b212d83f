from datetime import UTC, datetime, timedelta

from booking_api.ports import Storage
from slotstream_contracts.documents import NotificationDocument
from slotstream_contracts.entities import NotificationKind

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def note(note_id: str, user_id: str, minute: int) -> NotificationDocument:
    return NotificationDocument(
        id=note_id,
        user_id=user_id,
        kind=NotificationKind.BOOKING_CREATED,
        message=f"message {note_id}",
        booking_id="b1",
        slot_id="s1",
        version=1,
        created_at=NOW + timedelta(minutes=minute),
    )


async def test_list_newest_first_per_user(storage: Storage) -> None:
    await storage.notifications.insert(note("n1", "u1", 1))
    await storage.notifications.insert(note("n2", "u1", 2))
    await storage.notifications.insert(note("n3", "u2", 3))
    assert [n.id for n in await storage.notifications.list_for_user("u1", 10, False)] == [
        "n2",
        "n1",
    ]
    assert [n.id for n in await storage.notifications.list_for_user("u1", 1, False)] == ["n2"]


async def test_mark_read_only_for_the_owner_and_only_once(storage: Storage) -> None:
    await storage.notifications.insert(note("n1", "u1", 1))
    await storage.notifications.insert(note("n2", "u1", 2))
    assert await storage.notifications.mark_read("n1", "u2") is None
    first = await storage.notifications.mark_read("n1", "u1")
    assert first is not None
    assert first.read
    assert first.version == 2
    again = await storage.notifications.mark_read("n1", "u1")
    assert again is not None
    assert again.read
    assert again.version == 2
    assert await storage.notifications.mark_read("missing", "u1") is None
    unread = await storage.notifications.list_for_user("u1", 10, True)
    assert [n.id for n in unread] == ["n2"]
