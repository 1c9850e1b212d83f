"""The booking service: the use cases, orchestrating the domain rules over the ports.

Partial failure, step by step (a store write can fail or time out at any point):

- Booking: (1) one compare-and-set on the slot, ``available → booked``. Only one caller
  can win; the losers get 409 naming the slot. If it fails, it may have been applied with
  only its reply lost, so the slot is read back: held for this booking, the booking goes
  on (a slot booked by no booking could never be booked, withdrawn or cancelled); else
  the error goes to the caller, nothing having changed; unknown (the slot cannot be read
  either), the error goes to the caller and ``booking.claim_unresolved`` is logged.
  (2) Insert the booking document (idempotent by booking id: a retried insert whose first
  attempt was applied succeeds).
  If that fails, the failure may be ambiguous — applied, with only the reply lost — so the
  booking is read back: present, the booking stands and is answered as made; known
  absent, the slot is released again (a compare-and-set on the booking id, so it cannot
  free someone else's booking) and the error goes to the caller, who may retry; unknown
  (the store cannot be read either), the slot stays held and ``booking.insert_unresolved``
  is logged: a slot booked without a booking blocks one slot until a retry finishes it
  or the repair frees it (below), a slot freed under an active booking would let a
  second student book it. (3) Insert the two notifications. They are best effort: a
  failure is logged and the booking stands (the schedule and the booking are the truth; a
  lost notification is an annoyance, not an inconsistency).
- Booking again with the same ``Idempotency-Key`` (the API runs a request again after a
  5xx: the first try may have stopped anywhere above). With a key the booking id is
  derived from the caller, the key and the slot, and the created-notifications' ids from
  the booking, so a try finds what an earlier one wrote: the booking stored → answered as
  made, with the notifications not yet written (none twice), or 409 ``booking-cancelled``
  if it was cancelled since (never booked again under that key); the slot held by this
  booking id but no booking → the slot is reclaimed (``updatedAt`` now, version + 1, so
  the repair leaves it alone) and the booking written (no bookability or quota check:
  they passed when the slot was claimed); else, or when the repair freed the slot first,
  as a first try. Two tries running at once (the idempotency record normally refuses the
  second) claim under one id: the loser of the claim finds the slot held by its own id
  and goes on, the loser of the insert answers the stored booking. Without a key every
  try has a fresh id, as before.
- Cancelling: (1) compare-and-set the booking ``active → cancelled``, (2) release the
  slot, (3) notifications. If (2) fails, the booking is cancelled but the slot still looks
  booked; cancelling again repeats (2) (``DELETE`` is idempotent and repairs), so a retry
  heals it, and the repair does if nobody retries. Cancelling first means a crash can
  never leave a free slot under an active booking (which would let a second student book
  it).
- Repair (``repair_slots``, run in the background by ``repair.SlotRepair``): a booked slot
  unchanged for the grace (longer than any booking request can still be running: the
  request timeout + 10 store timeouts + 5 s, enforced by the settings) whose booking id
  has no booking, or one cancelled as long ago, is released by a compare-and-set on its
  booking id and the version read, and logged as ``slot.repaired``. It never frees an
  active booking's slot, nor one that changed since it was read (booked again, reclaimed
  by a retry, freed by another replica), nor one a cancel under way is about to free.
- Slots: the store checks for overlaps and inserts as one atomic step across every
  process sharing it (MongoDB: a transaction that first writes a per-instructor guard
  document, so concurrent creations for one instructor conflict and are retried); a
  unique index on (instructor, start) of live slots also stops exact duplicates.
"""

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import structlog
from pydantic import ValidationError

from booking_api.domain import authz, bookings, repair, slots
from booking_api.domain.errors import Conflict, NotFound
from booking_api.domain.notifications import booking_notifications, notification_id
from booking_api.domain.repair import SlotCursor
from booking_api.ids import new_id
from booking_api.ports import DuplicateKey, Storage, UnreadableSlot, refusal
from slotstream_contracts.auth import Principal, Role
from slotstream_contracts.documents import (
    BookingDocument,
    InstructorDocument,
    NotificationDocument,
    SlotDocument,
)
from slotstream_contracts.entities import BookingStatus, NotificationKind, SlotStatus

log = structlog.get_logger("booking_api.service")
_stdlib_log = logging.getLogger("booking_api.service")


