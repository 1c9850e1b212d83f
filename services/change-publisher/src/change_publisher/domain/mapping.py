"""Map one database change (or one snapshot document) to what should happen on Kafka.

The result is one of five outcomes: publish a CloudEvent, dead-letter the change (it cannot
be mapped: the error and the original change go to the dead-letter topic), skip it (a
change nobody consumes, such as a notification's read flag), ``Restructured`` (a collection
was dropped or renamed, or the database dropped: its documents left without a ``delete``
each, so readers must refetch), or ``Invalidated`` (the change stream ended: checkpoint and
reopen).

Decisions written down here:

- Slots are tombstoned by the API (``status: deleted``), so an update to that status is a
  ``slot.deleted`` carrying the routing key in ``fullDocument``. A hard delete (by hand) is
  mapped from ``fullDocumentBeforeChange`` when the collection has pre-images, as the
  deleted state with ``version + 1``; without a pre-image it cannot be routed and is
  dead-lettered. Removing a slot that was already tombstoned is skipped.
- Bookings publish ``booking.created`` on insert and ``booking.cancelled`` when an update
  (or replace) sets ``status: cancelled``; other booking updates carry nothing consumers
  use and are skipped. A hard delete with a pre-image of an active booking is published as
  its cancellation.
- Notifications publish ``notification.created`` on insert only. Updates (the ``read``
  flag) and deletes are skipped: the notifications topic carries new notifications, and the
  read state belongs to the user's own session (the API returns it). Deletes are the
  booking-api's TTL index expiring notifications past the retention, by the thousand:
  skipped without a log line or a dead letter.
- Bookings are private: a booking names its student, so its event goes only to the
  private channels of the two people it concerns (``records.encode_records``: one record
  keyed by the instructor, one keyed by the student, on the notifications topic), never
  to the public schedule. The public schedule learns a slot is booked from ``slot.*``,
  which carries no student.
- Every record of a private event names its reader's role (``CloudEvent.audience``): a
  student and an instructor may share an id, and the notifications topic is keyed by the
  id alone. A booking's two records are for its instructor and for its student, two
  records even when the ids are equal; a notification is for the audience it was stored
  with (none on documents from before audiences: every role of the user reads those).
- A change or snapshot document the source could not decode (``UndecodableChange``,
  ``UndecodableDocument``: invalid UTF-8 in a stored string, say) is dead-lettered with the
  decoding error; retrying it would fail the same way forever.
- Snapshot documents are published as ``*.created`` (``slot.deleted`` for a tombstoned
  slot, ``booking.cancelled`` for a cancelled booking), with ``time`` = the snapshot's
  operation time and an id derived from collection, document id and version, so a second
  snapshot of an unchanged document repeats the same id.
"""

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any, Final, Literal, NamedTuple

import orjson
from pydantic import BaseModel, ValidationError

from slotstream_contracts.changes import ChangeEvent, ClusterTime, OperationType
from slotstream_contracts.documents import (
    BOOKINGS,
    NOTIFICATIONS,
    SLOTS,
    BookingDocument,
    NotificationDocument,
    SlotDocument,
)
from slotstream_contracts.entities import (
    Audience,
    BookingData,
    BookingStatus,
    NotificationData,
    SlotData,
    SlotStatus,
)
from slotstream_contracts.events import CloudEvent, EventType
from slotstream_contracts.ids import is_valid_id

_Document = SlotDocument | BookingDocument | NotificationDocument


@dataclass(frozen=True, slots=True)
class Shape:
    """How an event is made of a stored document: subject, routing key, public model."""

    subject_prefix: str
    #: The document field holding the routing key (instructor or user id) ...
    routing_field: str
    #: ... and the CloudEvent extension that carries it.
    extension: Literal["instructorid", "userid"]
    data: type[SlotData | BookingData | NotificationData]


SHAPES: Final[dict[type[BaseModel], Shape]] = {
    SlotDocument: Shape("slots/", "instructor_id", "instructorid", SlotData),
    BookingDocument: Shape("bookings/", "instructor_id", "instructorid", BookingData),
    NotificationDocument: Shape("notifications/", "user_id", "userid", NotificationData),
}


