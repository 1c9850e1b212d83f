"""The MongoDB store (PyMongo's async API).

- Client: tz-aware (datetimes come back as UTC), majority write concern with journal,
  majority read concern, and timeouts on server selection, connect and every operation
  (``timeoutMS``), so a sick database turns into a quick 503, not a hung request.
- ``start()`` creates the indexes, without the per-operation timeout (an index build on
  a large collection takes longer; see ``index_builds``); ``create_index`` is a no-op
  when the same index exists, so every replica can run it at every start-up. The one
  index whose options follow a setting (the notifications' TTL index, the retention) is
  changed in place when the setting changed (``_keep_notifications``).
- State moves are ``find_one_and_update`` with the expected state in the filter: the
  compare-and-set the booking service relies on.
"""

import contextlib
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

import pymongo
import structlog
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument, _csot
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    BulkWriteError,
    DuplicateKeyError,
    InvalidURI,
    OperationFailure,
    PyMongoError,
)
from pymongo.read_concern import ReadConcern
from pymongo.uri_parser import parse_userinfo, split_options
from pymongo.write_concern import WriteConcern

from booking_api.domain.repair import SlotCursor
from booking_api.ports import (
    DEFAULT_NOTIFICATION_RETENTION,
    DuplicateKey,
    IdempotencyQuotaExceeded,
    IdempotencyRecord,
    UnreadableSlot,
    read_slot,
)
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
IDEMPOTENCY = "idempotency"
#: One document per instructor, written by every slot creation to serialise them.
SCHEDULE_GUARDS = "scheduleGuards"
_LIVE = {"status": {"$in": [SlotStatus.AVAILABLE.value, SlotStatus.BOOKED.value]}}
_AFTER = ReturnDocument.AFTER
_T = TypeVar("_T")
#: The notifications' TTL index: MongoDB deletes a notification ``expireAfterSeconds`` after
#: its ``createdAt``.
NOTIFICATION_TTL: Final = "createdAt_ttl"
#: MongoDB's error codes: an index of that name exists with other options; not allowed;
#: no such index (another replica dropped it first).
_INDEX_OPTIONS_CONFLICT: Final = 85
_UNAUTHORIZED: Final = 13
_INDEX_NOT_FOUND: Final = 27
#: The key of the notifications' TTL index.
_CREATED_AT: Final = {"createdAt": ASCENDING}

log = structlog.get_logger("booking_api.mongo")


class MongoInstructors:
    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self._c = collection

    async def insert(self, instructor: InstructorDocument) -> None:
        try:
            await self._c.insert_one(instructor.to_document())
        except DuplicateKeyError as exc:
            raise DuplicateKey(str(exc)) from None

    async def get(self, instructor_id: str) -> InstructorDocument | None:
        doc = await self._c.find_one({"_id": instructor_id})
        return None if doc is None else InstructorDocument.model_validate(doc)

    async def list(self, limit: int) -> list[InstructorDocument]:
        cursor = self._c.find({}).sort([("name", ASCENDING), ("_id", ASCENDING)]).limit(limit)
        return [InstructorDocument.model_validate(d) async for d in cursor]


