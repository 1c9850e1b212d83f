"""Map one database change (or one snapshot document) to what should happen on Kafka.

The result is one of four outcomes: publish a CloudEvent, dead-letter the change (it cannot
be mapped: the error and the original change go to the dead-letter topic), skip it (a
change nobody consumes, such as a notification's read flag), or ``Invalidated`` (the change
stream ended: checkpoint and reopen).

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
  read state belongs to the user's own session (the API returns it).
- Snapshot documents are published as ``*.created`` (``slot.deleted`` for a tombstoned
  slot, ``booking.cancelled`` for a cancelled booking), with ``time`` = the snapshot's
  operation time and an id derived from collection, document id and version, so a second
  snapshot of an unchanged document repeats the same id.
"""

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final, TypeVar

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
    BookingData,
    BookingStatus,
    NotificationData,
    SlotData,
    SlotStatus,
)
from slotstream_contracts.events import SOURCE, SPEC_VERSION, CloudEvent, EventType
from slotstream_contracts.ids import is_valid_id


@dataclass(frozen=True, slots=True)
class Publish:
    event: CloudEvent


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


Outcome = Publish | DeadLetter | Skip | Invalidated

_CONTROL_OPS: Final = frozenset(
    {OperationType.DROP, OperationType.RENAME, OperationType.DROP_DATABASE}
)
_ROUTING_FIELDS: Final = ("instructorId", "userId")
#: ``NotificationData.message`` allows at most this many characters (the stored model any).
_MESSAGE_LIMIT: Final = 500


def event_id(change: ChangeEvent) -> str:
    """A stable id per change: the same resume token always gives the same id.

    Mongo's ``_data`` can be longer than a CloudEvent id may be, so it is hashed.
    """
    raw = change.token_data or orjson.dumps(change.token, option=orjson.OPT_SORT_KEYS).decode()
    return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


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


def _routing_key_of(change: ChangeEvent) -> str:
    for document in (change.full_document, change.full_document_before_change):
        if document:
            for name in _ROUTING_FIELDS:
                value = document.get(name)
                if isinstance(value, str) and is_valid_id(value):
                    return value
    return change.ns.coll or change.ns.db


_Handler = Callable[[ChangeEvent, str, datetime], Outcome]


class ChangeMapper:
    """Maps changes of the slots, bookings and notifications collections to outcomes."""

    def __init__(self) -> None:
        self._handlers: Mapping[str, _Handler] = {
            SLOTS: self._slot_change,
            BOOKINGS: self._booking_change,
            NOTIFICATIONS: self._notification_change,
        }

    def map_change(self, change: ChangeEvent) -> Outcome:
        op = change.operation_type
        if op is OperationType.INVALIDATE:
            return Invalidated()
        if op in _CONTROL_OPS:
            return Skip(f"{op.value} of {change.ns.db}.{change.ns.coll or '*'}")
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
        time = cluster_datetime(operation_time)
        try:
            if collection == SLOTS:
                slot = SlotDocument.model_validate(document)
                return Publish(
                    _slot_event(
                        snapshot_event_id(collection, slot.id, slot.version),
                        EventType.SLOT_DELETED
                        if slot.status is SlotStatus.DELETED
                        else EventType.SLOT_CREATED,
                        time,
                        slot,
                    )
                )
            if collection == BOOKINGS:
                booking = BookingDocument.model_validate(document)
                return Publish(
                    _booking_event(
                        snapshot_event_id(collection, booking.id, booking.version),
                        EventType.BOOKING_CANCELLED
                        if booking.status is BookingStatus.CANCELLED
                        else EventType.BOOKING_CREATED,
                        time,
                        booking,
                    )
                )
            if collection == NOTIFICATIONS:
                note = NotificationDocument.model_validate(document)
                return Publish(
                    _notification_event(
                        snapshot_event_id(collection, note.id, note.version), time, note
                    )
                )
        except ValidationError as exc:
            return DeadLetter(_describe(exc), collection)
        return DeadLetter(f"no mapping for collection {collection!r}", collection)

    def _slot_change(self, change: ChangeEvent, eid: str, time: datetime) -> Outcome:
        op = change.operation_type
        if op is OperationType.DELETE:
            before = change.full_document_before_change
            if before is None:
                return DeadLetter(
                    "hard delete of a slot without a pre-image: its instructor (routing key) "
                    "is unknown; the API tombstones slots, enable pre-images for manual deletes",
                    _routing_key_of(change),
                )
            slot = SlotDocument.model_validate(before)
            if slot.status is SlotStatus.DELETED:
                return Skip("hard delete of a tombstoned slot")
            gone = slot.model_copy(
                update={
                    "status": SlotStatus.DELETED,
                    "version": slot.version + 1,
                    "updated_at": time,
                }
            )
            return Publish(_slot_event(eid, EventType.SLOT_DELETED, time, gone))
        document = change.full_document
        if document is None:
            return DeadLetter(
                f"slot {op.value} without fullDocument (deleted before the lookup)",
                _routing_key_of(change),
            )
        slot = SlotDocument.model_validate(document)
        if slot.status is SlotStatus.DELETED:
            event_type = EventType.SLOT_DELETED
        elif op is OperationType.INSERT:
            event_type = EventType.SLOT_CREATED
        else:
            event_type = EventType.SLOT_UPDATED
        return Publish(_slot_event(eid, event_type, time, slot))

    def _booking_change(self, change: ChangeEvent, eid: str, time: datetime) -> Outcome:
        op = change.operation_type
        if op is OperationType.DELETE:
            before = change.full_document_before_change
            if before is None:
                return DeadLetter(
                    "hard delete of a booking without a pre-image: its instructor (routing "
                    "key) is unknown",
                    _routing_key_of(change),
                )
            booking = BookingDocument.model_validate(before)
            if booking.status is BookingStatus.CANCELLED:
                return Skip("hard delete of a cancelled booking")
            gone = booking.model_copy(
                update={
                    "status": BookingStatus.CANCELLED,
                    "version": booking.version + 1,
                    "cancelled_at": time,
                }
            )
            return Publish(_booking_event(eid, EventType.BOOKING_CANCELLED, time, gone))
        document = change.full_document
        if document is None:
            return DeadLetter(
                f"booking {op.value} without fullDocument (deleted before the lookup)",
                _routing_key_of(change),
            )
        booking = BookingDocument.model_validate(document)
        cancelled = booking.status is BookingStatus.CANCELLED
        if op is OperationType.INSERT:
            event_type = EventType.BOOKING_CANCELLED if cancelled else EventType.BOOKING_CREATED
            return Publish(_booking_event(eid, event_type, time, booking))
        if not cancelled:
            return Skip("booking update that is not a cancellation")
        described = change.update_description
        if (
            op is OperationType.UPDATE
            and described is not None
            and "status" not in described.updated_fields
        ):
            return Skip("update of an already cancelled booking")
        return Publish(_booking_event(eid, EventType.BOOKING_CANCELLED, time, booking))

    def _notification_change(self, change: ChangeEvent, eid: str, time: datetime) -> Outcome:
        op = change.operation_type
        if op is not OperationType.INSERT:
            return Skip(f"notification {op.value} is not published (only new notifications)")
        document = change.full_document
        if document is None:
            return DeadLetter("notification insert without fullDocument", _routing_key_of(change))
        note = NotificationDocument.model_validate(document)
        return Publish(_notification_event(eid, time, note))


