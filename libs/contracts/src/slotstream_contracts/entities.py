"""Public state of each entity: the ``data`` of events and the bodies the API returns.

Every model carries the entity's ``version``: it starts at 1 and grows by one on every
change, so a consumer can always tell a newer state from an older one.
"""

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, Field

from slotstream_contracts.ids import EntityId
from slotstream_contracts.models import WireModel


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


class InstructorData(WireModel):
    id: EntityId
    name: str = Field(min_length=1, max_length=120)
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


#: A person's display name as the token named them (``name`` claim), for people to read.
DisplayName = Annotated[str, Field(min_length=1, max_length=120)]
#: Why an instructor or admin cancelled a booking, shown to the student.
CancelReason = Annotated[str, Field(min_length=1, max_length=300)]


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