class MongoSlots:
    def __init__(
        self,
        client: AsyncMongoClient[Document],
        collection: AsyncCollection[Document],
        guards: AsyncCollection[Document],
    ) -> None:
        self._client = client
        self._c = collection
        self._guards = guards

    async def insert(self, slot: SlotDocument) -> None:
        try:
            await self._c.insert_one(slot.to_document())
        except DuplicateKeyError as exc:
            raise DuplicateKey(str(exc)) from None

    async def get(self, slot_id: str) -> SlotDocument | None:
        doc = await self._c.find_one({"_id": slot_id})
        return None if doc is None else SlotDocument.model_validate(doc)

    async def insert_unless_overlapping(self, slot: SlotDocument) -> list[SlotDocument]:
        """One transaction: bump the instructor's guard document, look for overlaps,
        insert. Two concurrent creations for one instructor both write the guard, so one
        of them hits a write conflict and ``with_transaction`` runs it again, when the
        other's slot is visible to its overlap check."""

        async def attempt(session: AsyncClientSession) -> list[SlotDocument]:
            await self._bump_guard(slot.instructor_id, session)
            found = await self.list_for_instructor(
                slot.instructor_id, slot.start, slot.end, session=session
            )
            if not found:
                await self._c.insert_one(slot.to_document(), session=session)
            return found

        return await self._in_transaction(attempt)

    async def insert_many_unless_overlapping(
        self, instructor_id: str, slots: Sequence[SlotDocument]
    ) -> list[SlotDocument]:
        """As ``insert_unless_overlapping``, for many slots in one transaction: one read
        over the span of the batch finds every live slot that intersects one of them."""
        if not slots:
            return []
        span_start = min(s.start for s in slots)
        span_end = max(s.end for s in slots)

        async def attempt(session: AsyncClientSession) -> list[SlotDocument]:
            await self._bump_guard(instructor_id, session)
            nearby = await self.list_for_instructor(instructor_id, span_start, span_end, session)
            found = [e for e in nearby if any(e.start < s.end and s.start < e.end for s in slots)]
            if not found:
                await self._c.insert_many(
                    [s.to_document() for s in slots], ordered=True, session=session
                )
            return found

        return await self._in_transaction(attempt)

    async def move_unless_overlapping(
        self, slot_id: str, version: int, start: datetime, end: datetime, now: datetime
    ) -> SlotDocument | list[SlotDocument] | None:
        """One transaction, serialised with creations by the same guard document."""
        current = await self.get(slot_id)
        if current is None:
            return None
        instructor_id = current.instructor_id

        async def attempt(session: AsyncClientSession) -> SlotDocument | list[SlotDocument] | None:
            await self._bump_guard(instructor_id, session)
            nearby = await self.list_for_instructor(instructor_id, start, end, session)
            found = [s for s in nearby if s.id != slot_id]
            if found:
                return found
            doc = await self._c.find_one_and_update(
                {"_id": slot_id, "status": SlotStatus.AVAILABLE.value, "version": version},
                {"$set": {"start": start, "end": end, "updatedAt": now}, "$inc": {"version": 1}},
                return_document=_AFTER,
                session=session,
            )
            return None if doc is None else SlotDocument.model_validate(doc)

        return await self._in_transaction(attempt)

    async def _bump_guard(self, instructor_id: str, session: AsyncClientSession) -> None:
        await self._guards.update_one(
            {"_id": instructor_id}, {"$inc": {"slotWrites": 1}}, upsert=True, session=session
        )

    async def _in_transaction(self, attempt: Callable[[AsyncClientSession], Awaitable[_T]]) -> _T:
        async with self._client.start_session() as session:
            try:
                return await session.with_transaction(attempt)
            except BulkWriteError as exc:
                raise DuplicateKey(str(exc)) from None
            except DuplicateKeyError as exc:
                raise DuplicateKey(str(exc)) from None

    async def list_for_instructor(
        self,
        instructor_id: str,
        start: datetime,
        end: datetime,
        session: AsyncClientSession | None = None,
    ) -> list[SlotDocument]:
        query = {
            "instructorId": instructor_id,
            "start": {"$lt": end},
            "end": {"$gt": start},
            **_LIVE,
        }
        cursor = self._c.find(query, session=session).sort(
            [("start", ASCENDING), ("_id", ASCENDING)]
        )
        return [SlotDocument.model_validate(d) async for d in cursor]

    async def _move(
        self, query: Document, set_fields: Document, unset: tuple[str, ...] = ()
    ) -> SlotDocument | None:
        update: Document = {"$set": set_fields, "$inc": {"version": 1}}
        if unset:
            update["$unset"] = dict.fromkeys(unset, "")
        doc = await self._c.find_one_and_update(query, update, return_document=_AFTER)
        return None if doc is None else SlotDocument.model_validate(doc)

    async def book(
        self, slot_id: str, booking_id: str, student_id: str, now: datetime
    ) -> SlotDocument | None:
        return await self._move(
            {"_id": slot_id, "status": SlotStatus.AVAILABLE.value},
            {
                "status": SlotStatus.BOOKED.value,
                "bookingId": booking_id,
                "studentId": student_id,
                "updatedAt": now,
            },
        )

    async def reclaim(self, slot_id: str, booking_id: str, now: datetime) -> SlotDocument | None:
        return await self._move(
            {"_id": slot_id, "status": SlotStatus.BOOKED.value, "bookingId": booking_id},
            {"updatedAt": now},
        )

    async def release(
        self, slot_id: str, booking_id: str, now: datetime, version: int | None = None
    ) -> SlotDocument | None:
        query: Document = {
            "_id": slot_id,
            "status": SlotStatus.BOOKED.value,
            "bookingId": booking_id,
        }
        if version is not None:
            query["version"] = version
        return await self._move(
            query,
            {"status": SlotStatus.AVAILABLE.value, "updatedAt": now},
            unset=("bookingId", "studentId"),
        )

    async def list_booked_after(
        self, after: SlotCursor, updated_before: datetime, limit: int
    ) -> list[SlotDocument | UnreadableSlot]:
        """Walks the ``booked_start`` index from the cursor (keyset pagination): each run
        reads about ``limit`` documents however large the collection. The top-level
        ``start`` bound is implied by the ``$or`` but bounds the index range whatever the
        planner makes of the ``$or``: booked slots in the past stay booked, and a scan from
        the index's first key would read all of them at every run."""
        query = {
            "status": SlotStatus.BOOKED.value,
            "updatedAt": {"$lt": updated_before},
            "start": {"$gte": after.start},
            "$or": [
                {"start": {"$gt": after.start}},
                {"start": after.start, "_id": {"$gt": after.slot_id}},
            ],
        }
        cursor = self._c.find(query).sort([("start", ASCENDING), ("_id", ASCENDING)])
        return [read_slot(d) async for d in cursor.limit(limit)]

    async def mark_deleted(self, slot_id: str, now: datetime) -> SlotDocument | None:
        return await self._move(
            {"_id": slot_id, "status": SlotStatus.AVAILABLE.value},
            {"status": SlotStatus.DELETED.value, "updatedAt": now},
        )


