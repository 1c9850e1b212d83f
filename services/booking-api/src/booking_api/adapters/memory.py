"""The in-memory store: MongoDB's semantics where the booking service relies on them.

- Conditional updates are compare-and-set: the match and the write happen with no await
  in between, so exactly one of many concurrent writers wins.
- Every operation first yields to the event loop once, like a network round trip, so
  check-then-act mistakes in the service show up under concurrency in tests too.
- Unique indexes (including partial ones) raise ``DuplicateKey``.
- Documents are copied in and out (callers never share state with the store) and
  datetimes are stored as BSON keeps them: UTC, whole milliseconds.
- Every write to a domain collection is recorded in a ``MemoryChangeLog`` as a change
  stream event (``fullDocument`` = the stored document), which the change-publisher reads
  through ``/internal/changes``. Idempotency records are bookkeeping, not domain data, so
  they are not recorded (the publisher's Mongo change streams do not watch them either).
- Notifications older than the retention are deleted, as MongoDB's TTL index does: swept
  at every insert and read of notifications (so reads never show one, and a process that
  only writes stays bounded), each deletion recorded as a ``delete`` change without
  documents, as a TTL deletion shows in a change stream.
"""

import asyncio
import bisect
import heapq
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from booking_api.domain.repair import SlotCursor
from booking_api.ports import (
    DEFAULT_NOTIFICATION_RETENTION,
    DuplicateKey,
    IdempotencyQuotaExceeded,
    IdempotencyRecord,
    UnreadableSlot,
    read_slot,
)
from slotstream_contracts.changelog import MemoryChangeLog
from slotstream_contracts.changes import ClusterTime, OperationType, UpdateDescription
from slotstream_contracts.documents import (
    BOOKINGS,
    INSTRUCTORS,
    NOTIFICATIONS,
    SLOTS,
    BookingDocument,
    InstructorDocument,
    NotificationDocument,
    SlotDocument,
)
from slotstream_contracts.entities import Audience, BookingStatus, SlotStatus

Document = dict[str, Any]
#: A unique index: the key of a document, or None when the (partial) index skips it.
IndexKey = Callable[[Document], tuple[Any, ...] | None]

IDEMPOTENCY = "idempotency"
DOMAIN_COLLECTIONS = (INSTRUCTORS, SLOTS, BOOKINGS, NOTIFICATIONS)


