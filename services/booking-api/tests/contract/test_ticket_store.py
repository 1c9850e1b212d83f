"""The TicketStore port, bound to the memory store and to a real MongoDB."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from booking_api.adapters.mongo import MongoStorage
from booking_api.adapters.tickets import (
    STREAM_TICKETS,
    MemoryTicketStore,
    TicketStoreFull,
    ticket_store_for,
)
from booking_api.ports import Storage, StreamTicket, TicketStore

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


@pytest.fixture
async def tickets(storage: Storage) -> TicketStore:
    """The ticket store beside each storage backend of the contract suite (conftest.py)."""
    store = ticket_store_for(storage)
    await store.start()
    await store.start()  # idempotent
    if isinstance(storage, MongoStorage):
        indexes = await storage.database[STREAM_TICKETS].index_information()
        assert any(i.get("expireAfterSeconds") == 0 for i in indexes.values())
    return store


def ticket(ticket_id: str = "t1", expires: datetime = NOW + timedelta(seconds=30)) -> StreamTicket:
    return StreamTicket(
        id=ticket_id,
        sub="student-1",
        role="student",
        name="Alan",
        token_expires_at=NOW + timedelta(hours=1),
        expires_at=expires,
    )


async def test_a_ticket_is_redeemed_once(tickets: TicketStore) -> None:
    await tickets.issue(ticket(), NOW)
    redeemed = await tickets.redeem("t1", NOW)
    assert redeemed is not None
    assert (redeemed.sub, redeemed.role, redeemed.name) == ("student-1", "student", "Alan")
    assert redeemed.token_expires_at == NOW + timedelta(hours=1)
    assert await tickets.redeem("t1", NOW) is None


async def test_unknown_and_expired_tickets_are_refused(tickets: TicketStore) -> None:
    assert await tickets.redeem("nope", NOW) is None
    await tickets.issue(ticket("t2"), NOW)
    assert await tickets.redeem("t2", NOW + timedelta(seconds=30)) is None


async def test_of_concurrent_redemptions_exactly_one_wins(tickets: TicketStore) -> None:
    await tickets.issue(ticket("t3"), NOW)
    results = await asyncio.gather(*(tickets.redeem("t3", NOW) for _ in range(10)))
    assert sum(r is not None for r in results) == 1


async def test_memory_store_forgets_expired_tickets_and_is_bounded() -> None:
    store = MemoryTicketStore(max_tickets=2)
    await store.issue(ticket("a"), NOW)
    await store.issue(ticket("b"), NOW)
    later = NOW + timedelta(minutes=1)
    await store.issue(ticket("c", later + timedelta(seconds=30)), later)
    assert len(store) == 1
    await store.issue(ticket("d", later + timedelta(seconds=30)), later)
    with pytest.raises(TicketStoreFull):
        await store.issue(ticket("e", later + timedelta(seconds=30)), later)