class MongoBookings:
    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self._c = collection

    async def insert(self, booking: BookingDocument) -> None:
        """Idempotent by booking id: when the insert hits a unique index and the stored
        document under this id is this booking, an earlier attempt was applied and only its
        reply was lost (or the driver's retry found it): success. Otherwise ``DuplicateKey``."""
        document = booking.to_document()
        try:
            await self._c.insert_one(document)
        except DuplicateKeyError as exc:
            stored = await self._c.find_one({"_id": booking.id})
            if stored is not None and BookingDocument.model_validate(stored) == booking:
                return
            raise DuplicateKey(str(exc)) from None

    async def get(self, booking_id: str) -> BookingDocument | None:
        doc = await self._c.find_one({"_id": booking_id})
        return None if doc is None else BookingDocument.model_validate(doc)

    async def cancel(
        self, booking_id: str, now: datetime, reason: str | None = None
    ) -> BookingDocument | None:
        changes: Document = {"status": BookingStatus.CANCELLED.value, "cancelledAt": now}
        if reason is not None:
            changes["cancelReason"] = reason
        doc = await self._c.find_one_and_update(
            {"_id": booking_id, "status": BookingStatus.ACTIVE.value},
            {"$set": changes, "$inc": {"version": 1}},
            return_document=_AFTER,
        )
        return None if doc is None else BookingDocument.model_validate(doc)

    async def list_for_student(self, student_id: str, limit: int) -> list[BookingDocument]:
        return await self._newest({"studentId": student_id}, limit)

    async def list_for_instructor(self, instructor_id: str, limit: int) -> list[BookingDocument]:
        return await self._newest({"instructorId": instructor_id}, limit)

    async def count_active_for_student(self, student_id: str, limit: int, now: datetime) -> int:
        query = {
            "studentId": student_id,
            "status": BookingStatus.ACTIVE.value,
            "slotEnd": {"$gt": now},
        }
        return await self._c.count_documents(query, limit=limit)

    async def _newest(self, query: Document, limit: int) -> list[BookingDocument]:
        cursor = self._c.find(query).sort([("createdAt", DESCENDING), ("_id", DESCENDING)])
        return [BookingDocument.model_validate(d) async for d in cursor.limit(limit)]


