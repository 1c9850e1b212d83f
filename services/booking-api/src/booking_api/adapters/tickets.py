"""Stream ticket stores: in memory, and the MongoDB collection ``streamTickets``."""

import asyncio
from collections import OrderedDict
from datetime import datetime
from typing import Any, Final

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection

from booking_api.adapters.mongo import index_builds
from booking_api.ports import Storage, StreamTicket, TicketStore

STREAM_TICKETS: Final = "streamTickets"
#: The memory store refuses to hold more than this many unredeemed tickets at once.
MAX_MEMORY_TICKETS: Final = 100_000


class TicketStoreFull(RuntimeError):
    """Too many unredeemed tickets (memory backend): the caller answers 503."""


class MemoryTicketStore:
    """Tickets in a dict, oldest first; expired ones are swept on every issue."""

    def __init__(self, max_tickets: int = MAX_MEMORY_TICKETS) -> None:
        self._tickets: OrderedDict[str, StreamTicket] = OrderedDict()
        self._max = max_tickets

    def __len__(self) -> int:
        return len(self._tickets)

    async def issue(self, ticket: StreamTicket, now: datetime) -> None:
        await asyncio.sleep(0)
        # Tickets expire about in issue order; one cut short by its token's expiry waits
        # behind older ones (redeem refuses it meanwhile).
        while self._tickets and next(iter(self._tickets.values())).expires_at <= now:
            self._tickets.popitem(last=False)
        if len(self._tickets) >= self._max:
            raise TicketStoreFull(f"{self._max} unredeemed stream tickets")
        self._tickets[ticket.id] = ticket

    async def redeem(self, ticket_id: str, now: datetime) -> StreamTicket | None:
        await asyncio.sleep(0)
        ticket = self._tickets.pop(ticket_id, None)  # no await between lookup and removal
        if ticket is None or ticket.expires_at <= now:
            return None
        return ticket

    async def start(self) -> None:
        return None


class MongoTicketStore:
    """``streamTickets``: a TTL index removes expired tickets; redemption is a
    ``find_one_and_delete`` whose filter also checks the expiry (the TTL monitor runs only
    about once a minute)."""

    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self._c = collection

    async def issue(self, ticket: StreamTicket, now: datetime) -> None:  # noqa: ARG002
        await self._c.insert_one(ticket.to_document())

    async def redeem(self, ticket_id: str, now: datetime) -> StreamTicket | None:
        doc = await self._c.find_one_and_delete({"_id": ticket_id, "expiresAt": {"$gt": now}})
        return None if doc is None else StreamTicket.model_validate(doc)

    async def start(self) -> None:
        with index_builds():
            await self._c.create_index([("expiresAt", ASCENDING)], expireAfterSeconds=0)


def ticket_store_for(storage: Storage) -> TicketStore:
    """Tickets live beside the data: in ``streamTickets`` of a Mongo store, else in memory."""
    from booking_api.adapters.mongo import MongoStorage

    if isinstance(storage, MongoStorage):
        return MongoTicketStore(storage.database[STREAM_TICKETS])
    return MemoryTicketStore()
