"""Storage ports: what the booking service needs from a store, and nothing more.

Each write is a single-document operation; the ones that move state are compare-and-set
(the expected state is part of the match) and return the document after the change, or
``None`` when the expected state no longer holds. Two adapters implement these:
``adapters.mongo`` (PyMongo async) and ``adapters.memory`` (the same semantics in a dict,
used by the unit tests and the ``memory`` backend). ``tests/contract`` runs one suite
against both.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from booking_api.domain.repair import SlotCursor
from slotstream_contracts.documents import (
    BookingDocument,
    InstructorDocument,
    NotificationDocument,
    SlotDocument,
    StoredDocument,
    UtcDatetime,
)
from slotstream_contracts.entities import Audience

#: How long a notification is kept when ``BOOKING_API_NOTIFICATION_RETENTION_DAYS`` is unset.
DEFAULT_NOTIFICATION_RETENTION = timedelta(days=90)


class DuplicateKey(Exception):
    """An insert hit a unique index (Mongo error 11000)."""


@dataclass(frozen=True, slots=True)
class UnreadableSlot:
    """A stored slot document the model refuses (edited by hand, written by another
    release): the repair's scan names it and goes on after it, from its ``start`` and id."""

    slot_id: str
    start: datetime
    error: str


def read_slot(document: Mapping[str, Any]) -> SlotDocument | UnreadableSlot:
    """A stored slot as the repair's scan reads it: the model, or where it is and why not
    (the scan's query matched its ``start`` as a date, so that field is one)."""
    try:
        return SlotDocument.model_validate(document)
    except ValidationError as exc:
        return UnreadableSlot(str(document["_id"]), document["start"], refusal(exc))