class MongoNotifications:
    def __init__(self, collection: AsyncCollection[Document], retention: timedelta) -> None:
        self._c = collection
        self._retention = retention

    async def insert(self, notification: NotificationDocument) -> None:
        try:
            await self._c.insert_one(notification.to_document())
        except DuplicateKeyError as exc:
            raise DuplicateKey(str(exc)) from None

    async def list_for_user(
        self, user_id: str, limit: int, unread_only: bool, *, audience: Audience, now: datetime
    ) -> list[NotificationDocument]:
        # The TTL monitor deletes expired notifications about once a minute (later under
        # load): until then they are left out here, so the period holds to the second.
        query: Document = {
            "userId": user_id,
            "audience": _audience(audience),
            "createdAt": {"$gt": now - self._retention},
        }
        if unread_only:
            query["read"] = False
        cursor = self._c.find(query).sort([("createdAt", DESCENDING), ("_id", DESCENDING)])
        return [NotificationDocument.model_validate(d) async for d in cursor.limit(limit)]

    async def mark_read(
        self, notification_id: str, user_id: str, *, audience: Audience
    ) -> NotificationDocument | None:
        owned = {"_id": notification_id, "userId": user_id, "audience": _audience(audience)}
        doc = await self._c.find_one_and_update(
            {**owned, "read": False},
            {"$set": {"read": True}, "$inc": {"version": 1}},
            return_document=_AFTER,
        )
        if doc is None:
            doc = await self._c.find_one(owned)
        return None if doc is None else NotificationDocument.model_validate(doc)


def _audience(audience: Audience) -> Document:
    """Matches ``audience`` and documents from before it existed (``null`` matches a
    missing field)."""
    return {"$in": [audience.value, None]}


class MongoIdempotency:
    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self._c = collection

    async def reserve(
        self,
        record: IdempotencyRecord,
        now: datetime,
        *,
        stale_before: datetime,
        max_per_user: int,
    ) -> IdempotencyRecord | None:
        # The TTL monitor deletes expired records about once a minute; until then an
        # expired record is replaced here, conditionally, so only one caller wins. So is a
        # pending record older than the request timeout: its request died with its process.
        await self._c.delete_one(
            {
                "_id": record.id,
                "$or": [
                    {"expiresAt": {"$lte": now}},
                    {"state": "pending", "createdAt": {"$lte": stale_before}},
                ],
            }
        )
        doc = await self._c.find_one({"_id": record.id})
        if doc is not None:
            return IdempotencyRecord.model_validate(doc)
        if record.user_id is not None:
            held = {"userId": record.user_id, "expiresAt": {"$gt": now}}
            if await self._c.count_documents(held, limit=max_per_user) >= max_per_user:
                oldest = await self._c.find_one(held, sort=[("expiresAt", ASCENDING)])
                expires = oldest["expiresAt"] if oldest is not None else now
                raise IdempotencyQuotaExceeded(max(1, math.ceil((expires - now).total_seconds())))
        try:
            await self._c.insert_one(record.to_document())
        except DuplicateKeyError:
            doc = await self._c.find_one({"_id": record.id})
            if doc is None:  # expired and removed in between: the caller may retry
                return IdempotencyRecord.model_validate(record.to_document() | {"state": "pending"})
            return IdempotencyRecord.model_validate(doc)
        return None

    async def complete(self, record: IdempotencyRecord, status_code: int, body: str) -> None:
        await self._c.update_one(
            {"_id": record.id, "state": "pending", "createdAt": record.created_at},
            {"$set": {"state": "complete", "statusCode": status_code, "body": body}},
        )

    async def release(self, record: IdempotencyRecord) -> None:
        await self._c.delete_one(
            {"_id": record.id, "state": "pending", "createdAt": record.created_at}
        )


def index_builds() -> AbstractContextManager[None]:
    """Lifts the per-operation timeout (``timeoutMS``) for the index creation it wraps.

    Building a new index on a large collection outlasts ``BOOKING_API_MONGO_TIMEOUT_MS``,
    and a ``createIndexes`` sent with the ``maxTimeMS`` that timeout adds is aborted by the
    server: the start would fail again and again while MongoDB is fine. ``timeout(0)`` is
    "no limit" (``None`` would fall back to the client's ``timeoutMS``). Server selection
    keeps ``serverSelectionTimeoutMS``, so an unreachable MongoDB still fails an attempt
    quickly with its reason. An enclosing ``pymongo.timeout`` (``MongoStartup`` cutting an
    attempt at the start timeout) is left in force: the driver reads only the innermost
    timeout, so a ``timeout(0)`` inside it would lift that bound too."""
    return contextlib.nullcontext() if _csot.get_timeout() is not None else pymongo.timeout(0)


def _client(url: str, timeout_ms: int) -> AsyncMongoClient[Document]:
    """The client, built as the store uses it. Building it connects to nothing and resolves
    no ``mongodb+srv://`` name (the async client does both at its first operation)."""
    return AsyncMongoClient(
        url,
        tz_aware=True,
        w="majority",
        journal=True,
        readConcernLevel="majority",
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        timeoutMS=timeout_ms,
        appname="slotstream-booking-api",
    )


