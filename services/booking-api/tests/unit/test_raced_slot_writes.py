"""A slot creation or move that another writer's slot overtakes after its overlap check:
the 409 names the slot in the way (``slotId``, ``slotStart``, ``slotEnd``) as an overlap's
does, so a client words it in its viewer's time zone."""

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import httpx
import pytest
from pymongo.errors import AutoReconnect

from booking_api.adapters.memory import MemoryStorage
from booking_api.ids import new_id
from booking_api.ports import Storage
from slotstream_contracts.documents import SlotDocument
from slotstream_contracts.entities import SlotStatus

AuthHeaders = Callable[..., dict[str, str]]
Future = Callable[..., str]


class RivalStorage(MemoryStorage):
    """The memory store where, once armed, another writer's slot of the same instructor
    lands at the start a creation or a move asks for, after its overlap check: a creation
    then meets the unique index on (instructor, start) of live slots (``DuplicateKey``); a
    move is answered ``None`` (nothing matched, as when the slot changed meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.rival: SlotDocument | None = None
        repository = self.slots
        insert, move = repository.insert, repository.move_unless_overlapping

        async def land_rival(instructor_id: str, start: datetime) -> None:
            self.armed = False
            self.rival = SlotDocument(
                id=new_id(),
                instructor_id=instructor_id,
                start=start,
                end=start + timedelta(minutes=30),
                status=SlotStatus.AVAILABLE,
                version=1,
                created_at=start - timedelta(days=1),
                updated_at=start - timedelta(days=1),
            )
            await insert(self.rival)

        async def insert_unless_overlapping(slot: SlotDocument) -> list[SlotDocument]:
            if self.armed:
                await land_rival(slot.instructor_id, slot.start)
            await insert(slot)  # past the overlap check: only the unique index is left
            return []

        async def insert_many_unless_overlapping(
            instructor_id: str, slots: Sequence[SlotDocument]
        ) -> list[SlotDocument]:
            if self.armed:  # the first of the batch, so nothing of it is stored (all or nothing)
                await land_rival(instructor_id, slots[0].start)
            for slot in slots:
                await insert(slot)
            return []

        async def move_unless_overlapping(
            slot_id: str, version: int, start: datetime, end: datetime, now: datetime
        ) -> SlotDocument | list[SlotDocument] | None:
            if self.armed:
                current = await repository.get(slot_id)
                assert current is not None
                await land_rival(current.instructor_id, start)
                return None
            return await move(slot_id, version, start, end, now)

        repository.insert_unless_overlapping = insert_unless_overlapping  # type: ignore[method-assign]
        repository.insert_many_unless_overlapping = insert_many_unless_overlapping  # type: ignore[method-assign]
        repository.move_unless_overlapping = move_unless_overlapping  # type: ignore[method-assign]


@pytest.fixture
def rival_storage() -> RivalStorage:
    return RivalStorage()


@pytest.fixture
def storage(rival_storage: RivalStorage) -> Storage:
    return rival_storage


def assert_names_the_rival(response: httpx.Response, rival: SlotDocument | None) -> None:
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["type"] == "urn:slotstream:problem:conflict"
    assert rival is not None
    named = (datetime.fromisoformat(body["slotStart"]), datetime.fromisoformat(body["slotEnd"]))
    assert (body["slotId"], *named) == (rival.id, rival.start, rival.end)


@pytest.mark.parametrize("batch", [False, True], ids=["one", "batch"])
async def test_a_slot_whose_start_another_took_first_names_that_slot(
    client: httpx.AsyncClient,
    auth: AuthHeaders,
    future: Future,
    rival_storage: RivalStorage,
    batch: bool,
) -> None:
    """On main this 409 (the unique index's ``DuplicateKey``) said only "already has a slot
    starting …" in UTC: ``KeyError: 'slotStart'``."""
    instructor = auth("i1", "instructor")
    await client.post("/api/instructors", json={"name": "Ada"}, headers=instructor)
    rival_storage.armed = True
    window = {"start": future(days=2), "end": future(days=2, hours=1)}
    if batch:
        week = [window, {"start": future(days=3), "end": future(days=3, hours=1)}]
        added = await client.post(
            "/api/instructors/i1/slots:batch", json={"slots": week}, headers=instructor
        )
    else:
        added = await client.post("/api/instructors/i1/slots", json=window, headers=instructor)
    assert_names_the_rival(added, rival_storage.rival)
    assert "already has a slot starting" in added.json()["detail"]


async def test_a_move_another_slot_overtook_names_that_slot(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, rival_storage: RivalStorage
) -> None:
    """On main this 409 said only "changed while moving it; reload and retry", without the
    slot in the way: ``KeyError: 'slotStart'``."""
    instructor = auth("i1", "instructor")
    await client.post("/api/instructors", json={"name": "Ada"}, headers=instructor)
    window = {"start": future(days=2), "end": future(days=2, hours=1)}
    slot = (await client.post("/api/instructors/i1/slots", json=window, headers=instructor)).json()
    rival_storage.armed = True
    moved = await client.patch(
        f"/api/slots/{slot['id']}",
        json={"start": future(days=3)},
        headers=instructor | {"If-Match": '"1"'},
    )
    assert_names_the_rival(moved, rival_storage.rival)
    assert "changed while moving it" in moved.json()["detail"]


async def test_a_failed_read_of_the_slot_in_the_way_still_answers_the_409(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, rival_storage: RivalStorage
) -> None:
    """The read that names the slot in the way is only for the 409's members: when the
    store fails it, the write was still refused for a known reason, so the answer is the
    409 without them, not a 503 the client would retry."""
    instructor = auth("i1", "instructor")
    await client.post("/api/instructors", json={"name": "Ada"}, headers=instructor)

    async def unavailable(*_args: object) -> list[SlotDocument]:
        raise AutoReconnect("connection lost while listing slots")

    rival_storage.slots.list_for_instructor = unavailable  # type: ignore[method-assign,assignment]
    rival_storage.armed = True
    window = {"start": future(days=2), "end": future(days=2, hours=1)}
    added = await client.post("/api/instructors/i1/slots", json=window, headers=instructor)
    assert added.status_code == 409, added.text
    assert "already has a slot starting" in added.json()["detail"]
    assert "slotStart" not in added.json()
