"""Kafka topic names. The ``.v1`` suffix is the contract version of the records on them."""

from typing import Final

SCHEDULE_TOPIC: Final = "slotstream.schedule.v1"
NOTIFICATIONS_TOPIC: Final = "slotstream.notifications.v1"
DEADLETTER_TOPIC: Final = "slotstream.deadletter.v1"
PRESENCE_TOPIC: Final = "slotstream.presence.v1"

#: Record key of control events (such as ``stream.resync``) that are written to every
#: partition rather than routed by an entity key. Never a valid entity id.
CONTROL_KEY: Final = "~control"

DATA_TOPICS: Final = (SCHEDULE_TOPIC, NOTIFICATIONS_TOPIC)