_SCHEMES = ("mongodb://", "mongodb+srv://")
#: said instead of the driver's reason when a part of a password may have ended up after
#: the host list, where the driver's message would quote it
_SPILLED = (
    "an '@' after the host list: a user name or password with an unescaped '/', '?', ':', "
    "'@' or '%' must be percent-encoded (urllib.parse.quote_plus)"
)


def connection_string_problem(url: str, timeout_ms: int) -> str | None:
    """Why the driver would refuse ``url`` when the store builds its client, or None;
    the reason names the wrong part and never quotes the user name or password. Stricter
    than the client, which only warns about (and ignores) unknown options and bad option
    values, and accepts empty ones (``?replicaSet=``, an unset template variable)."""
    if not url.startswith(_SCHEMES):
        return "it must begin with mongodb:// or mongodb+srv://"
    # Split as the driver does: the host list ends at the first '/' or '?', the user info
    # is what precedes its last '@'. An unescaped '/' or '?' in a password ends it early.
    before_options, _, options = url.partition("://")[2].partition("?")
    authority, _, database = before_options.partition("/")
    userinfo, at, _hosts = authority.rpartition("@")
    if "@" in database:
        return _SPILLED
    if at:
        try:
            parse_userinfo(userinfo)
        except InvalidURI:
            return (
                "the user name or password is not percent-encoded: ':', '/', '?', '#', '@', "
                "'[', ']' and '%' in them must be (urllib.parse.quote_plus)"
            )
    try:
        if options:
            for name, _, value in (pair.partition("=") for pair in re.split("[&;]", options)):
                if not value:
                    return f"option {name} has no value"
            split_options(options, validate=True, warn=False)
        _client(url, timeout_ms)
    except (PyMongoError, ValueError, TypeError, OSError) as exc:
        # With an '@' in the options and none before the host list, a password's '?' may
        # have put a part of it into the options (or the hosts): not quoted.
        return _SPILLED if "@" in options and not at else f"{type(exc).__name__}: {exc}"
    return None


