from datetime import UTC, datetime, timedelta

import pytest

from booking_api.ports import DEFAULT_NOTIFICATION_RETENTION, DuplicateKey, Storage
from slotstream_contracts.documents import NotificationDocument
from slotstream_contracts.entities import Audience, NotificationKind

#: Near the wall clock, not a fixed date: MongoDB's TTL monitor deletes by the wall clock,
#: so notifications dated more than the retention ago would vanish in the middle of a test.
NOW = datetime.now(UTC).replace(microsecond=0)
RETENTION = DEFAULT_NOTIFICATION_RETENTION
LATER = NOW + timedelta(minutes=10)


STUDENT = Audience.STUDENT


def note(
    note_id: str,
    user_id: str,
    minute: float,
    audience: Audience | None = STUDENT,
) -> NotificationDocument:
    return NotificationDocument(
        audience=audience,
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
    assert [
        n.id
        for n in await storage.notifications.list_for_user(
            "u1", 10, False, audience=STUDENT, now=LATER
        )
    ] == [
        "n2",
        "n1",
    ]
    assert [
        n.id
        for n in await storage.notifications.list_for_user(
            "u1", 1, False, audience=STUDENT, now=LATER
        )
    ] == ["n2"]


async def test_mark_read_only_for_the_owner_and_only_once(storage: Storage) -> None:
    await storage.notifications.insert(note("n1", "u1", 1))
    await storage.notifications.insert(note("n2", "u1", 2))
    assert await storage.notifications.mark_read("n1", "u2", audience=STUDENT) is None
    first = await storage.notifications.mark_read("n1", "u1", audience=STUDENT)
    assert first is not None
    assert first.read
    assert first.version == 2
    again = await storage.notifications.mark_read("n1", "u1", audience=STUDENT)
    assert again is not None
    assert again.read
    assert again.version == 2
    assert await storage.notifications.mark_read("missing", "u1", audience=STUDENT) is None
    unread = await storage.notifications.list_for_user("u1", 10, True, audience=STUDENT, now=LATER)
    assert [n.id for n in unread] == ["n2"]


async def test_a_user_reads_only_the_notifications_of_their_role(storage: Storage) -> None:
    """A student and an instructor may share an id; documents without an audience (stored
    before it existed) are every role's."""
    await storage.notifications.insert(note("n1", "twin", 1, Audience.INSTRUCTOR))
    await storage.notifications.insert(note("n2", "twin", 2, STUDENT))
    await storage.notifications.insert(note("n3", "twin", 3, None))
    notes = storage.notifications
    as_student = await notes.list_for_user("twin", 10, False, audience=STUDENT, now=LATER)
    assert [n.id for n in as_student] == ["n3", "n2"]
    as_teacher = await notes.list_for_user(
        "twin", 10, False, audience=Audience.INSTRUCTOR, now=LATER
    )
    assert [n.id for n in as_teacher] == ["n3", "n1"]
    assert await notes.mark_read("n1", "twin", audience=STUDENT) is None
    assert await notes.mark_read("n1", "twin", audience=Audience.INSTRUCTOR) is not None
    assert (await notes.mark_read("n3", "twin", audience=STUDENT)) is not None


async def test_a_taken_id_is_a_duplicate_key_and_keeps_the_first(storage: Storage) -> None:
    """A notification whose id is derived (a booking sent again with its Idempotency-Key)
    is written once: the second insert under the id fails, the first stays."""
    await storage.notifications.insert(note("n1", "u1", 1))
    with pytest.raises(DuplicateKey):
        await storage.notifications.insert(note("n1", "u1", 2))
    stored = await storage.notifications.list_for_user("u1", 10, False, audience=STUDENT, now=LATER)
    assert [(n.id, n.created_at) for n in stored] == [("n1", NOW + timedelta(minutes=1))]


async def test_notifications_older_than_the_retention_are_not_read(storage: Storage) -> None:
    """MongoDB's TTL index deletes them (within about a minute); until then, and in the
    memory store, reads leave them out. A period is counted from ``createdAt``."""
    minutes = RETENTION.total_seconds() / 60
    await storage.notifications.insert(note("old", "u1", -minutes - 1))
    await storage.notifications.insert(note("edge", "u1", -minutes + 1))
    await storage.notifications.insert(note("new", "u1", 0))
    kept = await storage.notifications.list_for_user("u1", 10, False, audience=STUDENT, now=NOW)
    assert [n.id for n in kept] == ["new", "edge"]
    later = NOW + timedelta(minutes=2)
    kept = await storage.notifications.list_for_user("u1", 10, False, audience=STUDENT, now=later)
    assert [n.id for n in kept] == ["new"]
