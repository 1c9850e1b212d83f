"""Public state of each entity: the ``data`` of events and the bodies the API returns.

Every model carries the entity's ``version``: it starts at 1 and grows by one on every
change, so a consumer can always tell a newer state from an older one.
"""

import unicodedata
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Final

from pydantic import AfterValidator, AwareDatetime, Field

from slotstream_contracts.ids import EntityId
from slotstream_contracts.models import WireModel

#: Unicode categories a display name may not contain: controls (``\n``, NUL, ESC),
#: format characters (bidi overrides such as U+202E, zero-width spaces), surrogates,
#: private-use and unassigned code points, and line/paragraph separators.
_REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
#: Format characters that scripts need inside words (Persian, Indic) and emoji sequences:
#: zero-width non-joiner and joiner. They cannot reorder or hide text.
_JOINERS: Final = frozenset({"\u200c", "\u200d"})


def _refuse_hidden(text: str, what: str, allowed: frozenset[str]) -> str:
    """Refuse (never rewrite) text that could spoof or break what others are shown:
    a refused request says what to fix; a silently changed text would surprise."""
    for char in text:
        if unicodedata.category(char) in _REFUSED_CATEGORIES and char not in allowed:
            raise ValueError(
                f"a {what} may not contain a control or format character (found U+{ord(char):04X})"
            )
    if not text.strip():
        raise ValueError(f"a {what} must contain a visible character")
    return text


def _printable_name(name: str) -> str:
    return _refuse_hidden(name, "name", _JOINERS)


def _printable_reason(reason: str) -> str:
    """As a name, but a reason may run over several lines."""
    return _refuse_hidden(reason, "reason", _JOINERS | {"\n"})


#: A person's name as shown to other users (instructor profiles, the JWT ``name``).
DisplayName = Annotated[str, Field(min_length=1, max_length=120), AfterValidator(_printable_name)]


class SlotStatus(StrEnum):
    AVAILABLE = "available"
    BOOKED = "booked"
    DELETED = "deleted"


class BookingStatus(StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"


class NotificationKind(StrEnum):
    BOOKING_CREATED = "booking.created"
    BOOKING_CANCELLED = "booking.cancelled"


class Audience(StrEnum):
    """In which role a user is told something: a student and an instructor may share an id
    and are still two people. A notification is stored with its audience; every record on
    the notifications topic carries it (``CloudEvent.audience``)."""

    STUDENT = "student"
    INSTRUCTOR = "instructor"


class InstructorData(WireModel):
    id: EntityId
    name: DisplayName
    timezone: str = Field(min_length=1, max_length=64)
    created_at: AwareDatetime


class SlotData(WireModel):
    id: EntityId
    instructor_id: EntityId
    start: AwareDatetime
    end: AwareDatetime
    status: SlotStatus
    booking_id: EntityId | None = None
    version: int = Field(ge=1)
    updated_at: AwareDatetime


#: Why an instructor or admin cancelled a booking, shown to the student.
CancelReason = Annotated[str, Field(min_length=1, max_length=300)]
#: A reason as a caller writes it: no controls or format characters but line breaks (a
#: stored reason is read as a plain ``CancelReason``, so none written before is refused).
WrittenCancelReason = Annotated[CancelReason, AfterValidator(_printable_reason)]


class BookingData(WireModel):
    """A booking. Private: it travels only on its student's and instructor's channels."""

    id: EntityId
    slot_id: EntityId
    instructor_id: EntityId
    student_id: EntityId
    student_name: DisplayName | None = None
    slot_start: AwareDatetime
    slot_end: AwareDatetime
    status: BookingStatus
    version: int = Field(ge=1)
    created_at: AwareDatetime
    cancelled_at: AwareDatetime | None = None
    cancel_reason: CancelReason | None = None


class NotificationData(WireModel):
    """A message to one user. ``message`` is English with UTC times; the structured fields
    (names, slot times, reason) let a client render it in the reader's language and zone."""

    id: EntityId
    user_id: EntityId
    kind: NotificationKind
    message: str = Field(max_length=500)
    booking_id: EntityId
    slot_id: EntityId
    instructor_name: DisplayName | None = None
    student_name: DisplayName | None = None
    slot_start: AwareDatetime | None = None
    slot_end: AwareDatetime | None = None
    cancelled_by: DisplayName | None = None
    reason: CancelReason | None = None
    read: bool = False
    version: int = Field(ge=1)
    created_at: AwareDatetime


class ScheduleSnapshot(WireModel):
    """An instructor's schedule for a time range, as served on connect and by the API.

    ``version`` is the high-water mark: the largest slot version in the snapshot. Deltas
    are merged per slot by comparing each slot's own ``version``.
    """

    instructor_id: EntityId
    range_start: AwareDatetime = Field(alias="from")
    range_end: AwareDatetime = Field(alias="to")
    slots: tuple[SlotData, ...]
    version: int = Field(ge=0)
    generated_at: datetime
