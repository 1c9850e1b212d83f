"""Slot rules: a slot is a bounded, time-zone explicit window in an instructor's schedule."""

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from booking_api.domain.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    PreconditionRequired,
)
from slotstream_contracts.documents import SlotDocument
from slotstream_contracts.entities import SlotStatus

MIN_SLOT_LENGTH = timedelta(minutes=5)
MAX_SLOT_LENGTH = timedelta(hours=8)
MAX_HORIZON = timedelta(days=180)
#: Schedule reads: default window around now and the widest window one request may ask for.
DEFAULT_WINDOW_BEFORE = timedelta(days=1)
DEFAULT_WINDOW_AFTER = timedelta(days=28)
MAX_WINDOW = timedelta(days=62)
#: Slots one batch creation may hold (a week of 8-hour days in 15-minute slots is 224).
MAX_BATCH = 200


def to_storage_time(value: datetime) -> datetime:
    """UTC, truncated to whole milliseconds: what BSON keeps, so both backends agree."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise _outside_the_calendar(value) from None
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


def shifted(value: datetime, delta: timedelta) -> datetime:
    """``value + delta``; a result past year 9999 (or before year 1) is the caller's
    request breaking a rule, not a server error."""
    try:
        return value + delta
    except OverflowError:
        raise _outside_the_calendar(value, delta) from None


def _outside_the_calendar(value: datetime, delta: timedelta | None = None) -> InvalidRequest:
    moved = "" if delta is None else f" moved by {delta}"
    return InvalidRequest(f"{value.isoformat()}{moved} is outside the calendar (years 1 to 9999)")


@dataclass(frozen=True, slots=True)
class SlotWindow:
    start: datetime
    end: datetime

    def overlaps(self, start: datetime, end: datetime) -> bool:
        """Half-open intervals: a slot ending at 10:00 does not overlap one starting at 10:00."""
        return self.start < end and start < self.end


def validate_slot_window(start: datetime, end: datetime, now: datetime) -> SlotWindow:
    """Check a requested slot against the length and horizon rules; return it in UTC."""
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidRequest("start and end need an explicit UTC offset (ISO 8601, e.g. +02:00)")
    window = SlotWindow(to_storage_time(start), to_storage_time(end))
    if window.start >= window.end:
        raise InvalidRequest("start must be before end")
    length = window.end - window.start
    if length < MIN_SLOT_LENGTH:
        raise InvalidRequest(f"a slot lasts at least {_minutes(MIN_SLOT_LENGTH)} minutes")
    if length > MAX_SLOT_LENGTH:
        raise InvalidRequest(f"a slot lasts at most {_minutes(MAX_SLOT_LENGTH)} minutes")
    if window.start < now:
        raise InvalidRequest("a slot cannot start in the past")
    if window.start > now + MAX_HORIZON:
        raise InvalidRequest(f"a slot starts at most {MAX_HORIZON.days} days ahead")
    return window


def ensure_no_overlap(window: SlotWindow, existing: Iterable[SlotDocument]) -> None:
    """Raise ``Conflict`` naming the first live slot the new window would overlap: in
    ``detail`` and as members of their own (``slotId``, ``slotStart``, ``slotEnd``), from
    which a client words it in its viewer's time zone without holding that slot."""
    slot = in_the_way([window], existing)
    if slot is not None:
        raise naming_the_slot_in_the_way(
            f"the slot overlaps slot {slot.id} "
            f"({slot.start.isoformat()} to {slot.end.isoformat()})",
            slot,
        )


def in_the_way(
    windows: Iterable[SlotWindow], existing: Iterable[SlotDocument], besides: str | None = None
) -> SlotDocument | None:
    """The first live slot of ``existing`` (other than ``besides``) one of ``windows``
    overlaps, or ``None``."""
    wanted = list(windows)
    return next(
        (
            slot
            for slot in existing
            if slot.status is not SlotStatus.DELETED
            and slot.id != besides
            and any(w.overlaps(slot.start, slot.end) for w in wanted)
        ),
        None,
    )


def naming_the_slot_in_the_way(detail: str, slot: SlotDocument | None) -> Conflict:
    """A ``409`` whose members name the slot in the way, when it is known."""
    if slot is None:
        return Conflict(detail)
    return Conflict(detail, slotId=slot.id, slotStart=slot.start, slotEnd=slot.end)