class Publish(NamedTuple):
    """Publish the event of ``document`` (validated, and accepted by its public model).

    The event is kept as its parts: the hot path encodes them straight to the wire
    (``records.encode_records``, byte-identical to ``event_for(audience).to_json()``)
    without building the CloudEvent model; ``event_for`` builds and validates it. A named
    tuple: made once per change, it must be cheap to make."""

    id: str
    type: EventType
    time: datetime
    document: _Document

    @property
    def routing_key(self) -> str:
        key: str = self.document.__dict__[SHAPES[type(self.document)].routing_field]
        return key

    @property
    def recipients(self) -> tuple[tuple[str, Audience | None], ...]:
        """(record key, audience) of every record the event is written as: a booking one
        for its instructor and one for its student (two people, even with one id), a
        notification one for its user in the role it was stored for, a slot one for its
        instructor's public schedule (no audience)."""
        document = self.document
        values = document.__dict__
        kind = type(document)
        if kind is BookingDocument:
            return ((values["instructor_id"], _INSTRUCTOR), (values["student_id"], _STUDENT))
        if kind is NotificationDocument:
            return ((values["user_id"], values["audience"]),)
        return ((values["instructor_id"], None),)

    @property
    def event(self) -> CloudEvent:
        """The event of the first record (a slot's or a notification's only one)."""
        return self.event_for(self.recipients[0][1])

    def event_for(self, audience: Audience | None) -> CloudEvent:
        """The event as the record for readers in the role ``audience`` carries it."""
        document = self.document
        shape = SHAPES[type(document)]
        key = self.routing_key
        return CloudEvent(
            id=self.id,
            type=self.type,
            subject=shape.subject_prefix + document.id,
            time=self.time,
            instructorid=key if shape.extension == "instructorid" else None,
            userid=key if shape.extension == "userid" else None,
            version=document.version,
            data=document.to_data(),
            audience=audience,
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    error: str
    #: The routing key when the document still shows one, else the collection name.
    key: str


@dataclass(frozen=True, slots=True)
class Skip:
    reason: str


@dataclass(frozen=True, slots=True)
class Invalidated:
    """The change stream was invalidated (collection or database dropped or renamed)."""


class ResyncCause(StrEnum):
    """Why readers are told to refetch (the start of ``ResyncData.reason``)."""

    HISTORY_LOST = "history-lost"
    COLLECTION_DROPPED = "collection-dropped"
    COLLECTION_RENAMED = "collection-renamed"
    DATABASE_DROPPED = "database-dropped"


@dataclass(frozen=True, slots=True)
class Restructured:
    """A ``drop`` or ``rename`` of a collection, or a ``dropDatabase``: every document of
    ``collections`` (None: of every collection) may have vanished or been replaced without
    a change of its own (a restore's ``mongorestore --drop``, a ``$out`` reload renamed over
    the collection), so their readers must refetch."""

    cause: ResyncCause
    collections: tuple[str, ...] | None
    #: what happened, for the log and ``ResyncData.reason``: ``drop of slotstream.slots``
    detail: str


Outcome = Publish | DeadLetter | Skip | Restructured | Invalidated


class UndecodableChange(ChangeEvent):
    """A change whose stored documents the source could not decode: what could be read
    of it (documents with invalid UTF-8 shown as escapes), dead-lettered with ``error``."""

    error: str


class UndecodableDocument(dict[str, Any]):
    """A snapshot document the source could not decode: its ``_id`` if readable,
    dead-lettered with ``error``."""

    def __init__(self, document_id: Any, error: str) -> None:
        super().__init__(_id=document_id)
        self.error = error


_CAUSES: Final = {
    OperationType.DROP: ResyncCause.COLLECTION_DROPPED,
    OperationType.RENAME: ResyncCause.COLLECTION_RENAMED,
    OperationType.DROP_DATABASE: ResyncCause.DATABASE_DROPPED,
}
_ROUTING_FIELDS: Final = ("instructorId", "userId")
#: ``NotificationData.message`` allows at most this many characters (the stored model any).
_MESSAGE_LIMIT: Final = 500


# Enum members bound to module names: in Python 3.11 ``OperationType.INSERT`` is looked up
# through the enum class (~0.25 µs), and the mapping makes several such tests per change.
_BOOKING_CANCELLED: Final = EventType.BOOKING_CANCELLED
_BOOKING_CREATED: Final = EventType.BOOKING_CREATED
_CANCELLED: Final = BookingStatus.CANCELLED
_DELETE: Final = OperationType.DELETE
_INSERT: Final = OperationType.INSERT
_INSTRUCTOR: Final = Audience.INSTRUCTOR
_INVALIDATE: Final = OperationType.INVALIDATE
_NOTIFICATION_CREATED: Final = EventType.NOTIFICATION_CREATED
_SLOT_CREATED: Final = EventType.SLOT_CREATED
_SLOT_DELETED: Final = EventType.SLOT_DELETED
_SLOT_UPDATED: Final = EventType.SLOT_UPDATED
_STUDENT: Final = Audience.STUDENT
_TOMBSTONE: Final = SlotStatus.DELETED
_UPDATE: Final = OperationType.UPDATE


def event_id(change: ChangeEvent) -> str:
    """A stable id per change: the same resume token always gives the same id.

    Mongo's ``_data`` can be longer than a CloudEvent id may be, so it is hashed.
    """
    data = change.token.get("_data")
    if type(data) is not str or not data:
        data = change.token_data or orjson.dumps(change.token, option=orjson.OPT_SORT_KEYS).decode()
    hasher = _ID_HASH.copy()  # cheaper than a new keyed constructor per change
    hasher.update(data.encode())
    return hasher.hexdigest()


_ID_HASH: Final = hashlib.blake2b(digest_size=16)

# The models' validators, called directly on the hot path (``model_validate`` is one more
# Python call per change around the same call).
_validate_slot: Final = SlotDocument.__pydantic_validator__.validate_python
_validate_booking: Final = BookingDocument.__pydantic_validator__.validate_python
_validate_notification: Final = NotificationDocument.__pydantic_validator__.validate_python


def snapshot_event_id(collection: str, document_id: str, version: int) -> str:
    raw = f"snapshot/{collection}/{document_id}/{version}"
    return "s" + hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


def cluster_datetime(cluster_time: ClusterTime) -> datetime:
    return _second(cluster_time.t)


@lru_cache(maxsize=64)
def _second(t: int) -> datetime:
    # Changes arrive with the same clusterTime second in long runs: convert each once.
    return datetime.fromtimestamp(t, UTC)


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        loc = ".".join(str(part) for part in error["loc"]) or "document"
        parts.append(f"{loc}: {error['msg']}")
    return f"{exc.title} invalid: " + "; ".join(parts)


def _after_image(change: ChangeEvent) -> dict[str, Any] | None:
    """The document after the change. ``fullDocument`` is looked up when the change is read
    (``updateLookup``): a later version, or None once the document was deleted; then, with
    pre-images, the pre-image with this update applied is exactly what the update wrote."""
    if change.full_document is not None:
        return change.full_document
    before = change.full_document_before_change
    described = change.update_description
    if change.operation_type is not _UPDATE or before is None or described is None:
        return None
    after = {**before, **described.updated_fields}
    for removed in described.removed_fields:
        after.pop(removed, None)
    return after


def _routing_key_of(change: ChangeEvent) -> str:
    for document in (change.full_document, change.full_document_before_change):
        if document:
            for name in _ROUTING_FIELDS:
                value = document.get(name)
                if isinstance(value, str) and is_valid_id(value):
                    return value
    return change.ns.coll or change.ns.db


_Handler = Callable[[ChangeEvent, str, datetime], Outcome]


def _restructured(change: ChangeEvent, cause: ResyncCause) -> Restructured:
    ns = change.ns
    if cause is ResyncCause.DATABASE_DROPPED or ns.coll is None:
        return Restructured(cause, None, f"{change.operation_type.value} of {ns.db}")
    detail = f"{change.operation_type.value} of {ns.db}.{ns.coll}"
    to = change.to
    if to is None or to.coll is None:
        return Restructured(cause, (ns.coll,), detail)
    # Both names: the documents left the one and replaced those of the other.
    return Restructured(cause, (ns.coll, to.coll), f"{detail} to {to.db}.{to.coll}")


class ChangeMapper:
    """Maps changes of the slots, bookings and notifications collections to outcomes."""

    def __init__(self) -> None:
        self._handlers: Mapping[str, _Handler] = {
            SLOTS: self._slot_change,
            BOOKINGS: self._booking_change,
            NOTIFICATIONS: self._notification_change,
        }

    def map_change(self, change: ChangeEvent) -> Outcome:
        if type(change) is UndecodableChange:
            return DeadLetter(change.error, _routing_key_of(change))
        op = change.operation_type
        if op is _INVALIDATE:
            return Invalidated()
        cause = _CAUSES.get(op)
        if cause is not None:
            return _restructured(change, cause)
        handler = self._handlers.get(change.ns.coll or "")
        if handler is None:
            return DeadLetter(
                f"no mapping for collection {change.ns.coll!r}", _routing_key_of(change)
            )
        try:
            return handler(change, event_id(change), cluster_datetime(change.cluster_time))
        except ValidationError as exc:
            return DeadLetter(_describe(exc), _routing_key_of(change))

    def map_document(
        self, collection: str, document: Mapping[str, Any], operation_time: ClusterTime
    ) -> Outcome:
        """A document copied by a snapshot, as the event that creates its current state."""
        if type(document) is UndecodableDocument:
            return DeadLetter(document.error, collection)
        time = cluster_datetime(operation_time)
        try:
            if collection == SLOTS:
                slot = SlotDocument.model_validate(document)
                return _slot_event(
                    snapshot_event_id(collection, slot.id, slot.version),
                    _SLOT_DELETED if slot.status is _TOMBSTONE else _SLOT_CREATED,
                    time,
                    slot,
                )
            if collection == BOOKINGS:
                booking = BookingDocument.model_validate(document)
                return _booking_event(
                    snapshot_event_id(collection, booking.id, booking.version),
                    _BOOKING_CANCELLED if booking.status is _CANCELLED else _BOOKING_CREATED,
                    time,
                    booking,
                )
            if collection == NOTIFICATIONS:
                note = NotificationDocument.model_validate(document)
                return _notification_event(
                    snapshot_event_id(collection, note.id, note.version), time, note
                )
        except ValidationError as exc:
            return DeadLetter(_describe(exc), collection)
        return DeadLetter(f"no mapping for collection {collection!r}", collection)

    def _slot_change(self, change: ChangeEvent, eid: str, time: datetime) -> Outcome:
        op = change.operation_type
        if op is _DELETE:
            before = change.full_document_before_change
            if before is None:
                return DeadLetter(
                    "hard delete of a slot without a pre-image: its instructor (routing key) "
                    "is unknown; the API tombstones slots, enable pre-images for manual deletes",
                    _routing_key_of(change),
                )
            slot = SlotDocument.model_validate(before)
            if slot.status is _TOMBSTONE:
                return Skip("hard delete of a tombstoned slot")
            gone = slot.model_copy(
                update={
                    "status": _TOMBSTONE,
                    "version": slot.version + 1,
                    "updated_at": time,
                }
            )
            return _slot_event(eid, _SLOT_DELETED, time, gone)
        document = _after_image(change)
        if document is None:
            return DeadLetter(
                f"slot {op.value} without fullDocument (deleted before the lookup)",
                _routing_key_of(change),
            )
        slot = _validate_slot(document)
        if slot.status is _TOMBSTONE:
            event_type = _SLOT_DELETED
        elif op is _INSERT:
            event_type = _SLOT_CREATED
        else:
            event_type = _SLOT_UPDATED
        return _slot_event(eid, event_type, time, slot)

    def _booking_change(self, change: ChangeEvent, eid: str, time: datetime) -> Outcome:
        op = change.operation_type
        if op is _DELETE:
            before = change.full_document_before_change
            if before is None:
                return DeadLetter(
                    "hard delete of a booking without a pre-image: its instructor (routing "
                    "key) is unknown",
                    _routing_key_of(change),
                )
            booking = BookingDocument.model_validate(before)
            if booking.status is _CANCELLED:
                return Skip("hard delete of a cancelled booking")
            gone = booking.model_copy(
                update={
                    "status": _CANCELLED,
                    "version": booking.version + 1,
                    "cancelled_at": time,
                }
            )
            return _booking_event(eid, _BOOKING_CANCELLED, time, gone)
        document = _after_image(change)
        if document is None:
            return DeadLetter(
                f"booking {op.value} without fullDocument (deleted before the lookup)",
                _routing_key_of(change),
            )
        booking = _validate_booking(document)
        cancelled = booking.status is _CANCELLED
        if op is _INSERT:
            event_type = _BOOKING_CANCELLED if cancelled else _BOOKING_CREATED
            return _booking_event(eid, event_type, time, booking)
        if not cancelled:
            return Skip("booking update that is not a cancellation")
        described = change.update_description
        if op is _UPDATE and described is not None and "status" not in described.updated_fields:
            return Skip("update of an already cancelled booking")
        return _booking_event(eid, _BOOKING_CANCELLED, time, booking)

    def _notification_change(self, change: ChangeEvent, eid: str, time: datetime) -> Outcome:
        op = change.operation_type
        if op is not _INSERT:
            return Skip(f"notification {op.value} is not published (only new notifications)")
        document = change.full_document
        if document is None:
            return DeadLetter("notification insert without fullDocument", _routing_key_of(change))
        note: NotificationDocument = _validate_notification(document)
        return _notification_event(eid, time, note)


def _checked(document: _Document) -> _Document:
    """``document`` if its public model accepts it; else the public model's ValidationError
    (the change is dead-lettered). The stored models share every constraint of the public
    ones but these two."""
    values = document.__dict__
    if values["version"] < 1 or len(values.get("message", "")) > _MESSAGE_LIMIT:
        document.to_data()
    return document


def _slot_event(eid: str, event_type: EventType, time: datetime, slot: SlotDocument) -> Publish:
    return Publish(eid, event_type, time, _checked(slot))


def _booking_event(
    eid: str, event_type: EventType, time: datetime, booking: BookingDocument
) -> Publish:
    return Publish(eid, event_type, time, _checked(booking))


def _notification_event(eid: str, time: datetime, note: NotificationDocument) -> Publish:
    return Publish(eid, _NOTIFICATION_CREATED, time, _checked(note))
