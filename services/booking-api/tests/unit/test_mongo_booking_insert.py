"""The Mongo adapter's idempotent booking insert, against a collection that loses replies.

The contract suite runs the same rule on real MongoDB when one is available; this fake
reproduces the failure a real server cannot be made to produce on demand: the insert is
applied and the reply is lost, so the caller's retry meets its own document."""

from typing import Any

import pytest
from pymongo.errors import AutoReconnect, DuplicateKeyError

from booking_api.adapters.mongo import MongoBookings
from booking_api.ports import DuplicateKey
from slotstream_contracts.documents import BookingDocument

from ..contract.test_booking_repository import booking

Document = dict[str, Any]


class ReplyLosingCollection:
    """``insert_one`` and ``find_one`` by ``_id`` plus the one-active-booking-per-slot
    index; ``lose_replies`` inserts that are applied and then fail."""

    def __init__(self) -> None:
        self.docs: dict[str, Document] = {}
        self.lose_replies = 0

    async def insert_one(self, document: Document) -> None:
        active_slots = {d["slotId"] for d in self.docs.values() if d["status"] == "active"}
        if document["_id"] in self.docs or (
            document["status"] == "active" and document["slotId"] in active_slots
        ):
            raise DuplicateKeyError("E11000 duplicate key error")
        self.docs[document["_id"]] = dict(document)
        if self.lose_replies:
            self.lose_replies -= 1
            raise AutoReconnect("connection closed before the reply")

    async def find_one(self, query: Document) -> Document | None:
        return self.docs.get(query["_id"])


async def test_a_retry_after_a_lost_reply_succeeds_once() -> None:
    collection = ReplyLosingCollection()
    bookings = MongoBookings(collection)  # type: ignore[arg-type]
    collection.lose_replies = 1
    with pytest.raises(AutoReconnect):
        await bookings.insert(booking("b1", "s1"))
    await bookings.insert(booking("b1", "s1"))  # the retry meets its own document
    assert list(collection.docs) == ["b1"]
    stored = await bookings.get("b1")
    assert stored == booking("b1", "s1")
    assert isinstance(stored, BookingDocument)


async def test_another_document_under_the_id_or_a_second_active_booking_is_refused() -> None:
    collection = ReplyLosingCollection()
    bookings = MongoBookings(collection)  # type: ignore[arg-type]
    await bookings.insert(booking("b1", "s1"))
    with pytest.raises(DuplicateKey):
        await bookings.insert(booking("b1", "s1", student_id="st2"))
    with pytest.raises(DuplicateKey):
        await bookings.insert(booking("b2", "s1", student_id="st2"))