def moved_window(
    slot: SlotDocument, start: datetime | None, end: datetime | None
) -> tuple[datetime, datetime]:
    """The window a move asks for: a new start alone keeps the length; a new end alone
    changes the length; both set both."""
    if start is None and end is None:
        raise InvalidRequest("a move needs a new start, a new end, or both")
    if start is None:
        return slot.start, end if end is not None else slot.end
    return start, end if end is not None else shifted(start, slot.end - slot.start)


#: a slot's ETag: its version in quotes (ASCII digits only: ``str.isdigit`` takes "²")
_ETAG = re.compile(r'"([0-9]{1,18})"')


def if_match_version(if_match: str | None, current: int) -> int:
    """The slot version ``If-Match`` names: ``"<version>"`` (the slot's ETag), or ``*``
    (whatever is current). Anything else can never match."""
    if if_match is None:
        raise PreconditionRequired("moving a slot needs If-Match with the slot's ETag")
    tag = if_match.strip()
    if tag == "*":
        return current
    if etag := _ETAG.fullmatch(tag):
        return int(etag.group(1))
    raise PreconditionFailed(f'If-Match {tag[:40]!r} is not a slot ETag (e.g. "3")')


def ensure_movable(slot: SlotDocument, version: int) -> None:
    """Only a free slot moves (a booked one has a student counting on its time), and only
    from the version the caller saw."""
    if slot.status is SlotStatus.DELETED:
        raise NotFound(f"slot {slot.id} was withdrawn", slotId=slot.id)
    if slot.status is SlotStatus.BOOKED:
        raise Conflict(
            f"slot {slot.id} is booked; only free slots move (cancel booking {slot.booking_id})",
            slotId=slot.id,
        )
    if slot.version != version:
        raise PreconditionFailed(
            f"slot {slot.id} is at version {slot.version}, not {version}; reload and retry",
            slotId=slot.id,
            version=slot.version,
        )


def validate_batch(windows: Sequence[tuple[datetime, datetime]], now: datetime) -> list[SlotWindow]:
    """Every window of a batch checked as for one slot, then against each other (half-open,
    so back-to-back slots are fine), ordered by start."""
    if not 1 <= len(windows) <= MAX_BATCH:
        raise InvalidRequest(f"a batch holds 1 to {MAX_BATCH} slots")
    checked = sorted(
        (validate_slot_window(start, end, now) for start, end in windows), key=lambda w: w.start
    )
    for earlier, later in itertools.pairwise(checked):
        if later.start < earlier.end:
            raise InvalidRequest(
                f"two slots of the batch overlap: {earlier.start.isoformat()} to "
                f"{earlier.end.isoformat()} and {later.start.isoformat()} to "
                f"{later.end.isoformat()}"
            )
    return checked


def schedule_window(
    start: datetime | None, end: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """The range a schedule read covers: defaults around now, bounded width."""
    if (start is not None and start.tzinfo is None) or (end is not None and end.tzinfo is None):
        raise InvalidRequest("from and to need an explicit UTC offset (ISO 8601)")
    default_width = DEFAULT_WINDOW_BEFORE + DEFAULT_WINDOW_AFTER
    if start is None and end is None:
        range_start, range_end = now - DEFAULT_WINDOW_BEFORE, now + DEFAULT_WINDOW_AFTER
    elif start is None:
        assert end is not None
        range_start, range_end = shifted(end, -default_width), end
    elif end is None:
        range_start, range_end = start, shifted(start, default_width)
    else:
        range_start, range_end = start, end
    range_start, range_end = to_storage_time(range_start), to_storage_time(range_end)
    if range_start >= range_end:
        raise InvalidRequest("from must be before to")
    if range_end - range_start > MAX_WINDOW:
        raise InvalidRequest(f"a schedule window spans at most {MAX_WINDOW.days} days")
    return range_start, range_end


def ensure_deletable(slot: SlotDocument) -> None:
    """A booked slot is not withdrawn under a student: the booking is cancelled first."""
    if slot.status is SlotStatus.BOOKED:
        raise Conflict(
            f"slot {slot.id} is booked; cancel booking {slot.booking_id} first", slotId=slot.id
        )


def _minutes(value: timedelta) -> int:
    return int(value.total_seconds() // 60)