def bson_value(value: Any) -> Any:
    """A deep copy of ``value`` as a BSON round trip returns it (tz-aware client)."""
    kind = type(value)
    if kind is dict:
        return {k: _bson_item(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_bson_item(v) for v in value]
    return _bson_item(value)


def _bson_item(value: Any) -> Any:
    if isinstance(value, datetime):
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return utc.replace(microsecond=utc.microsecond // 1000 * 1000)
    if isinstance(value, dict | list | tuple):
        return bson_value(value)
    return value


def _copy(doc: Document) -> Document:
    """A copy of a stored document. Stored values are already BSON-normalised and scalars
    are immutable, so only nested containers need a deep copy (the hot path is flat)."""
    return {k: bson_value(v) if type(v) in _CONTAINERS else v for k, v in doc.items()}


_CONTAINERS = (dict, list)


class MemoryCollection:
    """One collection: documents by ``_id``, unique indexes, change recording."""

    def __init__(
        self,
        name: str,
        changelog: MemoryChangeLog | None,
        unique: dict[str, IndexKey] | None = None,
    ) -> None:
        self.name = name
        self._changelog = changelog
        self._docs: dict[str, Document] = {}
        self._unique = unique or {}
        self._index: dict[str, dict[tuple[Any, ...], str]] = {n: {} for n in self._unique}

    def __len__(self) -> int:
        return len(self._docs)

    def get(self, doc_id: str) -> Document | None:
        doc = self._docs.get(doc_id)
        return None if doc is None else _copy(doc)

    def peek(self, doc_id: str) -> Document | None:
        """The stored document itself, read-only. Validating it into a (frozen) model copies
        it, as every stored document is flat with immutable values."""
        return self._docs.get(doc_id)

    def all(self) -> list[Document]:
        return [_copy(d) for d in self._docs.values()]

    def values(self) -> list[Document]:
        """The stored documents themselves, read-only (no copies: for scans)."""
        return list(self._docs.values())

    def insert(self, doc: Document) -> Document:
        """Store a copy of ``doc``; return the stored document (read-only for callers)."""
        stored: Document = bson_value(doc)
        doc_id = stored["_id"]
        if doc_id in self._docs:
            raise DuplicateKey(f"{self.name}: duplicate _id {doc_id!r}")
        keys = self._keys(stored)
        self._check_unique(keys, doc_id)
        for index, key in keys.items():
            if key is not None:
                self._index[index][key] = doc_id
        self._docs[doc_id] = stored
        if self._changelog is not None:
            self._changelog.record(
                OperationType.INSERT, self.name, doc_id, full_document=_copy(stored)
            )
        return stored

    def update(
        self,
        doc_id: str,
        match: Callable[[Document], bool],
        set_fields: Document,
        unset: tuple[str, ...] = (),
        bump_version: bool = True,
    ) -> Document | None:
        """Compare-and-set: apply the change only if ``match`` holds for the stored doc.
        Returns the stored document after the change (read-only for callers)."""
        current = self._docs.get(doc_id)
        if current is None or not match(current):
            return None
        updated = dict(current)
        changes = bson_value(set_fields)
        if bump_version:
            changes["version"] = current["version"] + 1
        updated.update(changes)
        removed = [f for f in unset if f in updated]
        for field in removed:
            del updated[field]
        old_keys, new_keys = self._keys(current), self._keys(updated)
        self._check_unique(new_keys, doc_id)
        for index, key in old_keys.items():
            if key is not None:
                del self._index[index][key]
        for index, key in new_keys.items():
            if key is not None:
                self._index[index][key] = doc_id
        self._docs[doc_id] = updated
        if self._changelog is not None:
            self._changelog.record(
                OperationType.UPDATE,
                self.name,
                doc_id,
                full_document=_copy(updated),
                update=UpdateDescription(updated_fields=changes, removed_fields=removed),
            )
        return updated

    def delete(self, doc_id: str) -> bool:
        current = self._docs.pop(doc_id, None)
        if current is None:
            return False
        for index, key in self._keys(current).items():
            if key is not None:
                del self._index[index][key]
        if self._changelog is not None:
            self._changelog.record(OperationType.DELETE, self.name, doc_id)
        return True

    def _keys(self, doc: Document) -> dict[str, tuple[Any, ...] | None]:
        return {name: key(doc) for name, key in self._unique.items()}

    def _check_unique(self, keys: dict[str, tuple[Any, ...] | None], doc_id: str) -> None:
        for index, key in keys.items():
            if key is None:
                continue
            holder = self._index[index].get(key)
            if holder is not None and holder != doc_id:
                raise DuplicateKey(f"{self.name}: duplicate key {key!r} in index {index}")


def _live_slot_key(doc: Document) -> tuple[Any, ...] | None:
    if doc["status"] == SlotStatus.DELETED:
        return None
    return (doc["instructorId"], doc["start"])


def _active_booking_key(doc: Document) -> tuple[Any, ...] | None:
    return (doc["slotId"],) if doc["status"] == BookingStatus.ACTIVE else None


class MemoryInstructors:
    def __init__(self, collection: MemoryCollection) -> None:
        self._c = collection

    async def insert(self, instructor: InstructorDocument) -> None:
        await asyncio.sleep(0)
        self._c.insert(instructor.to_document())

    async def get(self, instructor_id: str) -> InstructorDocument | None:
        await asyncio.sleep(0)
        doc = self._c.peek(instructor_id)
        return None if doc is None else InstructorDocument.model_validate(doc)

    async def list(self, limit: int) -> list[InstructorDocument]:
        await asyncio.sleep(0)
        docs = sorted(self._c.all(), key=lambda d: (d["name"], d["_id"]))[:limit]
        return [InstructorDocument.model_validate(d) for d in docs]


class MemorySlots:
    def __init__(self, collection: MemoryCollection) -> None:
        self._c = collection
        # Per instructor: (start, id) sorted by start, tombstones included (a move
        # replaces the entry). ``_longest`` bounds how far back an overlap starts.
        self._by_instructor: dict[str, list[tuple[datetime, str]]] = {}
        self._longest = timedelta(0)

    async def insert(self, slot: SlotDocument) -> None:
        await asyncio.sleep(0)
        self._store(slot)

    async def insert_unless_overlapping(self, slot: SlotDocument) -> list[SlotDocument]:
        await asyncio.sleep(0)
        # No await between the check and the insert: atomic on the event loop.
        found = self._intersecting(slot.instructor_id, slot.start, slot.end)
        if not found:
            self._store(slot)
        return found

    async def insert_many_unless_overlapping(
        self, instructor_id: str, slots: Sequence[SlotDocument]
    ) -> list[SlotDocument]:
        await asyncio.sleep(0)
        found: dict[str, SlotDocument] = {}
        for slot in slots:
            found.update((s.id, s) for s in self._intersecting(instructor_id, slot.start, slot.end))
        if found:
            return sorted(found.values(), key=lambda s: (s.start, s.id))
        for slot in slots:  # the same unique checks as one by one, before anything is stored
            if self._c.peek(slot.id) is not None:
                raise DuplicateKey(f"{self._c.name}: duplicate _id {slot.id!r}")
        for slot in slots:
            self._store(slot)
        return []

    async def move_unless_overlapping(
        self, slot_id: str, version: int, start: datetime, end: datetime, now: datetime
    ) -> SlotDocument | list[SlotDocument] | None:
        await asyncio.sleep(0)
        current = self._c.peek(slot_id)
        if current is None:
            return None
        found = [
            s for s in self._intersecting(current["instructorId"], start, end) if s.id != slot_id
        ]
        if found:
            return found
        doc = self._c.update(
            slot_id,
            lambda d: d["status"] == SlotStatus.AVAILABLE and d["version"] == version,
            {"start": start, "end": end, "updatedAt": now},
        )
        if doc is None:
            return None
        entries = self._by_instructor[doc["instructorId"]]
        entries.remove((current["start"], slot_id))
        bisect.insort(entries, (doc["start"], slot_id))
        self._longest = max(self._longest, doc["end"] - doc["start"])
        return SlotDocument.model_validate(doc)

    def _store(self, slot: SlotDocument) -> None:
        stored = self._c.insert(slot.to_document())
        bisect.insort(
            self._by_instructor.setdefault(slot.instructor_id, []), (stored["start"], slot.id)
        )
        self._longest = max(self._longest, stored["end"] - stored["start"])

    async def get(self, slot_id: str) -> SlotDocument | None:
        await asyncio.sleep(0)
        doc = self._c.peek(slot_id)
        return None if doc is None else SlotDocument.model_validate(doc)

    async def list_for_instructor(
        self, instructor_id: str, start: datetime, end: datetime
    ) -> list[SlotDocument]:
        await asyncio.sleep(0)
        return self._intersecting(instructor_id, start, end)

    def _intersecting(
        self, instructor_id: str, start: datetime, end: datetime
    ) -> list[SlotDocument]:
        entries = self._by_instructor.get(instructor_id, [])
        lo = bisect.bisect_right(entries, (start - self._longest, "\uffff"))
        hi = bisect.bisect_left(entries, (end, ""))
        found = []
        for _, slot_id in entries[max(0, lo - 1) : hi]:
            doc = self._c.peek(slot_id)
            if (
                doc is not None
                and doc["status"] != SlotStatus.DELETED
                and doc["start"] < end
                and start < doc["end"]
            ):
                found.append(SlotDocument.model_validate(doc))
        return found

    async def book(
        self, slot_id: str, booking_id: str, student_id: str, now: datetime
    ) -> SlotDocument | None:
        await asyncio.sleep(0)
        doc = self._c.update(
            slot_id,
            lambda d: d["status"] == SlotStatus.AVAILABLE,
            {
                "status": SlotStatus.BOOKED.value,
                "bookingId": booking_id,
                "studentId": student_id,
                "updatedAt": now,
            },
        )
        return None if doc is None else SlotDocument.model_validate(doc)

    async def reclaim(self, slot_id: str, booking_id: str, now: datetime) -> SlotDocument | None:
        await asyncio.sleep(0)
        doc = self._c.update(
            slot_id,
            lambda d: d["status"] == SlotStatus.BOOKED and d.get("bookingId") == booking_id,
            {"updatedAt": now},
        )
        return None if doc is None else SlotDocument.model_validate(doc)

    async def release(
        self, slot_id: str, booking_id: str, now: datetime, version: int | None = None
    ) -> SlotDocument | None:
        await asyncio.sleep(0)
        doc = self._c.update(
            slot_id,
            lambda d: (
                d["status"] == SlotStatus.BOOKED
                and d.get("bookingId") == booking_id
                and (version is None or d["version"] == version)
            ),
            {"status": SlotStatus.AVAILABLE.value, "updatedAt": now},
            unset=("bookingId", "studentId"),
        )
        return None if doc is None else SlotDocument.model_validate(doc)

    async def list_booked_after(
        self, after: SlotCursor, updated_before: datetime, limit: int
    ) -> list[SlotDocument | UnreadableSlot]:
        """A scan of every slot (the memory store keeps no index by start): enough for the
        demo sizes it serves; MongoDB walks its ``booked_start`` index instead."""
        await asyncio.sleep(0)
        after_key = (bson_value(after.start), after.slot_id)
        before = bson_value(updated_before)
        found = sorted(
            (
                d
                for d in self._c.values()
                if d["status"] == SlotStatus.BOOKED
                and d["updatedAt"] < before
                and (d["start"], d["_id"]) > after_key
            ),
            key=lambda d: (d["start"], d["_id"]),
        )
        return [read_slot(d) for d in found[:limit]]

    async def mark_deleted(self, slot_id: str, now: datetime) -> SlotDocument | None:
        await asyncio.sleep(0)
        doc = self._c.update(
            slot_id,
            lambda d: d["status"] == SlotStatus.AVAILABLE,
            {"status": SlotStatus.DELETED.value, "updatedAt": now},
        )
        return None if doc is None else SlotDocument.model_validate(doc)


class MemoryBookings:
    def __init__(self, collection: MemoryCollection) -> None:
        self._c = collection
        self._by_user: dict[str, list[str]] = {}

    async def insert(self, booking: BookingDocument) -> None:
        """Idempotent by booking id: the same booking again (a retry after a lost reply)
        is a success; another document under its id, or a second active booking of the
        slot, is ``DuplicateKey``."""
        await asyncio.sleep(0)
        document = booking.to_document()
        stored = self._c.peek(booking.id)
        if stored is not None and stored == bson_value(document):
            return
        self._c.insert(document)
        self._by_user.setdefault(booking.student_id, []).append(booking.id)
        if booking.instructor_id != booking.student_id:
            self._by_user.setdefault(booking.instructor_id, []).append(booking.id)

    async def get(self, booking_id: str) -> BookingDocument | None:
        await asyncio.sleep(0)
        doc = self._c.peek(booking_id)
        return None if doc is None else BookingDocument.model_validate(doc)

    async def cancel(
        self, booking_id: str, now: datetime, reason: str | None = None
    ) -> BookingDocument | None:
        await asyncio.sleep(0)
        changes: Document = {"status": BookingStatus.CANCELLED.value, "cancelledAt": now}
        if reason is not None:
            changes["cancelReason"] = reason
        doc = self._c.update(booking_id, lambda d: d["status"] == BookingStatus.ACTIVE, changes)
        return None if doc is None else BookingDocument.model_validate(doc)

    async def list_for_student(self, student_id: str, limit: int) -> list[BookingDocument]:
        return await self._newest(student_id, "studentId", limit)

    async def list_for_instructor(self, instructor_id: str, limit: int) -> list[BookingDocument]:
        return await self._newest(instructor_id, "instructorId", limit)

    async def count_active_for_student(self, student_id: str, limit: int, now: datetime) -> int:
        await asyncio.sleep(0)
        active = 0
        for doc in self._of(student_id, "studentId"):
            if doc["status"] == BookingStatus.ACTIVE and doc["slotEnd"] > now:
                active += 1
                if active >= limit:
                    break
        return active

    def _of(self, user_id: str, role_field: str) -> list[dict[str, Any]]:
        """The user's bookings in one role (the index holds both roles of an id)."""
        docs = (self._c.peek(i) for i in self._by_user.get(user_id, []))
        return [d for d in docs if d is not None and d[role_field] == user_id]

    async def _newest(self, user_id: str, role_field: str, limit: int) -> list[BookingDocument]:
        await asyncio.sleep(0)
        newest = sorted(
            self._of(user_id, role_field),
            key=lambda d: (d["createdAt"], d["_id"]),
            reverse=True,
        )
        return [BookingDocument.model_validate(d) for d in newest[:limit]]


class MemoryNotifications:
    """Notifications by id, each user's ids (the ``userId`` index), and the creation order
    (a heap), from which expired ones are swept."""

    def __init__(self, collection: MemoryCollection, retention: timedelta) -> None:
        self._c = collection
        self._retention = retention
        self._by_user: dict[str, dict[str, None]] = {}  # ordered sets of ids
        self._created: list[tuple[datetime, str]] = []  # a heap

    async def insert(self, notification: NotificationDocument) -> None:
        await asyncio.sleep(0)
        # Swept by the new notification's time: the service writes it with its clock's now.
        self._sweep(notification.created_at)
        stored = self._c.insert(notification.to_document())
        self._by_user.setdefault(notification.user_id, {})[notification.id] = None
        heapq.heappush(self._created, (stored["createdAt"], notification.id))

    async def list_for_user(
        self, user_id: str, limit: int, unread_only: bool, *, audience: Audience, now: datetime
    ) -> list[NotificationDocument]:
        await asyncio.sleep(0)
        self._sweep(now)
        docs = [self._c.peek(i) for i in self._by_user.get(user_id, {})]
        newest = sorted(
            (
                d
                for d in docs
                if d is not None and not (unread_only and d["read"]) and _for_audience(d, audience)
            ),
            key=lambda d: (d["createdAt"], d["_id"]),
            reverse=True,
        )
        return [NotificationDocument.model_validate(d) for d in newest[:limit]]

    async def mark_read(
        self, notification_id: str, user_id: str, *, audience: Audience
    ) -> NotificationDocument | None:
        await asyncio.sleep(0)

        def owned(d: dict[str, Any]) -> bool:
            return bool(d["userId"] == user_id and _for_audience(d, audience))

        doc = self._c.update(notification_id, lambda d: owned(d) and not d["read"], {"read": True})
        if doc is None:
            doc = self._c.get(notification_id)
            if doc is None or not owned(doc):
                return None
        return NotificationDocument.model_validate(doc)

    def _sweep(self, now: datetime) -> None:
        """Delete every notification created at or before ``now`` - retention (what MongoDB
        reads as expired: ``createdAt`` + ``expireAfterSeconds`` is past)."""
        cutoff = bson_value(now - self._retention)
        while self._created and self._created[0][0] <= cutoff:
            _, note_id = heapq.heappop(self._created)
            stored = self._c.peek(note_id)
            if stored is None:
                continue
            held = self._by_user[stored["userId"]]
            del held[note_id]
            if not held:
                del self._by_user[stored["userId"]]
            self._c.delete(note_id)


def _for_audience(document: dict[str, Any], audience: Audience) -> bool:
    """Documents from before ``audience`` existed are every role's."""
    return document.get("audience") in (audience, None)


class MemoryIdempotency:
    """Records by id, plus what MongoDB's indexes give: each user's records (the quota)
    and the expiry order, so expired records are swept as time passes (the TTL index's
    job) instead of piling up in the process for keys never used again."""

    def __init__(self, collection: MemoryCollection) -> None:
        self._c = collection
        self._by_user: dict[str, set[str]] = {}
        self._expiries: list[tuple[datetime, str]] = []  # a heap

    async def reserve(
        self,
        record: IdempotencyRecord,
        now: datetime,
        *,
        stale_before: datetime,
        max_per_user: int,
    ) -> IdempotencyRecord | None:
        await asyncio.sleep(0)
        self._sweep(now)
        existing = self._c.peek(record.id)
        if existing is not None:
            abandoned = existing["state"] == "pending" and existing["createdAt"] <= stale_before
            if not abandoned:
                return IdempotencyRecord.model_validate(existing)
            self._delete(record.id)
        held = self._by_user.get(record.user_id or "", set())
        if record.user_id is not None and len(held) >= max_per_user:
            oldest = min(d["expiresAt"] for i in held if (d := self._c.peek(i)) is not None)
            raise IdempotencyQuotaExceeded(_seconds_until(oldest, now))
        stored = self._c.insert(record.to_document())
        if record.user_id is not None:
            self._by_user.setdefault(record.user_id, set()).add(record.id)
        heapq.heappush(self._expiries, (stored["expiresAt"], record.id))
        return None

    async def complete(self, record: IdempotencyRecord, status_code: int, body: str) -> None:
        await asyncio.sleep(0)
        created_at = bson_value(record.created_at)
        self._c.update(
            record.id,
            lambda d: d["state"] == "pending" and d["createdAt"] == created_at,
            {"state": "complete", "statusCode": status_code, "body": body},
            bump_version=False,
        )

    async def release(self, record: IdempotencyRecord) -> None:
        await asyncio.sleep(0)
        stored = self._c.peek(record.id)
        if stored is not None and stored["createdAt"] == bson_value(record.created_at):
            self._delete(record.id)

    def _sweep(self, now: datetime) -> None:
        """Delete every record expired by ``now`` (heap entries of records already deleted
        or replaced are skipped)."""
        while self._expiries and self._expiries[0][0] <= now:
            expires_at, record_id = heapq.heappop(self._expiries)
            stored = self._c.peek(record_id)
            if stored is not None and stored["expiresAt"] == expires_at:
                self._delete(record_id)
        if len(self._expiries) > 2 * len(self._c) + 64:
            # Released records leave entries behind until they would have expired.
            self._expiries = [(d["expiresAt"], d["_id"]) for d in self._c.all()]
            heapq.heapify(self._expiries)

    def _delete(self, record_id: str) -> None:
        stored = self._c.peek(record_id)
        if stored is None:
            return
        user_id = stored.get("userId")
        if user_id is not None:
            held = self._by_user.get(user_id)
            if held is not None:
                held.discard(record_id)
                if not held:
                    del self._by_user[user_id]
        self._c.delete(record_id)


def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(1, math.ceil((moment - now).total_seconds()))


class MemoryStorage:
    """All repositories over one change log, like collections of one database."""

    def __init__(
        self,
        db: str = "slotstream",
        retain_changes: int = 200_000,
        *,
        notification_retention: timedelta = DEFAULT_NOTIFICATION_RETENTION,
    ) -> None:
        # updateLookup as Mongo does it: an update event carries the document as it is read.
        self.changelog = MemoryChangeLog(db, retain=retain_changes, lookup=self._current)
        self.collections = {
            INSTRUCTORS: MemoryCollection(INSTRUCTORS, self.changelog),
            SLOTS: MemoryCollection(
                SLOTS, self.changelog, unique={"instructorId_start_live": _live_slot_key}
            ),
            BOOKINGS: MemoryCollection(
                BOOKINGS, self.changelog, unique={"slotId_active": _active_booking_key}
            ),
            NOTIFICATIONS: MemoryCollection(NOTIFICATIONS, self.changelog),
            IDEMPOTENCY: MemoryCollection(IDEMPOTENCY, None),
        }
        self._instructors = MemoryInstructors(self.collections[INSTRUCTORS])
        self._slots = MemorySlots(self.collections[SLOTS])
        self._bookings = MemoryBookings(self.collections[BOOKINGS])
        self._notifications = MemoryNotifications(
            self.collections[NOTIFICATIONS], notification_retention
        )
        self._idempotency = MemoryIdempotency(self.collections[IDEMPOTENCY])

    def _current(self, collection: str, doc_id: str) -> Document | None:
        stored = self.collections[collection].peek(doc_id)
        return None if stored is None else _copy(stored)

    @property
    def instructors(self) -> MemoryInstructors:
        return self._instructors

    @property
    def slots(self) -> MemorySlots:
        return self._slots

    @property
    def bookings(self) -> MemoryBookings:
        return self._bookings

    @property
    def notifications(self) -> MemoryNotifications:
        return self._notifications

    @property
    def idempotency(self) -> MemoryIdempotency:
        return self._idempotency

    async def start(self) -> None:
        """Nothing to prepare: the unique indexes exist from construction."""

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        """Nothing to release; the data lives as long as the object."""

    def snapshot(self, collection: str) -> tuple[ClusterTime, list[Document]]:
        """The cluster time, then a copy of every document; no write can come between."""
        at = self.changelog.cluster_time
        return at, self.collections[collection].all()