def _info(event: str, **fields: object) -> None:
    """Log at INFO only when enabled: structlog would render the event before the stdlib
    level check drops it, which costs the booking hot path for nothing."""
    if _stdlib_log.isEnabledFor(logging.INFO):
        log.info(event, **fields)


Clock = Callable[[], datetime]

#: Seconds before each read-back after a failed claim or booking insert (a blip passes
#: quickly).
BOOKING_READ_BACK_PAUSES = (0.0, 0.05, 0.25)

T = TypeVar("T")


async def _read_back(
    read: Callable[[], Coroutine[Any, Any, T]], failed: str, **context: str
) -> tuple[T] | None:
    """After a write that failed, maybe applied with only its reply lost: ``read`` tried
    after each of ``BOOKING_READ_BACK_PAUSES``, its first answer (in a 1-tuple: the answer
    itself may be None), or None when every try failed (each logged as ``failed``)."""
    for pause in BOOKING_READ_BACK_PAUSES:
        await asyncio.sleep(pause)
        try:
            return (await read(),)
        except Exception as exc:
            log.warning(failed, **context, error=repr(exc))
    return None


async def committed(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work``, which follows a commit, to its end even if the request is cancelled
    meanwhile (its timeout, or the client gone): cancelled now, it would be answered
    "retry" for an operation already done, and lose what ``work`` writes."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task


def _new_slot(instructor_id: str, window: slots.SlotWindow, now: datetime) -> SlotDocument:
    return SlotDocument(
        id=new_id(),
        instructor_id=instructor_id,
        start=window.start,
        end=window.end,
        status=SlotStatus.AVAILABLE,
        version=1,
        created_at=now,
        updated_at=now,
    )


@dataclass(frozen=True)
class RepairedSlot:
    slot_id: str
    booking_id: str
    why: repair.RepairReason


@dataclass(frozen=True)
class RepairBatch:
    """What one repair step freed, and where the next goes on (None: the scan reached the
    end of the booked slots, or had not begun, and starts again from now)."""

    repaired: list[RepairedSlot]
    next_after: SlotCursor | None
    #: the store error that ended the step early (the slots before it were looked at)
    error: Exception | None = None
    #: stored slots the model refused, or whose booking it refused: passed over
    unreadable: list[UnreadableSlot] = field(default_factory=list)


def utc_now() -> datetime:
    return datetime.now(UTC)


class BookingService:
    def __init__(self, storage: Storage, clock: Clock = utc_now) -> None:
        self._storage = storage
        self._clock = clock

    @property
    def storage(self) -> Storage:
        return self._storage

    def now(self) -> datetime:
        return slots.to_storage_time(self._clock())

    # Instructors

    async def create_instructor(
        self, principal: Principal, instructor_id: str | None, name: str, timezone: str
    ) -> InstructorDocument:
        if instructor_id is None:
            # An instructor's id is their user id; an admin creating one without an id
            # gets a fresh id (the instructor then needs a token with that ``sub``).
            instructor_id = new_id() if principal.role is Role.ADMIN else principal.user_id
        chosen = instructor_id
        authz.ensure_may_create_instructor(principal, chosen)
        instructor = InstructorDocument(
            id=chosen, name=name, timezone=timezone, created_at=self.now()
        )
        try:
            await self._storage.instructors.insert(instructor)
        except DuplicateKey:
            raise Conflict(f"instructor {chosen} already exists", instructorId=chosen) from None
        _info("instructor.created", instructor_id=chosen)
        return instructor

    async def list_instructors(self, limit: int) -> list[InstructorDocument]:
        return await self._storage.instructors.list(limit)

    async def get_instructor(self, instructor_id: str) -> InstructorDocument:
        instructor = await self._storage.instructors.get(instructor_id)
        if instructor is None:
            raise NotFound(f"instructor {instructor_id} does not exist")
        return instructor

    # Slots

    async def schedule(
        self, instructor_id: str, start: datetime | None, end: datetime | None
    ) -> tuple[datetime, datetime, list[SlotDocument]]:
        range_start, range_end = slots.schedule_window(start, end, self._clock())
        await self.get_instructor(instructor_id)
        found = await self._storage.slots.list_for_instructor(instructor_id, range_start, range_end)
        return range_start, range_end, found

    async def create_slot(
        self, principal: Principal, instructor_id: str, start: datetime, end: datetime
    ) -> SlotDocument:
        authz.ensure_may_edit_schedule(principal, instructor_id)
        now = self.now()
        window = slots.validate_slot_window(start, end, now)
        await self.get_instructor(instructor_id)
        slot = _new_slot(instructor_id, window, now)
        try:
            overlapping = await self._storage.slots.insert_unless_overlapping(slot)
        except DuplicateKey:
            # another writer's slot took this start after the overlap check: name it
            raise slots.naming_the_slot_in_the_way(
                f"instructor {instructor_id} already has a slot starting "
                f"{window.start.isoformat()}",
                await self._slot_in_the_way(instructor_id, [window]),
            ) from None
        slots.ensure_no_overlap(window, overlapping)
        _info("slot.created", slot_id=slot.id, instructor_id=instructor_id)
        return slot

    async def create_slots(
        self,
        principal: Principal,
        instructor_id: str,
        windows: Sequence[tuple[datetime, datetime]],
    ) -> list[SlotDocument]:
        """Add many slots at once, all or nothing: each follows the rules of one slot, none
        overlaps another of the batch or a live slot of the instructor."""
        authz.ensure_may_edit_schedule(principal, instructor_id)
        now = self.now()
        checked = slots.validate_batch(windows, now)
        await self.get_instructor(instructor_id)
        batch = [_new_slot(instructor_id, window, now) for window in checked]
        try:
            overlapping = await self._storage.slots.insert_many_unless_overlapping(
                instructor_id, batch
            )
        except DuplicateKey:
            raise slots.naming_the_slot_in_the_way(
                f"instructor {instructor_id} already has a slot starting at a time of the batch",
                await self._slot_in_the_way(instructor_id, checked),
            ) from None
        if overlapping:
            first = overlapping[0]
            window = next(w for w in checked if w.overlaps(first.start, first.end))
            slots.ensure_no_overlap(window, overlapping)
        _info("slots.created", count=len(batch), instructor_id=instructor_id)
        return batch

    async def move_slot(
        self,
        principal: Principal,
        slot_id: str,
        if_match: str | None,
        start: datetime | None,
        end: datetime | None,
    ) -> SlotDocument:
        """Give a free slot a new start and/or end, under the rules and the atomicity of
        creating one, from the version the caller saw (``If-Match``; read only once the
        caller may edit the schedule, so an outsider learns nothing from it)."""
        slot = await self._storage.slots.get(slot_id)
        if slot is None:
            raise NotFound(f"slot {slot_id} does not exist", slotId=slot_id)
        authz.ensure_may_edit_schedule(principal, slot.instructor_id)
        version = slots.if_match_version(if_match, slot.version)
        slots.ensure_movable(slot, version)
        now = self.now()
        window = slots.validate_slot_window(*slots.moved_window(slot, start, end), now)
        result = await self._storage.slots.move_unless_overlapping(
            slot_id, version, window.start, window.end, now
        )
        if result is None:  # booked, withdrawn or moved since the read above
            current = await self._storage.slots.get(slot_id)
            slots.ensure_movable(current or slot, version)
            raise slots.naming_the_slot_in_the_way(
                f"slot {slot_id} changed while moving it; reload and retry",
                await self._slot_in_the_way(slot.instructor_id, [window], besides=slot_id),
            )
        if isinstance(result, list):
            slots.ensure_no_overlap(window, result)
            raise Conflict(f"slot {slot_id} overlaps another slot")  # pragma: no cover
        _info("slot.moved", slot_id=slot_id, instructor_id=slot.instructor_id)
        return result

    async def _slot_in_the_way(
        self, instructor_id: str, windows: Sequence[slots.SlotWindow], besides: str | None = None
    ) -> SlotDocument | None:
        """After a write another writer overtook: the live slot now in the way of
        ``windows``, if one is (read once; ``None`` when it is gone again, or when the read
        fails: the answer is the ``409`` either way, without the slot's members, not a
        ``503`` for a write that was refused for a reason already known)."""
        span_start = min(w.start for w in windows)
        span_end = max(w.end for w in windows)
        try:
            live = await self._storage.slots.list_for_instructor(
                instructor_id, span_start, span_end
            )
        except Exception as exc:  # noqa: BLE001 - best effort: only the 409's members
            log.warning("slot.in_the_way_unread", instructor_id=instructor_id, error=repr(exc))
            return None
        return slots.in_the_way(windows, live, besides)

    async def delete_slot(self, principal: Principal, slot_id: str) -> SlotDocument:
        """Withdraw a slot: a tombstone (``deleted``, version + 1), never a hard delete."""
        slot = await self._storage.slots.get(slot_id)
        if slot is None:
            raise NotFound(f"slot {slot_id} does not exist", slotId=slot_id)
        authz.ensure_may_edit_schedule(principal, slot.instructor_id)
        if slot.status is SlotStatus.DELETED:
            return slot
        slots.ensure_deletable(slot)
        deleted = await self._storage.slots.mark_deleted(slot_id, self.now())
        if deleted is None:
            current = await self._storage.slots.get(slot_id)
            if current is not None and current.status is SlotStatus.DELETED:
                return current
            raise Conflict(f"slot {slot_id} was just booked; cancel the booking first")
        _info("slot.deleted", slot_id=slot_id, instructor_id=slot.instructor_id)
        return deleted

    # Bookings

    async def book(
        self,
        principal: Principal,
        slot_id: str,
        max_active_bookings: int,
        idempotency_key: str | None = None,
    ) -> BookingDocument:
        """Book ``slot_id`` for the caller, who may hold at most ``max_active_bookings``
        active bookings. With an ``idempotency_key`` the booking id is derived from it, so
        a try finishes what an earlier try of the same request started (module doc)."""
        authz.ensure_may_book(principal)
        now = self.now()
        if idempotency_key is None:
            booking_id = new_id()
        else:
            booking_id = bookings.keyed_booking_id(principal, slot_id, idempotency_key)
            earlier = await self._storage.bookings.get(booking_id)
            if earlier is not None:
                return await self._made_earlier(earlier)
        slot = await self._storage.slots.get(slot_id)
        booked = None
        if bookings.held_by(slot, booking_id):
            # An earlier try claimed the slot (it passed the checks then) and did not store
            # the booking, or could not tell: finish it, the slot first marked as in use
            # (so the repair, which frees it from the version it read, cannot meanwhile).
            booked = await self._storage.slots.reclaim(slot_id, booking_id, now)
            if booked is None:  # freed by the repair since: book it as a first try would
                slot = await self._storage.slots.get(slot_id)
            else:
                log.warning("booking.resumed", slot_id=slot_id, booking_id=booking_id)
        if booked is None:
            bookings.ensure_bookable(slot, slot_id, now)
            limit = max_active_bookings
            active = await self._storage.bookings.count_active_for_student(
                principal.user_id, limit, now
            )
            bookings.ensure_within_quota(active, limit)
            booked = await self._claim(slot_id, booking_id, principal.user_id, now)
        # The slot as claimed, not as first read: it may have moved in between.
        booking = await self._store(
            BookingDocument(
                id=booking_id,
                slot_id=slot_id,
                instructor_id=booked.instructor_id,
                student_id=principal.user_id,
                student_name=principal.name,
                slot_start=booked.start,
                slot_end=booked.end,
                status=BookingStatus.ACTIVE,
                version=1,
                created_at=now,
            )
        )
        _info("booking.created", booking_id=booking_id, slot_id=slot_id)
        keyed = idempotency_key is not None
        await committed(self._notify(booking, NotificationKind.BOOKING_CREATED, None, keyed))
        return booking

    async def _made_earlier(self, booking: BookingDocument) -> BookingDocument:
        """An earlier try of this request stored ``booking``: answered as made, with the
        notifications that try did not write (their ids are derived: none twice); unless
        it was cancelled since, which is not undone."""
        bookings.ensure_not_cancelled_since(booking)
        _info("booking.found_again", booking_id=booking.id, slot_id=booking.slot_id)
        await committed(self._notify(booking, NotificationKind.BOOKING_CREATED, None, True))
        return booking

    async def _claim(
        self, slot_id: str, booking_id: str, student_id: str, now: datetime
    ) -> SlotDocument:
        """Book the slot for ``booking_id`` (compare-and-set ``available → booked``): the
        slot as booked, or the error for the caller."""
        try:
            booked = await self._storage.slots.book(slot_id, booking_id, student_id, now)
        except BaseException as exc:
            booked = await asyncio.shield(self._claimed(slot_id, booking_id))
            if booked is None:
                raise
            # Applied, only the reply lost (or the request timed out after it): the slot
            # is this booking's, which must now exist.
            log.warning(
                "booking.claim_reply_lost", slot_id=slot_id, booking_id=booking_id, error=repr(exc)
            )
        if booked is None:
            current = await self._storage.slots.get(slot_id)
            if not bookings.held_by(current, booking_id):
                raise bookings.lost_race(current, slot_id)
            # Won by a concurrent try of the same request (same key, same booking id).
            booked = current
        return booked

    async def _store(self, booking: BookingDocument) -> BookingDocument:
        """Insert the booking of a claimed slot: the booking as stored, or the error for
        the caller (the slot released again when the booking is known not stored)."""
        booking_id, slot_id = booking.id, booking.slot_id
        try:
            await self._storage.bookings.insert(booking)
        except BaseException as exc:
            read = await asyncio.shield(
                _read_back(
                    lambda: self._storage.bookings.get(booking_id),
                    "booking.read_back_failed",
                    booking_id=booking_id,
                )
            )
            if read is None:
                log.error("booking.insert_unresolved", slot_id=slot_id, booking_id=booking_id)
                raise
            (stored,) = read
            if stored is None:
                # Compensate: never leave the slot booked without a booking document.
                await asyncio.shield(self._storage.slots.release(slot_id, booking_id, self.now()))
                log.warning("booking.compensated", slot_id=slot_id, booking_id=booking_id)
                raise
            # Stored: the booking stands whether the insert failed or was cancelled (request
            # timeout) after it was applied, and is answered as made; or a concurrent try of
            # the same request stored it first (same id, its own creation time).
            log.warning(
                "booking.insert_reply_lost",
                slot_id=slot_id,
                booking_id=booking_id,
                error=repr(exc),
            )
            return stored
        return booking

    async def _claimed(self, slot_id: str, booking_id: str) -> SlotDocument | None:
        """After a failed claim: the slot if the claim was applied (booked by
        ``booking_id``), else ``None``; also ``None``, logged, when every read-back failed
        (the slot may then be held by a booking that does not exist until repaired)."""
        read = await _read_back(
            lambda: self._storage.slots.get(slot_id),
            "booking.claim_read_back_failed",
            slot_id=slot_id,
        )
        if read is None:
            log.error("booking.claim_unresolved", slot_id=slot_id, booking_id=booking_id)
            return None
        (slot,) = read
        return slot if bookings.held_by(slot, booking_id) else None

    async def cancel(
        self, principal: Principal, booking_id: str, reason: str | None = None
    ) -> BookingDocument:
        """Cancel a booking and free its slot. Idempotent: cancelling a cancelled booking
        returns it and re-attempts freeing the slot (which repairs an interrupted cancel).
        ``reason`` (from the instructor or an admin) reaches the student's notification."""
        booking = await self._storage.bookings.get(booking_id)
        if booking is None:
            raise NotFound(f"booking {booking_id} does not exist")
        authz.ensure_may_cancel(principal, booking)
        cancelled = await self._storage.bookings.cancel(booking_id, self.now(), reason)
        if cancelled is None:
            current = await self._storage.bookings.get(booking_id)
            if current is None:
                raise NotFound(f"booking {booking_id} does not exist")
            await self._storage.slots.release(current.slot_id, booking_id, self.now())
            return current
        await self._storage.slots.release(booking.slot_id, booking_id, self.now())
        _info("booking.cancelled", booking_id=booking_id, by=principal.user_id)
        by = None
        if not authz.is_student_of(principal, booking):
            own = authz.is_instructor_of(principal, booking)
            by = principal.name or ("the instructor" if own else "an admin")
        await committed(self._notify(cancelled, NotificationKind.BOOKING_CANCELLED, by))
        return cancelled

    # Repair

    async def repair_slots(
        self, after: SlotCursor | None, grace: timedelta, limit: int
    ) -> RepairBatch:
        """Free the slots of the next ``limit`` booked ones (from ``after``; None: from
        now on, slots that started cannot be booked any more) that have not changed for
        ``grace`` and are held by a booking that does not exist or is cancelled. Each is
        released from the version read (a compare-and-set on the booking id and that
        version): never one booked again, resumed, or freed by another replica since."""
        now = self.now()
        stale_before = now - grace
        start = after or SlotCursor(now, "")
        found = await self._storage.slots.list_booked_after(start, stale_before, limit)
        repaired: list[RepairedSlot] = []
        unreadable: list[UnreadableSlot] = []
        done = after
        for slot in found:
            if isinstance(slot, UnreadableSlot):  # reported; the scan goes on after it
                unreadable.append(slot)
                done = SlotCursor(slot.start, slot.slot_id)
                continue
            try:
                freed = await self._repair_slot(slot, stale_before, now)
            except Exception as exc:
                # What was freed stays freed (and is reported); the next step goes on here.
                return RepairBatch(repaired, done, error=exc, unreadable=unreadable)
            if isinstance(freed, UnreadableSlot):  # its booking: reported, slot left held
                unreadable.append(freed)
            elif freed is not None:
                repaired.append(freed)
            done = SlotCursor(slot.start, slot.id)
        return RepairBatch(repaired, done if len(found) == limit else None, unreadable=unreadable)

    async def _repair_slot(
        self, slot: SlotDocument, stale_before: datetime, now: datetime
    ) -> RepairedSlot | UnreadableSlot | None:
        """The slot freed, or None; an :class:`UnreadableSlot` when its booking document is
        one the model refuses: whether that booking is active cannot be told, so the slot
        stays held, and the scan goes on after it (it would fail there every run)."""
        if slot.booking_id is None:
            return None
        try:
            booking = await self._storage.bookings.get(slot.booking_id)
        except ValidationError as exc:
            return UnreadableSlot(slot.id, slot.start, f"booking {slot.booking_id}: {refusal(exc)}")
        why = repair.why_repair(slot, booking, stale_before)
        if why is None:
            return None
        released = await self._storage.slots.release(slot.id, slot.booking_id, now, slot.version)
        if released is None:  # changed since it was read: not stale any more
            return None
        log.warning("slot.repaired", slot_id=slot.id, booking_id=slot.booking_id, why=why.value)
        return RepairedSlot(slot.id, slot.booking_id, why)

    async def bookings_of(self, principal: Principal, limit: int) -> list[BookingDocument]:
        """An instructor's are the bookings of their slots; anyone else's (students, and
        admins, who book as themselves) the bookings they made."""
        if principal.role is Role.INSTRUCTOR:
            return await self._storage.bookings.list_for_instructor(principal.user_id, limit)
        return await self._storage.bookings.list_for_student(principal.user_id, limit)

    async def bookings_for_instructor(
        self, principal: Principal, instructor_id: str, limit: int
    ) -> list[BookingDocument]:
        """The bookings of an instructor's slots, newest first (who booked what)."""
        authz.ensure_may_see_bookings_of(principal, instructor_id)
        await self.get_instructor(instructor_id)
        return await self._storage.bookings.list_for_instructor(instructor_id, limit)

    # Notifications

    async def notifications_of(
        self, principal: Principal, limit: int, unread_only: bool
    ) -> list[NotificationDocument]:
        return await self._storage.notifications.list_for_user(
            principal.user_id,
            limit,
            unread_only,
            audience=authz.audience_of(principal),
            now=self.now(),
        )

    async def mark_read(self, principal: Principal, notification_id: str) -> NotificationDocument:
        note = await self._storage.notifications.mark_read(
            notification_id, principal.user_id, audience=authz.audience_of(principal)
        )
        if note is None:
            raise NotFound(f"notification {notification_id} does not exist")
        return note

    async def _notify(
        self,
        booking: BookingDocument,
        kind: NotificationKind,
        cancelled_by: str | None,
        keyed: bool = False,
    ) -> None:
        """Tell the instructor and the student, best effort. ``keyed``: the booking was
        made with an ``Idempotency-Key``, so the ids are derived from it and a note an
        earlier try wrote is not written again."""
        now = self.now()
        try:
            instructor = await self._storage.instructors.get(booking.instructor_id)
        except Exception:  # best effort, as the notifications themselves
            instructor = None
        instructor_name = None if instructor is None else instructor.name
        for draft in booking_notifications(booking, kind, instructor_name, cancelled_by):
            note = NotificationDocument(
                id=notification_id(booking, draft) if keyed else new_id(),
                user_id=draft.user_id,
                kind=draft.kind,
                message=draft.message,
                audience=draft.audience,
                booking_id=booking.id,
                slot_id=booking.slot_id,
                instructor_name=instructor_name,
                student_name=booking.student_name,
                slot_start=booking.slot_start,
                slot_end=booking.slot_end,
                cancelled_by=cancelled_by,
                reason=booking.cancel_reason,
                version=1,
                created_at=now,
            )
            try:
                await self._storage.notifications.insert(note)
            except DuplicateKey:
                continue  # written by an earlier try of the same request
            except Exception:
                log.exception("notification.failed", booking_id=booking.id, user_id=draft.user_id)
