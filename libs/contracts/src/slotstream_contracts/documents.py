"""The stored shape of each collection's documents: the contract between the booking-api
(which writes them) and the change-publisher (which reads them from change streams).

Field names are the wire names (camelCase) so a document, a change event's
``fullDocument`` and an event's ``data`` read the same in ``mongosh`` and in Kafka.
"""

from datetime import UTC, datetime
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from slotstream_contracts.entities import (
    Audience,
    BookingData,
    BookingStatus,
    CancelReason,
    DisplayName,
    InstructorData,
    NotificationData,
    NotificationKind,
    SlotData,
    SlotStatus,
)
from slotstream_contracts.ids import EntityId

INSTRUCTORS: Final = "instructors"
SLOTS: Final = "slots"
BOOKINGS: Final = "bookings"
NOTIFICATIONS: Final = "notifications"


def _as_utc(value: datetime) -> datetime:
    """Mongo returns naive UTC datetimes unless the client is tz-aware; accept both.

    A date written as text with an offset can fall outside years 1-9999 in UTC
    (``9999-12-31T23:59:59-05:00``): ``astimezone`` then raises OverflowError, which
    pydantic does not turn into a validation error, so it is raised as a ValueError (the
    change-publisher dead-letters invalid documents; anything else stopped it)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError(f"{value.isoformat()} is outside years 1-9999 in UTC") from exc


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class StoredDocument(BaseModel):
    """Base of stored documents: ``_id`` on the wire, extra fields tolerated on read."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
        frozen=True,
    )

    id: EntityId = Field(alias="_id")

    def to_document(self) -> dict[str, Any]:
        """The dict to store (datetimes stay datetimes for BSON)."""
        return self.model_dump(mode="python", by_alias=True)


class InstructorDocument(StoredDocument):
    name: str
    timezone: str
    created_at: UtcDatetime

    def to_data(self) -> InstructorData:
        return InstructorData(
            id=self.id, name=self.name, timezone=self.timezone, created_at=self.created_at
        )


class SlotDocument(StoredDocument):
    instructor_id: EntityId
    start: UtcDatetime
    end: UtcDatetime
    status: SlotStatus
    booking_id: EntityId | None = None
    student_id: EntityId | None = None
    version: int
    created_at: UtcDatetime
    updated_at: UtcDatetime

    def to_data(self) -> SlotData:
        """Public state; the booking student's id stays private to the API."""
        return SlotData(
            id=self.id,
            instructor_id=self.instructor_id,
            start=self.start,
            end=self.end,
            status=self.status,
            booking_id=self.booking_id,
            version=self.version,
            updated_at=self.updated_at,
        )


class BookingDocument(StoredDocument):
    slot_id: EntityId
    instructor_id: EntityId
    student_id: EntityId
    student_name: DisplayName | None = None
    slot_start: UtcDatetime
    slot_end: UtcDatetime
    status: BookingStatus
    version: int
    created_at: UtcDatetime
    cancelled_at: UtcDatetime | None = None
    cancel_reason: CancelReason | None = None

    def to_data(self) -> BookingData:
        return BookingData.model_validate(self.model_dump(by_alias=False), by_name=True)


class NotificationDocument(StoredDocument):
    user_id: EntityId
    kind: NotificationKind
    message: str
    booking_id: EntityId
    slot_id: EntityId
    instructor_name: DisplayName | None = None
    student_name: DisplayName | None = None
    slot_start: UtcDatetime | None = None
    slot_end: UtcDatetime | None = None
    cancelled_by: DisplayName | None = None
    reason: CancelReason | None = None
    read: bool = False
    version: int
    created_at: UtcDatetime
    #: Not in the public model: its event carries it as ``CloudEvent.audience``. None on
    #: documents from before it existed, which every role of the user still sees.
    audience: Audience | None = None

    def to_data(self) -> NotificationData:
        return NotificationData.model_validate(
            self.model_dump(by_alias=False, exclude={"audience"}), by_name=True
        )
