"""Channel names: what a browser subscribes to, and how events and record keys map to them.

``instructors/{id}/schedule`` is public and carries slot events only;
``users/{id}/notifications`` is private to user ``id`` and carries that user's
notifications and bookings (as student or as instructor). A channel's events all live on
one topic, keyed by the id in the channel name, so the gateway can route a record by its
key alone, without decoding its value.
"""

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from slotstream_contracts.events import CloudEvent, EventType
from slotstream_contracts.ids import ID_PATTERN
from slotstream_contracts.topics import NOTIFICATIONS_TOPIC, SCHEDULE_TOPIC


class ChannelKind(StrEnum):
    SCHEDULE = "schedule"
    NOTIFICATIONS = "notifications"


_ID = ID_PATTERN.strip("^$")
_CHANNEL_RE: Final = re.compile(rf"^(instructors|users)/({_ID})/(schedule|notifications)$")
_PREFIX: Final = {ChannelKind.SCHEDULE: "instructors", ChannelKind.NOTIFICATIONS: "users"}
_TOPIC: Final = {
    ChannelKind.SCHEDULE: SCHEDULE_TOPIC,
    ChannelKind.NOTIFICATIONS: NOTIFICATIONS_TOPIC,
}
_KIND_OF_TOPIC: Final = {topic: kind for kind, topic in _TOPIC.items()}
#: The data events each kind of channel carries. Anything else found on its topic — a
#: booking written to the schedule topic by a publisher from before bookings were private —
#: is not delivered there.
EVENT_TYPES: Final[dict[ChannelKind, frozenset[EventType]]] = {
    ChannelKind.SCHEDULE: frozenset(
        {EventType.SLOT_CREATED, EventType.SLOT_UPDATED, EventType.SLOT_DELETED}
    ),
    ChannelKind.NOTIFICATIONS: frozenset(
        {EventType.NOTIFICATION_CREATED, EventType.BOOKING_CREATED, EventType.BOOKING_CANCELLED}
    ),
}


class ChannelError(ValueError):
    """A channel name that is malformed or names no known kind of channel."""


@dataclass(frozen=True, slots=True)
class Channel:
    kind: ChannelKind
    owner_id: str

    @property
    def name(self) -> str:
        return f"{_PREFIX[self.kind]}/{self.owner_id}/{self.kind.value}"

    @property
    def topic(self) -> str:
        return _TOPIC[self.kind]

    @property
    def record_key(self) -> bytes:
        """The Kafka key every event of this channel is written with."""
        return self.owner_id.encode()

    @property
    def is_private(self) -> bool:
        return self.kind is ChannelKind.NOTIFICATIONS

    def __str__(self) -> str:
        return self.name

    @classmethod
    def schedule(cls, instructor_id: str) -> "Channel":
        return cls.parse(f"instructors/{instructor_id}/schedule")

    @classmethod
    def notifications(cls, user_id: str) -> "Channel":
        return cls.parse(f"users/{user_id}/notifications")

    @classmethod
    def parse(cls, name: str) -> "Channel":
        match = _CHANNEL_RE.fullmatch(name)
        if match is None:
            raise ChannelError(
                f"unknown channel {name[:80]!r}: expected instructors/{{id}}/schedule "
                "or users/{id}/notifications"
            )
        prefix, owner, kind_name = match.groups()
        kind = ChannelKind(kind_name)
        if _PREFIX[kind] != prefix:
            raise ChannelError(f"unknown channel {name!r}: {prefix}/… has no {kind_name}")
        return cls(kind=kind, owner_id=owner)

    @classmethod
    def for_record(cls, topic: str, key: bytes) -> "Channel | None":
        """The channel of a Kafka record, from its topic and key; None for control records."""
        kind = _KIND_OF_TOPIC.get(topic)
        if kind is None:
            return None
        try:
            return cls.parse(f"{_PREFIX[kind]}/{key.decode()}/{kind.value}")
        except (UnicodeDecodeError, ChannelError):
            return None


def channels_for_event(event: CloudEvent) -> tuple[Channel, ...] | None:
    """Where an event is delivered; None for control events, which reach every channel.

    Slot events go to the instructor's public schedule; notifications and bookings only to
    the private channels of the users they concern (a booking names its student)."""
    if event.type is EventType.STREAM_RESYNC:
        return None
    if event.topic == SCHEDULE_TOPIC:
        return (Channel.schedule(event.routing_key),)
    return tuple(Channel.notifications(key) for key in event.routing_keys)