M = TypeVar("M", bound=BaseModel)


def _trusted(cls: type[M], values: dict[str, Any]) -> M:
    """A contract model built from values that are valid already, without validating again.

    This is the hot path's cheaper construction: every value comes from the stored
    document just validated by its ``*Document`` model (same field types) or is made here
    (id, type, subject, time), and ``_public`` checks the few constraints the stored models
    do not share. ``model_construct`` would also skip validation but is slower than
    validating in pydantic 2.14; this sets the same attributes ``model_construct`` sets.
    A unit test holds the result equal, and byte-identical on the wire, to the validated
    ``to_data()`` / ``CloudEvent(...)`` construction.
    """
    model = object.__new__(cls)
    _set(model, "__dict__", values)
    # Every field is given: one immutable set per class (the models are frozen, nothing
    # adds to it) instead of building a set per event.
    _set(model, "__pydantic_fields_set__", _all_fields(cls))
    _set(model, "__pydantic_extra__", None)
    _set(model, "__pydantic_private__", None)
    return model


_set: Final = object.__setattr__


@lru_cache(maxsize=8)
def _all_fields(cls: type[BaseModel]) -> frozenset[str]:
    return frozenset(cls.model_fields)


_Data = TypeVar("_Data", SlotData, BookingData, NotificationData)
_FIELDS: Final[dict[type[BaseModel], tuple[str, ...]]] = {
    model: tuple(model.model_fields) for model in (SlotData, BookingData, NotificationData)
}


def _public(document: BaseModel, cls: type[_Data], to_data: Callable[[], _Data]) -> _Data:
    """The entity's public model: the fields of ``cls`` taken from the validated stored
    document (what ``to_data()`` does), or ``to_data()`` itself when a value breaks a
    constraint only the public model has — its ValidationError dead-letters the change."""
    # Read the validated values straight from the instance dict: a ``getattr`` miss on a
    # pydantic model takes its slow ``__getattr__`` path.
    values = document.__dict__
    if values["version"] < 1 or len(values.get("message", "")) > _MESSAGE_LIMIT:
        return to_data()
    return _trusted(cls, {name: values[name] for name in _FIELDS[cls]})


def _event(
    eid: str,
    event_type: EventType,
    time: datetime,
    subject: str,
    data: SlotData | BookingData | NotificationData,
    *,
    instructorid: str | None = None,
    userid: str | None = None,
) -> CloudEvent:
    # In field order: the serialiser writes the attributes in this order.
    return _trusted(
        CloudEvent,
        {
            "specversion": SPEC_VERSION,
            "id": eid,
            "source": SOURCE,
            "type": event_type,
            "subject": subject,
            "time": time,
            "datacontenttype": "application/json",
            "instructorid": instructorid,
            "userid": userid,
            "version": data.version,
            "data": data,
        },
    )


def _slot_event(eid: str, event_type: EventType, time: datetime, slot: SlotDocument) -> CloudEvent:
    data = _public(slot, SlotData, slot.to_data)
    return _event(eid, event_type, time, f"slots/{slot.id}", data, instructorid=slot.instructor_id)


def _booking_event(
    eid: str, event_type: EventType, time: datetime, booking: BookingDocument
) -> CloudEvent:
    data = _public(booking, BookingData, booking.to_data)
    return _event(
        eid, event_type, time, f"bookings/{booking.id}", data, instructorid=booking.instructor_id
    )


def _notification_event(eid: str, time: datetime, note: NotificationDocument) -> CloudEvent:
    data = _public(note, NotificationData, note.to_data)
    return _event(
        eid,
        EventType.NOTIFICATION_CREATED,
        time,
        f"notifications/{note.id}",
        data,
        userid=note.user_id,
    )
