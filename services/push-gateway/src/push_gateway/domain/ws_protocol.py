"""The gateway's WebSocket messages: server frames encoded by hand, client ops parsed.

Only the *server → client* frames are written here, because they are the fan-out's hot
path: a server frame is unmasked (RFC 6455 §5.1), so one event's frame is the same bytes for
every subscriber and is encoded once, like an SSE frame. Everything else — the handshake,
parsing (and unmasking) client frames, ping/pong and the closing handshake — is left to
``websockets``' sans-I/O ``ServerProtocol`` (see ``api/ws.py``).

Every message is one text frame holding ``{"event": …, "id": …, "data": …}``, with the same
``event`` names, ``id`` values and ``data`` as the SSE frames (``id`` is left out where SSE
has none).
"""

import struct
from enum import IntEnum
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from push_gateway.domain.frames import ByeReason

TEXT: Final = 0x1
CLOSE: Final = 0x8
PING: Final = 0x9

WS_PATH: Final = "/v1/ws"


class CloseCode(IntEnum):
    """Why the gateway closes a WebSocket (sent in the close frame, with the reason text)."""

    SHUTDOWN = 1001  # going away: reconnect (to another instance) with your positions
    UNSUPPORTED_DATA = 1003  # a binary message
    INVALID_DATA = 1007  # a text message that is not UTF-8 (RFC 6455 8.1)
    POLICY = 1008  # an unreadable or unknown op, a refused token or ticket
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # the booking-api could not give a snapshot: reconnect later
    TOKEN_EXPIRED = 4001  # authenticate again (a fresh token or ticket) and resubscribe
    PING_TIMEOUT = 4002  # nothing from the client for two keep-alive periods
    SLOW_CONSUMER = 4008  # unsent output passed GATEWAY_MAX_PENDING_BYTES


#: Why the gateway refuses a client (closes with 1003, 1007 or 1008): the fixed token that
#: starts the close frame's reason and the ``bye`` before it, so that an app can match on
#: it; a detail for people may follow after ``": "`` (``invalid-token: Signature has
#: expired``). README "Close codes" lists each in its code's row.
RefusalReason = Literal[
    "unsupported-data",
    "invalid-data",
    "unreadable-message",
    "invalid-token",
    "ticket-refused",
    "too-many-messages",
    "channel-forbidden",
    "role-changed",
]

#: The close code of each refusal.
CLOSE_CODE_OF_REFUSAL: Final[dict[RefusalReason, CloseCode]] = {
    "unsupported-data": CloseCode.UNSUPPORTED_DATA,
    "invalid-data": CloseCode.INVALID_DATA,
    "unreadable-message": CloseCode.POLICY,
    "invalid-token": CloseCode.POLICY,
    "ticket-refused": CloseCode.POLICY,
    "too-many-messages": CloseCode.POLICY,
    "channel-forbidden": CloseCode.POLICY,
    "role-changed": CloseCode.POLICY,
}

#: SSE ``bye`` reasons that end a whole WebSocket, and the close code that says so.
CLOSE_CODE_OF_REASON: Final[dict[ByeReason, CloseCode]] = {
    "shutdown": CloseCode.SHUTDOWN,
    "slow-consumer": CloseCode.SLOW_CONSUMER,
    "token-expired": CloseCode.TOKEN_EXPIRED,
    "snapshot-unavailable": CloseCode.TRY_AGAIN_LATER,
    "internal-error": CloseCode.INTERNAL_ERROR,
}


def ws_frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """One unfragmented, unmasked server frame."""
    length = len(payload)
    if length < 126:
        head = bytes((0x80 | opcode, length))
    elif length < 0x10000:
        head = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return head + payload


def event_frame(event: bytes, data: bytes, frame_id: bytes | None = None) -> bytes:
    """``{"event":…,"id":…,"data":…}`` around ``data`` (JSON bytes, embedded as they are).

    ``event`` and ``frame_id`` are ASCII tokens the gateway made (``slot``, ``s3:1042``), so
    they need no escaping; ``data`` is the CloudEvent exactly as stored in Kafka."""
    if frame_id is None:
        return ws_frame(b'{"event":"' + event + b'","data":' + data + b"}")
    return ws_frame(b'{"event":"' + event + b'","id":"' + frame_id + b'","data":' + data + b"}")


def json_event(event: str, payload: Any, frame_id: bytes | None = None) -> bytes:
    """A frame for a gateway-built message (``subscribed``, ``error``, ``presence`` …)."""
    return event_frame(event.encode(), orjson.dumps(payload), frame_id)


#: D5's client-visible keep-alive message (browsers cannot see ping frames).
HEARTBEAT_FRAME: Final = json_event("heartbeat", {})
PING_FRAME: Final = ws_frame(b"", PING)
#: what the keep-alive writes each period: the visible message and a ping frame
KEEPALIVE: Final = HEARTBEAT_FRAME + PING_FRAME


def sse_to_ws(sse: bytes) -> bytes:
    """Re-encode SSE frames written by the gateway's catch-up code as WebSocket frames.

    Catch-up output (snapshot, replayed events, ``resync``) is built once per subscription,
    not per delivery, so translating it costs nothing that matters and keeps one copy of
    that logic. Comments (``: hb``) and ``retry:`` hints have no WebSocket meaning and are
    dropped; every frame the gateway writes has exactly one ``data:`` line."""
    out: list[bytes] = []
    for block in sse.split(b"\n\n"):
        event = frame_id = data = None
        for line in block.split(b"\n"):
            name, _, value = line.partition(b": ")
            if name == b"event":
                event = value
            elif name == b"data":
                data = value
            elif name == b"id":
                frame_id = value
        if event is not None and data is not None:
            out.append(event_frame(event, data, frame_id))
    return b"".join(out)


# -- client → server ops ----------------------------------------------------------------------


class _Op(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SubscribeOp(_Op):
    op: Literal["subscribe"]
    channel: str = Field(max_length=200)
    #: the ``id`` of the last message received on this channel (resume point), if any
    since: str | None = Field(default=None, max_length=2048)


class UnsubscribeOp(_Op):
    op: Literal["unsubscribe"]
    channel: str = Field(max_length=200)


class AuthOp(_Op):
    """``{"op":"auth","token":<JWT>}`` or ``{"op":"auth","ticket":<stream ticket>}``."""

    op: Literal["auth"]
    token: str | None = Field(default=None, max_length=8192)
    ticket: str | None = Field(default=None, max_length=512)

    @model_validator(mode="after")
    def _exactly_one(self) -> "AuthOp":
        if (self.token is None) == (self.ticket is None):
            raise ValueError("give exactly one of token or ticket")
        return self


class PingOp(_Op):
    """An application-level ping (browsers cannot send ping frames): answered with ``pong``."""

    op: Literal["ping"]


ClientOp = Annotated[SubscribeOp | UnsubscribeOp | AuthOp | PingOp, Field(discriminator="op")]
_OPS: Final[TypeAdapter[ClientOp]] = TypeAdapter(ClientOp)


class OpError(ValueError):
    """A client message that is not one of the ops (the connection is closed, 1008)."""


def parse_op(message: bytes) -> ClientOp:
    try:
        return _OPS.validate_json(message)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise OpError(f"{where}: {first['msg']}" if where else first["msg"]) from None
