"""The CloudEvents 1.0 envelope (structured JSON mode) and Slotstream's event types.

One event on Kafka is one compact JSON object (no raw newlines, so it can be placed in an
SSE ``data:`` line unchanged), keyed by its routing key (instructor or user id) and with
the headers ``ce_type``, ``ce_id`` and ``content-type``.

A private event (a booking, a notification) names its reader's role in ``audience``: a
student and an instructor may share an id, and the notifications topic is keyed by the id
alone, so the gateway shows each private stream only the records of its reader's role.
Records written before the field existed carry none and are every role's.
"""

from enum import StrEnum
from typing import Any, Final, Literal

import orjson
from pydantic import AwareDatetime, Field, model_validator

from slotstream_contracts.entities import Audience, BookingData, NotificationData, SlotData
from slotstream_contracts.ids import EntityId
from slotstream_contracts.models import WireModel
from slotstream_contracts.topics import CONTROL_KEY, NOTIFICATIONS_TOPIC, SCHEDULE_TOPIC

CONTENT_TYPE: Final = "application/cloudevents+json"
SPEC_VERSION: Final = "1.0"
SOURCE: Final = "/slotstream/change-publisher"


class EventType(StrEnum):
    SLOT_CREATED = "slot.created"
    SLOT_UPDATED = "slot.updated"
    SLOT_DELETED = "slot.deleted"
    BOOKING_CREATED = "booking.created"
    BOOKING_CANCELLED = "booking.cancelled"
    NOTIFICATION_CREATED = "notification.created"
    STREAM_RESYNC = "stream.resync"

    @property
    def family(self) -> str:
        """The SSE event name: ``slot``, ``booking``, ``notification`` or ``stream``."""
        return self.value.split(".", 1)[0]


class ResyncData(WireModel):
    """Tells consumers that what they hold may be wrong: refetch state. ``reason`` is for
    people (logs, the page), not for branching: it starts with why, then ``: `` and detail.
    The change-publisher says ``history-lost`` (it restarted from a fresh copy: its change
    history was gone), ``collection-dropped``,
    ``collection-renamed`` or ``database-dropped`` (documents vanished or were replaced
    without a change each: a restore, a reload renamed over a collection)."""

    reason: str = Field(max_length=500)
    topic: str


EventData = SlotData | BookingData | NotificationData | ResyncData

DATA_MODELS: Final[dict[EventType, type[EventData]]] = {
    EventType.SLOT_CREATED: SlotData,
    EventType.SLOT_UPDATED: SlotData,
    EventType.SLOT_DELETED: SlotData,
    EventType.BOOKING_CREATED: BookingData,
    EventType.BOOKING_CANCELLED: BookingData,
    EventType.NOTIFICATION_CREATED: NotificationData,
    EventType.STREAM_RESYNC: ResyncData,
}


class CloudEvent(WireModel):
    """A Slotstream event. ``instructorid``/``userid``, ``version`` and ``audience`` are
    extensions; ``audience`` (last, so that the publisher appends it to bytes it shares
    between the records of one change) is set on private events only."""

    specversion: Literal["1.0"] = SPEC_VERSION
    id: str = Field(min_length=1, max_length=128)
    source: str = SOURCE
    type: EventType
    subject: str = Field(min_length=1, max_length=200)
    time: AwareDatetime
    datacontenttype: Literal["application/json"] = "application/json"
    instructorid: EntityId | None = None
    userid: EntityId | None = None
    version: int | None = Field(default=None, ge=1)
    data: EventData
    audience: Audience | None = None

    @model_validator(mode="after")
    def _data_matches_type(self) -> "CloudEvent":
        expected = DATA_MODELS[self.type]
        if not isinstance(self.data, expected):
            raise ValueError(f"{self.type.value} carries {expected.__name__} data")
        if self.audience is not None and self.type not in PRIVATE_TYPES:
            raise ValueError(f"{self.type.value} is public: it has no audience")
        return self

    @property
    def routing_key(self) -> str:
        """The (first) Kafka record key: orders every event of one instructor (or user)."""
        if self.type is EventType.NOTIFICATION_CREATED:
            assert self.userid is not None
            return self.userid
        if self.type is EventType.STREAM_RESYNC:
            return CONTROL_KEY
        if self.audience is Audience.STUDENT and isinstance(self.data, BookingData):
            return self.data.student_id
        assert self.instructorid is not None
        return self.instructorid

    @property
    def routing_keys(self) -> tuple[str, ...]:
        """Every record key the event is written with. A booking goes to two private
        channels, keyed by its instructor and by its student: as one event per audience,
        each keyed by its reader (a booking without an audience, written before audiences
        existed: the same event under both keys, once if they are one)."""
        key = self.routing_key
        data = self.data
        if isinstance(data, BookingData) and self.audience is None and data.student_id != key:
            return (key, data.student_id)
        return (key,)

    @property
    def topic(self) -> str:
        return topic_for(self.type)

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers, so CLI tools show what an event is without decoding it."""
        return [
            ("ce_type", self.type.value.encode()),
            ("ce_id", self.id.encode()),
            ("ce_subject", self.subject.encode()),
            ("content-type", CONTENT_TYPE.encode()),
        ]

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True))


#: Events for the people concerned only: the notifications topic feeds private channels.
#: Bookings name their student, so they never go to the public schedule topic.
PRIVATE_TYPES: Final = frozenset(
    {EventType.NOTIFICATION_CREATED, EventType.BOOKING_CREATED, EventType.BOOKING_CANCELLED}
)


def topic_for(event_type: EventType) -> str:
    if event_type in PRIVATE_TYPES:
        return NOTIFICATIONS_TOPIC
    return SCHEDULE_TOPIC


class EventDecodeError(ValueError):
    """Raised when bytes are not a valid Slotstream CloudEvent."""


def decode_event(raw: bytes | str) -> CloudEvent:
    """Parse one event, validating ``data`` against the model its ``type`` names."""
    try:
        obj: Any = orjson.loads(raw)
        if not isinstance(obj, dict):
            raise EventDecodeError("event is not a JSON object")
        event_type = EventType(str(obj.get("type")))
        data = DATA_MODELS[event_type].model_validate(obj.get("data"))
        return CloudEvent.model_validate({**obj, "data": data})
    except EventDecodeError:
        raise
    except (ValueError, TypeError) as exc:
        raise EventDecodeError(str(exc)) from exc
