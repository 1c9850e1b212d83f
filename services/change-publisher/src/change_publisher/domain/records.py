"""What goes to Kafka: topic routing and the encoding of events and dead letters."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Final, NamedTuple

from pydantic import Field

from slotstream_contracts.changes import ChangeEvent
from slotstream_contracts.events import CloudEvent
from slotstream_contracts.models import WireModel
from slotstream_contracts.topics import CONTROL_KEY

#: Header naming the lease epoch of the leader that produced a record (diagnostics: after a
#: handover the epochs seen in one partition never go back).
EPOCH_HEADER: Final = "publisher_epoch"
DEADLETTER_TYPE: Final = "deadletter"


class OutgoingRecord(NamedTuple):
    """One Kafka record. A named tuple: built once per event, it must be cheap to make."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    #: Metric label: the CloudEvent type, or ``deadletter``.
    kind: str
    #: Set only for control events written to every partition.
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class Router:
    """Collection → topic, from settings (``PUBLISHER_TOPIC_MAP``)."""

    topics: Mapping[str, str]
    deadletter: str
    data_topics: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_topics", tuple(dict.fromkeys(self.topics.values())))

    def topic_for(self, collection: str) -> str | None:
        return self.topics.get(collection)


class DeadLetterRecord(WireModel):
    """The value of a record on the dead-letter topic: why, and the change as it came."""

    error: str = Field(max_length=4000)
    event_id: str
    collection: str | None
    operation_type: str
    publisher: str
    failed_at: datetime
    change: dict[str, Any]


_EVENT_SERIALIZER: Final = CloudEvent.__pydantic_serializer__


def event_json(event: CloudEvent) -> bytes:
    """The same bytes as ``event.to_json()`` (a unit test holds them equal), serialised in
    one pass by pydantic-core instead of building a dict and encoding it again: this runs
    once per event on the hot path."""
    value: bytes = _EVENT_SERIALIZER.to_json(event, exclude_none=True)
    return value


def encode_event(event: CloudEvent, topic: str, epoch: int) -> OutgoingRecord:
    headers = event.headers()
    headers.append((EPOCH_HEADER, _epoch_bytes(epoch)))
    return OutgoingRecord(
        topic=topic,
        key=event.routing_key.encode(),
        value=event_json(event),
        headers=headers,
        kind=headers[0][1].decode(),
    )


@lru_cache(maxsize=16)
def _epoch_bytes(epoch: int) -> bytes:
    return str(epoch).encode()


def encode_control(event: CloudEvent, topic: str, partition: int, epoch: int) -> OutgoingRecord:
    return OutgoingRecord(
        topic=topic,
        key=CONTROL_KEY.encode(),
        value=event.to_json(),
        headers=[*event.headers(), (EPOCH_HEADER, str(epoch).encode())],
        kind=event.type.value,
        partition=partition,
    )


def encode_dead_letter(
    record: DeadLetterRecord, key: str, topic: str, epoch: int
) -> OutgoingRecord:
    return OutgoingRecord(
        topic=topic,
        key=key.encode(),
        # Documents edited by hand may hold BSON types (ObjectId, Decimal128): keep them as
        # text rather than failing to dead-letter the change that holds them.
        value=record.model_dump_json(fallback=str).encode(),
        headers=[
            ("ce_id", record.event_id.encode()),
            ("dlq_error", record.error[:200].encode()),
            ("content-type", b"application/json"),
            (EPOCH_HEADER, str(epoch).encode()),
        ],
        kind=DEADLETTER_TYPE,
    )


_DOCUMENT_FIELDS: Final = frozenset(
    {"full_document", "full_document_before_change", "update_description"}
)


def dead_letter_of_change(
    change: ChangeEvent,
    error: str,
    event_id: str,
    publisher: str,
    now: datetime,
    *,
    with_documents: bool = True,
) -> DeadLetterRecord:
    """``with_documents=False`` keeps only the change's metadata (token, namespace, key):
    for changes too large to produce even as a dead letter."""
    return DeadLetterRecord(
        error=error[:4000],
        event_id=event_id,
        collection=change.ns.coll,
        operation_type=change.operation_type.value,
        publisher=publisher,
        failed_at=now,
        change=change.model_dump(
            mode="python", by_alias=True, exclude=None if with_documents else set(_DOCUMENT_FIELDS)
        ),
    )


def dead_letter_of_document(
    collection: str, document: Mapping[str, Any], error: str, publisher: str, now: datetime
) -> DeadLetterRecord:
    """A snapshot document that cannot be mapped."""
    return DeadLetterRecord(
        error=error[:4000],
        event_id=f"snapshot/{collection}/{document.get('_id')}",
        collection=collection,
        operation_type="snapshot",
        publisher=publisher,
        failed_at=now,
        change={"fullDocument": dict(document)},
    )