def refusal(exc: ValidationError) -> str:
    """Why the model refused a stored document, one ``field: message`` per error."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'document'}: {e['msg']}" for e in exc.errors()
    )


class IdempotencyRecord(StoredDocument):
    """The first response to a request sent with an ``Idempotency-Key``.

    ``_id`` is derived from the user and the key, so keys are scoped per user.
    ``fingerprint`` identifies the request (method, path, canonical body). ``user_id``
    counts the user's records against their quota.
    """

    user_id: str | None = None
    fingerprint: str
    state: Literal["pending", "complete"]
    status_code: int | None = None
    body: str | None = None
    created_at: UtcDatetime
    expires_at: UtcDatetime


class InstructorRepository(Protocol):
    async def insert(self, instructor: InstructorDocument) -> None:
        """Store a new instructor; ``DuplicateKey`` when the id is taken."""

    async def get(self, instructor_id: str) -> InstructorDocument | None: ...

    async def list(self, limit: int) -> list[InstructorDocument]:
        """Instructors ordered by name, then id."""


class SlotRepository(Protocol):
    async def insert(self, slot: SlotDocument) -> None:
        """Store a new slot; ``DuplicateKey`` when its id, or a live slot of the same
        instructor with the same start, exists."""

    async def get(self, slot_id: str) -> SlotDocument | None: ...

    async def insert_unless_overlapping(self, slot: SlotDocument) -> list[SlotDocument]:
        """Store the slot unless a live slot of its instructor intersects it, as one atomic
        step for every process sharing the store: the intersecting slots (nothing stored),
        or an empty list (stored). ``DuplicateKey`` as for ``insert``."""

    async def insert_many_unless_overlapping(
        self, instructor_id: str, slots: Sequence[SlotDocument]
    ) -> list[SlotDocument]:
        """All-or-nothing ``insert_unless_overlapping`` for slots of one instructor that do
        not overlap each other: the live slots intersecting any of them (nothing stored),
        or an empty list (all stored)."""

    async def move_unless_overlapping(
        self, slot_id: str, version: int, start: datetime, end: datetime, now: datetime
    ) -> SlotDocument | list[SlotDocument] | None:
        """Give an ``available`` slot still at ``version`` a new window, version + 1, unless
        another live slot of its instructor intersects it, as one atomic step like
        ``insert_unless_overlapping``: the moved slot; or the intersecting slots (nothing
        changed); or ``None`` when the slot is not ``available`` at ``version`` any more."""

    async def list_for_instructor(
        self, instructor_id: str, start: datetime, end: datetime
    ) -> list[SlotDocument]:
        """Non-deleted slots intersecting ``[start, end)``, ordered by start."""

    async def book(
        self, slot_id: str, booking_id: str, student_id: str, now: datetime
    ) -> SlotDocument | None:
        """``available → booked`` with the booking and student ids, version + 1."""

    async def reclaim(self, slot_id: str, booking_id: str, now: datetime) -> SlotDocument | None:
        """A slot ``booked`` by this booking stays so, ``updatedAt`` = ``now``, version + 1:
        a retry that finishes an earlier try's booking marks the slot as in use again, so
        the repair neither counts it stale nor frees it from the version it read."""

    async def release(
        self, slot_id: str, booking_id: str, now: datetime, version: int | None = None
    ) -> SlotDocument | None:
        """``booked`` (by this booking; at ``version`` when given) ``→ available``, ids
        removed, version + 1."""

    async def list_booked_after(
        self, after: SlotCursor, updated_before: datetime, limit: int
    ) -> list[SlotDocument | UnreadableSlot]:
        """Up to ``limit`` ``booked`` slots last updated before ``updated_before``, in
        (start, id) order, after ``after`` (the repair's scan); a document the model
        refuses is an :class:`UnreadableSlot` in its place (:func:`read_slot`)."""

    async def mark_deleted(self, slot_id: str, now: datetime) -> SlotDocument | None:
        """``available → deleted`` (the tombstone), version + 1."""


class BookingRepository(Protocol):
    async def insert(self, booking: BookingDocument) -> None:
        """Store a new booking; ``DuplicateKey`` when the id is taken or the slot already
        has an active booking."""

    async def get(self, booking_id: str) -> BookingDocument | None: ...

    async def cancel(
        self, booking_id: str, now: datetime, reason: str | None = None
    ) -> BookingDocument | None:
        """``active → cancelled`` with ``cancelledAt`` (and ``cancelReason``), version + 1."""

    async def list_for_student(self, student_id: str, limit: int) -> list[BookingDocument]:
        """The bookings the student made, newest first."""

    async def list_for_instructor(self, instructor_id: str, limit: int) -> list[BookingDocument]:
        """The bookings of the instructor's slots, newest first."""

    async def count_active_for_student(self, student_id: str, limit: int, now: datetime) -> int:
        """How many active bookings the student holds of slots that end after ``now``,
        counted up to ``limit`` (a lesson that is over holds nothing of the schedule)."""


class NotificationRepository(Protocol):
    async def insert(self, notification: NotificationDocument) -> None:
        """Store a new notification; ``DuplicateKey`` when the id is taken."""

    async def list_for_user(
        self, user_id: str, limit: int, unread_only: bool, *, audience: Audience, now: datetime
    ) -> list[NotificationDocument]:
        """The user's notifications for ``audience`` (and those without one), newest first;
        none older than the store's retention at ``now`` (expired ones are deleted: in
        MongoDB by a TTL index, whose monitor runs about once a minute)."""

    async def mark_read(
        self, notification_id: str, user_id: str, *, audience: Audience
    ) -> NotificationDocument | None:
        """Set ``read`` (version + 1 the first time); ``None`` unless it is the user's in
        that audience."""


class IdempotencyQuotaExceeded(Exception):
    """The user already holds the most unexpired idempotency records allowed."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"idempotency key quota exceeded; retry after {retry_after}s")
        #: Seconds until the user's oldest record expires and frees a place.
        self.retry_after = retry_after


class IdempotencyStore(Protocol):
    async def reserve(
        self,
        record: IdempotencyRecord,
        now: datetime,
        *,
        stale_before: datetime,
        max_per_user: int,
    ) -> IdempotencyRecord | None:
        """Store a pending record; if an unexpired one has the same id, return it instead,
        unless it is still pending and was created at or before ``stale_before``: no live
        request holds it any more (its process died), so it is replaced (one caller wins)
        and None returned. A new record beyond ``max_per_user`` unexpired records of the
        user raises ``IdempotencyQuotaExceeded`` (in MongoDB the count and the insert are
        two steps: concurrent requests of one user may pass the cap by a few)."""

    async def complete(self, record: IdempotencyRecord, status_code: int, body: str) -> None:
        """Keep the response, if ``record`` (same id and creation time) is still pending:
        a request whose record was taken over must not overwrite the new owner's."""

    async def release(self, record: IdempotencyRecord) -> None:
        """Forget a pending record (the request failed; a retry may run again); only this
        reservation (same id and creation time)."""


class Storage(Protocol):
    """One store: the repositories plus its lifecycle."""

    @property
    def instructors(self) -> InstructorRepository: ...

    @property
    def slots(self) -> SlotRepository: ...

    @property
    def bookings(self) -> BookingRepository: ...

    @property
    def notifications(self) -> NotificationRepository: ...

    @property
    def idempotency(self) -> IdempotencyStore: ...

    async def start(self) -> None:
        """Prepare the store (indexes); safe to call more than once."""

    async def ping(self) -> bool:
        """True when the store answers (for ``/readyz``)."""

    async def close(self) -> None: ...


class StreamTicket(StoredDocument):
    """A single-use pass for one stream connection (docs: D2, issue 10 item 5).

    ``_id`` is the SHA-256 of the ticket, so a copy of the collection holds nothing a
    client could present. ``expires_at`` ends the ticket (seconds after issue);
    ``token_expires_at`` is the ``exp`` of the JWT it was issued for: the stream it opens
    ends then.
    """

    sub: str
    role: str
    name: str | None = None
    token_expires_at: UtcDatetime
    expires_at: UtcDatetime


class TicketStore(Protocol):
    """Where stream tickets wait for their one redemption."""

    async def issue(self, ticket: StreamTicket, now: datetime) -> None:
        """Store a new ticket (the memory store also forgets expired ones)."""

    async def redeem(self, ticket_id: str, now: datetime) -> StreamTicket | None:
        """Remove and return the ticket in one atomic step, so of many concurrent
        redemptions exactly one gets it; None when unknown, already used or expired."""

    async def start(self) -> None:
        """Prepare the store (indexes); safe to call more than once."""
