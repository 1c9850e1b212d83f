"""Server-Sent Events framing.

A data frame is ``id:``, ``event:`` and a single ``data:`` line. Event payloads are compact
JSON (CloudEvents as stored in Kafka, or gateway-built objects), so the only thing that could
break a frame is a raw ``\\n`` or ``\\r`` in the bytes; JSON encoding escapes those inside
strings, and a payload that still contains one is refused rather than sent. A record's value
is sent as it is only when it is a UTF-8 JSON object (:func:`framable`).
"""

from typing import Any, Final, Literal

import orjson

from slotstream_contracts.events import EventType

#: A named event, not a comment: browsers never surface comments, so the page's watchdog
#: could not tell a quiet stream from a dead one. No ``id:`` so that it does not move the
#: stream's resume position (an id-less frame leaves ``lastEventId`` as it was).
HEARTBEAT: Final = b"event: heartbeat\ndata: {}\n\n"

#: Every ``reason`` of the ``bye`` event that ends a stream (README "Protocol" lists each,
#: ``tests/unit/test_protocol_docs.py`` holds the two together). A WebSocket subscription
#: ended with one of them closes its WebSocket (``ws_protocol.CLOSE_CODE_OF_REASON``), but
#: ``instructor-unknown``, which is an ``error`` 404 there.
ByeReason = Literal[
    "shutdown",
    "slow-consumer",
    "snapshot-unavailable",
    "token-expired",
    "instructor-unknown",
    "internal-error",
]

#: ``ce_type`` header value → SSE event name (the type's family), for every data event type.
FAMILY_OF_TYPE: Final[dict[bytes, bytes]] = {
    t.value.encode(): t.family.encode() for t in EventType if t is not EventType.STREAM_RESYNC
}


class FrameError(ValueError):
    """The payload cannot be placed in one ``data:`` line."""


def check_payload(data: bytes) -> bytes:
    if b"\n" in data or b"\r" in data:
        raise FrameError("payload contains a raw line break")
    return data


def framable(value: bytes) -> bool:
    """Whether a Kafka record's value can be sent as it is: one line (no raw ``\\n`` or
    ``\\r``) of valid UTF-8 holding a JSON object. Anything else would reach the page as
    an event it cannot parse, and a WebSocket text frame that is not UTF-8 makes browsers
    fail the whole connection (1007); a resume would replay it again. orjson checks both
    (~2 µs for a CloudEvent), so this runs once per record, never per delivery."""
    return json_object(value) is not None


def json_object(value: bytes) -> dict[str, Any] | None:
    """A record's value as the JSON object it holds when it is :func:`framable` (else
    None): for a private record, whose ``audience`` decides who is shown it."""
    if b"\n" in value or b"\r" in value:
        return None
    try:
        found = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return found if type(found) is dict else None


def event_body(event: bytes, data: bytes) -> bytes:
    """The ``event:``/``data:`` part of a frame, shared by every subscriber."""
    return b"event: " + event + b"\ndata: " + check_payload(data) + b"\n\n"


def with_id(frame_id: bytes, body: bytes) -> bytes:
    return b"id: " + frame_id + b"\n" + body


def json_frame(event: str, payload: Any, frame_id: bytes | None = None) -> bytes:
    """A frame for a gateway-built event (``snapshot``, ``resync``, ``presence``, ``bye``)."""
    body = event_body(event.encode(), orjson.dumps(payload))
    return with_id(frame_id, body) if frame_id is not None else body


def retry_frame(milliseconds: int) -> bytes:
    return b"retry: " + str(milliseconds).encode() + b"\n\n"
