"""What goes to Kafka: topic routing and the encoding of events and dead letters."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Final, NamedTuple

import orjson
from pydantic import ConfigDict, Field

from change_publisher.domain.mapping import SHAPES, Publish
from slotstream_contracts.changes import ChangeEvent
from slotstream_contracts.entities import Audience
from slotstream_contracts.events import CONTENT_TYPE, SOURCE, SPEC_VERSION, CloudEvent, EventType
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
    """The value of a record on the dead-letter topic: why, and the change as it came.

    BSON binary (``bytes``, ``Binary``: a UUID another driver stored as subtype 4, say) is
    written as hex: it is seldom UTF-8, and pydantic's default (bytes as UTF-8 text) fails
    on it, which would leave the change that holds it on the stream forever."""

    model_config = ConfigDict(ser_json_bytes="hex")

    error: str = Field(max_length=4000)
    event_id: str
    collection: str | None
    operation_type: str
    publisher: str
    failed_at: datetime
    change: dict[str, Any]


class _Layout(NamedTuple):
    """How ``encode_records`` writes the event of one stored document class."""

    subject_prefix: str
    routing_field: str
    extension: str
    #: (attribute, wire name) of each field of the public model, in serialisation order.
    data_fields: tuple[tuple[str, str], ...]


_LAYOUTS: Final = {
    document: _Layout(
        shape.subject_prefix,
        shape.routing_field,
        shape.extension,
        tuple(
            (name, field.serialization_alias or field.alias or name)
            for name, field in shape.data.model_fields.items()
        ),
    )
    for document, shape in SHAPES.items()
}


def encode_records(publish: Publish, topic: str, epoch: int) -> tuple[OutgoingRecord, ...]:
    """The records of an event, one per ``publish.recipients`` (a booking: its instructor
    and its student), in that order: each keyed by its reader, with
    ``CloudEvent.headers()`` plus the epoch, and the bytes of
    ``publish.event_for(audience).to_json()``.

    The hot path (once per event): the JSON is written by orjson straight from the
    validated document's values, without building the CloudEvent and its data model; the
    records of one event share everything but their key and the ``audience`` written last.
    A Hypothesis property test holds the bytes identical; a value orjson cannot write (an
    integer beyond 64 bits, which ``to_json()`` refuses too) takes pydantic-core's
    serialiser of the model."""
    document = publish.document
    values = document.__dict__
    layout = _LAYOUTS[type(document)]
    subject = layout.subject_prefix + values["id"]
    kind, ce_type = _KINDS[publish.type]
    event: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": publish.id,
        "source": SOURCE,
        "type": kind,
        "subject": subject,
        "time": publish.time,
        "datacontenttype": "application/json",
        # CloudEvent field order: instructorid, userid (one of them is set), version, data,
        # audience (private events: set per record below).
        layout.extension: values[layout.routing_field],
        "version": values["version"],
        "data": {
            alias: field
            for name, alias in layout.data_fields
            if (field := values[name]) is not None
        },
    }
    headers = [
        ce_type,
        ("ce_id", publish.id.encode()),
        ("ce_subject", subject.encode()),
        _CONTENT_TYPE_HEADER,
        _epoch_header(epoch),
    ]
    recipients = publish.recipients
    key, audience = recipients[0]
    record = OutgoingRecord(topic, key.encode(), _value(publish, event, audience), headers, kind)
    if len(recipients) == 1:
        return (record,)
    return (
        record,
        *(
            OutgoingRecord(topic, key.encode(), _value(publish, event, audience), headers, kind)
            for key, audience in recipients[1:]
        ),
    )


def _value(publish: Publish, event: dict[str, Any], audience: Audience | None) -> bytes:
    """The bytes of ``event`` (a record's CloudEvent as a dict) for ``audience``."""
    if audience is not None:
        event["audience"] = audience  # orjson writes a StrEnum as its value
    try:
        return orjson.dumps(event, option=orjson.OPT_UTC_Z)
    except orjson.JSONEncodeError:
        return _EVENT_SERIALIZER.to_json(publish.event_for(audience), exclude_none=True)


_EVENT_SERIALIZER: Final = CloudEvent.__pydantic_serializer__
# Headers that repeat from record to record are shared, not made per record.
_CONTENT_TYPE_HEADER: Final = ("content-type", CONTENT_TYPE.encode())
#: Event type → (metric label, ``ce_type`` header): ``EventType.value`` is a slow property.
_KINDS: Final = {kind: (kind.value, ("ce_type", kind.value.encode())) for kind in EventType}


@lru_cache(maxsize=16)
def _epoch_header(epoch: int) -> tuple[str, bytes]:
    return (EPOCH_HEADER, str(epoch).encode())


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