class MongoStorage:
    def __init__(
        self,
        url: str,
        db: str,
        timeout_ms: int = 5_000,
        *,
        notification_retention: timedelta = DEFAULT_NOTIFICATION_RETENTION,
    ) -> None:
        self._client = _client(url, timeout_ms)
        self._db: AsyncDatabase[Document] = self._client.get_database(
            db,
            write_concern=WriteConcern(w="majority", j=True),
            read_concern=ReadConcern("majority"),
        )
        self._instructors = MongoInstructors(self._db[INSTRUCTORS])
        self._slots = MongoSlots(self._client, self._db[SLOTS], self._db[SCHEDULE_GUARDS])
        self._bookings = MongoBookings(self._db[BOOKINGS])
        self._notification_ttl = math.ceil(notification_retention.total_seconds())
        self._notifications = MongoNotifications(self._db[NOTIFICATIONS], notification_retention)
        self._idempotency = MongoIdempotency(self._db[IDEMPOTENCY])

    @property
    def database(self) -> AsyncDatabase[Document]:
        return self._db

    @property
    def instructors(self) -> MongoInstructors:
        return self._instructors

    @property
    def slots(self) -> MongoSlots:
        return self._slots

    @property
    def bookings(self) -> MongoBookings:
        return self._bookings

    @property
    def notifications(self) -> MongoNotifications:
        return self._notifications

    @property
    def idempotency(self) -> MongoIdempotency:
        return self._idempotency

    async def start(self) -> None:
        """Create the indexes (idempotent: an identical existing index is left alone). Not
        retried here: at a cold start the database may come up after the API, and
        ``startup.MongoStartup`` tries again, with the server already serving."""
        with index_builds():
            await self._create_indexes()

    async def _create_indexes(self) -> None:
        db = self._db
        await db[INSTRUCTORS].create_index([("name", ASCENDING), ("_id", ASCENDING)])
        # At most one live slot per instructor and start; it also serves the schedule and
        # overlap queries, whose status filter is the index's filter (partial indexes with
        # $in need MongoDB 6.0 or later).
        await db[SLOTS].create_index(
            [("instructorId", ASCENDING), ("start", ASCENDING)],
            name="instructor_start_live_unique",
            unique=True,
            partialFilterExpression=_LIVE,
        )
        # The repair's scan of booked slots (``list_booked_after``): only booked slots are
        # in it, so it stays the size of the booked part of the schedule.
        await db[SLOTS].create_index(
            [("start", ASCENDING), ("_id", ASCENDING)],
            name="booked_start",
            partialFilterExpression={"status": SlotStatus.BOOKED.value},
        )
        # At most one active booking per slot, whatever happens to the slot document.
        await db[BOOKINGS].create_index(
            [("slotId", ASCENDING)],
            name="slot_active_unique",
            unique=True,
            partialFilterExpression={"status": BookingStatus.ACTIVE.value},
        )
        await db[BOOKINGS].create_index([("studentId", ASCENDING), ("createdAt", DESCENDING)])
        await db[BOOKINGS].create_index([("instructorId", ASCENDING), ("createdAt", DESCENDING)])
        await db[NOTIFICATIONS].create_index([("userId", ASCENDING), ("createdAt", DESCENDING)])
        await self._keep_notifications()
        await db[IDEMPOTENCY].create_index("expiresAt", expireAfterSeconds=0)
        await db[IDEMPOTENCY].create_index([("userId", ASCENDING), ("expiresAt", ASCENDING)])

    async def _keep_notifications(self) -> None:
        """The TTL index that deletes notifications after the retention period, with the
        period of this start's setting.

        MongoDB refuses ``createIndexes`` (IndexOptionsConflict) when an index on
        ``{createdAt: 1}`` exists with another ``expireAfterSeconds`` (the period was
        changed), or under another name, TTL or not (an operator's ``createIndex``,
        ``createdAt_1``): that index, whatever its name (read from ``listIndexes``), is
        given the period with ``collMod``, in place and at once (MongoDB 5.1 or later also
        turns a plain single-field index into a TTL index so; the deployment's
        ``booking-api`` user has the role ``slotstreamBookingApi`` for it). A user with
        ``readWrite`` alone (a deployment whose init has not run since) may not run
        ``collMod`` (Unauthorized) but may drop and create indexes: then that index is
        dropped and ``createdAt_ttl`` built (a scan of the collection; nothing expires
        meanwhile). Both address it by its name: a partial index on the same key may exist
        beside it, and then MongoDB refuses the key pattern as ambiguous.
        Replicas starting together with one setting end with that period whatever order
        their commands arrive in; with different settings, the last to start wins."""
        notifications = self._db[NOTIFICATIONS]
        seconds = self._notification_ttl

        async def create() -> None:
            await notifications.create_index(
                [("createdAt", ASCENDING)], name=NOTIFICATION_TTL, expireAfterSeconds=seconds
            )

        try:
            await create()
            return
        except OperationFailure as exc:
            if exc.code != _INDEX_OPTIONS_CONFLICT:
                raise
        existing = await self._conflicting_notification_index()
        if existing is None:  # another replica dropped it to rebuild it: build it
            await create()
            return
        before = existing.get("expireAfterSeconds")
        if before == seconds:  # under another name, with this period already
            return
        change = {"name": existing["name"], "expireAfterSeconds": seconds}
        try:
            await self._db.command({"collMod": NOTIFICATIONS, "index": change})
            how = "collMod"
        except OperationFailure as exc:
            if exc.code != _UNAUTHORIZED:
                raise
            try:
                await notifications.drop_index(existing["name"])
            except OperationFailure as drop_failed:
                if drop_failed.code != _INDEX_NOT_FOUND:
                    raise
            await create()
            how = "rebuilt"
        log.info(
            "notification retention changed",
            index=existing["name"],
            expire_after_seconds_before=before,
            expire_after_seconds=seconds,
            how=how,
        )

    async def _conflicting_notification_index(self) -> Document | None:
        """The index ``createdAt_ttl`` conflicts with (its ``listIndexes`` document), if it
        is still there: the one on ``{createdAt: 1}`` that MongoDB cannot tell from ours (no
        partial filter, no collation; there is at most one), ours or under another name.
        Every index is in the reply's first batch: a collection has at most 64, a first
        batch holds 101."""
        reply = await self._db.command({"listIndexes": NOTIFICATIONS, "cursor": {}})
        indexes: list[Document] = reply["cursor"]["firstBatch"]
        return next(
            (
                i
                for i in indexes
                if dict(i["key"]) == _CREATED_AT
                and "partialFilterExpression" not in i
                and "collation" not in i
            ),
            None,
        )

    async def ping(self) -> bool:
        try:
            await self._client.admin.command("ping")
        except PyMongoError:
            return False
        return True

    async def close(self) -> None:
        await self._client.close()
