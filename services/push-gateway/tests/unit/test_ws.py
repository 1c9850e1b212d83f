"""The WebSocket transport (``api/ws.py``) on a fake transport, with websockets' sans-I/O
client protocol on the other side (so frames are checked by an independent parser)."""

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from push_gateway.adapters.kafka import FakeLogBounds
from push_gateway.adapters.tickets import FakeTicketRedeemer
from push_gateway.api.ws import WebSocketGateway, WsConnection
from push_gateway.config import Settings
from push_gateway.domain.ws_protocol import (
    CloseCode,
    OpError,
    event_frame,
    parse_op,
    sse_to_ws,
    ws_frame,
)
from push_gateway.testing import FakeRecord
from push_gateway.ws_metrics import WebSocketCollector
from slotstream_contracts.auth import Principal, Role, mint_token
from slotstream_contracts.channels import Channel
from slotstream_contracts.topics import NOTIFICATIONS_TOPIC, SCHEDULE_TOPIC

from .test_gateway import (
    INSTRUCTOR_SIDE,
    JWT,
    STUDENT_SIDE,
    large_schedule,
    shared_id_records,
)
from .test_gateway import Harness as GatewayHarness

SCHEDULE = "instructors/i1/schedule"


class FakeTransport(asyncio.Transport):
    """Records every ``write`` call (the very bytes objects, to check they are shared)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.high: int | None = None
        self.low: int | None = None
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.writes.append(data)  # type: ignore[arg-type]

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high, self.low = high, low

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.low or 0, self.high or 0

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol


class Client:
    """A WebSocket client made of websockets' ClientProtocol and a fake transport."""

    def __init__(
        self, server: WebSocketGateway, target: str = "/v1/ws", extra: dict[str, str] | None = None
    ) -> None:
        self.transport = FakeTransport()
        self.protocol = ClientProtocol(parse_uri("ws://gateway" + target))
        request = self.protocol.connect()
        for name, value in (extra or {}).items():
            request.headers[name] = value
        self.protocol.send_request(request)
        self.protocol.data_to_send()
        headers = [(k.lower().encode(), v.encode()) for k, v in request.headers.raw_items()]
        self.connection = server.open(self.transport, target.encode(), headers)
        self._read = 0
        self.close_frame: Frame | None = None
        self.response: Response | None = None
        self.pings = 0

    def send(self, op: dict[str, Any] | bytes) -> None:
        assert self.connection is not None
        payload = op if isinstance(op, bytes) else orjson.dumps(op)
        if isinstance(op, bytes):
            self.protocol.send_binary(payload)
        else:
            self.protocol.send_text(payload)
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.connection.data_received(chunk)

    def send_raw(self, frame: Frame) -> None:
        """A frame as it is, past the client library's own checks (a text frame that is
        not UTF-8)."""
        assert self.connection is not None
        self.connection.data_received(frame.serialize(mask=True))

    def messages(self) -> list[dict[str, Any]]:
        new = self.transport.writes[self._read :]
        self._read = len(self.transport.writes)
        self.protocol.receive_data(b"".join(new))
        found = []
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                self.response = event
            elif not isinstance(event, Frame):
                continue
            elif event.opcode is Opcode.TEXT:
                found.append(orjson.loads(event.data))
            elif event.opcode is Opcode.CLOSE:
                self.close_frame = event
            elif event.opcode is Opcode.PING:
                self.pings += 1
        return found

    def events(self) -> list[str]:
        return [m["event"] for m in self.messages()]


class Harness(GatewayHarness):
    """The SSE tests' gateway and fakes, plus the WebSocket side."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.ws = WebSocketGateway(self.gateway)

    def produce_versions(self, *versions: int) -> None:
        self.produce(*self.slot_records(range(versions[0], versions[-1] + 1)))

    async def client(self, target: str = "/v1/ws") -> Client:
        client = Client(self.ws, target)
        client.messages()
        return client

    async def subscribed(self, channel: str = SCHEDULE, **extra: Any) -> Client:
        client = await self.client()
        client.send({"op": "subscribe", "channel": channel, **extra})
        await settle()
        return client


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.005)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness(Settings(max_channels_per_connection=2, max_pending_bytes=32_768, jwt=JWT))
    try:
        yield h
    finally:
        await h.ws.shutdown()
        await h.gateway.shutdown()


# -- frames -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536])
def test_server_frames_parse_back_at_every_length_encoding(size: int) -> None:
    client = ClientProtocol(parse_uri("ws://gateway/"), state=State.OPEN, max_size=None)
    payload = b"x" * size
    client.receive_data(ws_frame(payload))
    [frame] = client.events_received()
    assert isinstance(frame, Frame)
    assert frame.opcode is Opcode.TEXT
    assert frame.data == payload


def test_event_frame_is_the_json_message_around_the_raw_data() -> None:
    frame = event_frame(b"slot", b'{"version":3}', b"s1:7")
    assert orjson.loads(frame[2:]) == {"event": "slot", "id": "s1:7", "data": {"version": 3}}
    assert orjson.loads(event_frame(b"presence", b"{}")[2:]) == {"event": "presence", "data": {}}


def test_sse_frames_translate_and_comments_and_retry_hints_drop() -> None:
    sse = b'retry: 500\n\n: hb\n\nid: s1:3\nevent: slot\ndata: {"a":1}\n\nevent: bye\ndata: {}\n\n'
    assert sse_to_ws(sse) == event_frame(b"slot", b'{"a":1}', b"s1:3") + event_frame(b"bye", b"{}")


@pytest.mark.parametrize(
    "message",
    [b"not json", b'{"op":"dance"}', b'{"op":"auth"}', b'{"op":"subscribe"}', b"[]"],
)
def test_unreadable_ops_are_refused(message: bytes) -> None:
    with pytest.raises(OpError):
        parse_op(message)


# -- the connection ---------------------------------------------------------------------------


async def test_subscribe_gets_the_snapshot_with_the_sse_id_then_live_events(
    harness: Harness,
) -> None:
    client = await harness.client()
    assert client.response is not None
    assert client.response.status_code == 101
    client.send({"op": "subscribe", "channel": SCHEDULE})
    await settle()
    subscribed, snap = client.messages()
    assert subscribed == {"event": "subscribed", "data": {"channel": SCHEDULE}}
    assert snap["event"] == "snapshot"
    assert snap["id"] == f"s{harness.part}:-1"
    assert snap["data"]["channel"] == SCHEDULE
    harness.produce_versions(3)
    [live] = client.messages()
    assert live["event"] == "slot"
    assert live["id"] == f"s{harness.part}:0"
    assert live["data"]["version"] == 3
    assert live["data"]["type"] == "slot.updated"


async def test_every_subscriber_gets_the_same_frame_bytes(harness: Harness) -> None:
    first, second = await harness.subscribed(), await harness.subscribed()
    first.messages(), second.messages()
    harness.produce_versions(3)
    assert first.transport.writes[-1] is second.transport.writes[-1]


async def test_since_replays_only_the_missed_events(harness: Harness) -> None:
    harness.produce_versions(3, 4, 5)
    client = await harness.subscribed(since=f"s{harness.part}:0")
    messages = client.messages()
    assert [m["event"] for m in messages] == ["subscribed", "slot", "slot"]
    assert [m["data"]["version"] for m in messages[1:]] == [4, 5]
    assert [m["id"] for m in messages[1:]] == [f"s{harness.part}:1", f"s{harness.part}:2"]


async def test_since_past_this_gateways_reads_waits_for_them_until_unsubscribed(
    harness: Harness,
) -> None:
    """``since`` from a gateway that is ahead waits, as ``Last-Event-ID`` does, for this one
    to read that far; an unsubscribe ends the wait (nothing of it is left)."""
    part = harness.part
    harness.produce_versions(1, 2, 3)  # offsets 0-2: read here
    later = harness.slot_records(range(4, 7))  # offsets 3-5: in the log, not read here yet
    bounds = harness.gateway.catch_up.bounds
    assert isinstance(bounds, FakeLogBounds)
    bounds.log_ends = {(SCHEDULE_TOPIC, part): 6}
    client = await harness.subscribed(since=f"s{part}:4")
    waits = harness.gateway.catch_up.waits
    assert len(waits) == 1
    client.send({"op": "unsubscribe", "channel": SCHEDULE})
    await settle()
    assert len(waits) == 0
    client.send({"op": "subscribe", "channel": SCHEDULE, "since": f"s{part}:4"})
    await settle()
    harness.produce(*later)
    await settle()
    messages = client.messages()
    assert [(m["event"], m.get("id")) for m in messages] == [
        ("subscribed", None),
        ("unsubscribed", None),
        ("subscribed", None),
        ("slot", f"s{part}:5"),
    ]
    assert len(waits) == 0


@pytest.mark.parametrize(
    "value",
    [b'{"id":"x","data":\xff\xfe}', b'{"id":"x",', b"[1,2]"],
    ids=["not-utf8", "not-json", "not-an-object"],
)
async def test_a_malformed_record_is_skipped_live_and_on_replay(
    harness: Harness, value: bytes
) -> None:
    """A browser fails the whole WebSocket (1007) on a text frame that is not UTF-8, and a
    message that is not JSON breaks its parser; a resubscribe with ``since`` replayed the
    same record, so the client looped. The record is dropped, live and from the ring."""
    live = await harness.subscribed()
    live.messages()
    records = harness.slot_records(range(3, 6))
    records[1] = FakeRecord(1, b"i1", value, b"slot.updated", b"bad-1")
    harness.produce(*records)
    assert [(m["id"], m["data"]["version"]) for m in live.messages()] == [
        (f"s{harness.part}:0", 3),
        (f"s{harness.part}:2", 5),
    ]
    assert harness.hub.stats.malformed == 1
    replayed = await harness.subscribed(since=f"s{harness.part}:-1")
    assert [(m["event"], m["data"].get("version")) for m in replayed.messages()] == [
        ("subscribed", None),
        ("slot", 3),
        ("slot", 5),
    ]


async def test_unsubscribe_stops_delivery(harness: Harness) -> None:
    client = await harness.subscribed()
    client.messages()
    client.send({"op": "unsubscribe", "channel": SCHEDULE})
    assert client.messages() == [{"event": "unsubscribed", "data": {"channel": SCHEDULE}}]
    harness.produce_versions(3)
    assert client.messages() == []
    assert harness.hub.subscriber_counts() == {}


async def test_unsubscribing_or_leaving_stops_the_catch_up_under_way(harness: Harness) -> None:
    """A dropped subscription's catch-up (here: waiting for a slow booking-api) ends at once
    instead of holding its task until the fetch is over (up to 15 s)."""
    harness.source.gate = asyncio.Event()
    client = await harness.client()
    for channel in ("instructors/i2/schedule", "instructors/i3/schedule"):
        client.send({"op": "subscribe", "channel": channel})
    await settle()
    catching_up = harness.gateway._tasks  # noqa: SLF001
    assert len(catching_up) == 2
    client.send({"op": "unsubscribe", "channel": "instructors/i2/schedule"})
    await settle()
    assert len(catching_up) == 1
    assert client.connection is not None
    client.protocol.send_close(1000, "bye")
    client.connection.data_received(b"".join(client.protocol.data_to_send()))
    await settle()
    assert len(catching_up) == 0
    harness.source.gate.set()
    await settle()
    assert [m["event"] for m in client.messages()] == ["subscribed", "subscribed", "unsubscribed"]


async def test_subscription_problems_answer_without_closing(harness: Harness) -> None:
    client = await harness.subscribed()
    client.messages()
    for channel, status in [
        ("nonsense", 400),
        (SCHEDULE, 409),
        ("users/u1/notifications", 401),
    ]:
        client.send({"op": "subscribe", "channel": channel})
        [error] = client.messages()
        assert error["event"] == "error"
        assert error["data"]["status"] == status
    client.send({"op": "subscribe", "channel": SCHEDULE, "since": "bogus"})
    assert client.messages()[0]["data"]["status"] in (400, 409)
    client.send({"op": "unsubscribe", "channel": "instructors/i9/schedule"})
    assert client.messages()[0]["data"]["status"] == 404
    assert client.close_frame is None


async def test_a_subscribe_before_the_partitions_are_assigned_says_when_to_retry(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page subscribes again after ``retryAfter`` seconds (web/slotstream-client.js)."""
    monkeypatch.setattr(type(harness.gateway.hub), "assigned", property(lambda _: False))
    client = await harness.subscribed()
    [refused] = refused_subscribes(client)
    assert (refused["status"], refused["retryAfter"]) == (503, 1)
    assert client.close_frame is None


async def test_channel_limit_per_connection(harness: Harness) -> None:
    client = await harness.subscribed()
    client.send({"op": "subscribe", "channel": "instructors/i2/schedule"})
    client.send({"op": "subscribe", "channel": "instructors/i3/schedule"})
    await settle()
    errors = [m for m in client.messages() if m["event"] == "error"]
    assert [e["data"]["detail"] for e in errors if e["data"]["status"] == 400] == [
        "at most 2 channels per connection"
    ]


async def test_unknown_instructor_is_an_error_on_that_subscription(harness: Harness) -> None:
    client = await harness.subscribed("instructors/nobody/schedule")
    messages = client.messages()
    assert messages[-1]["event"] == "error"
    assert messages[-1]["data"]["status"] == 404
    assert client.close_frame is None
    assert client.connection is not None
    assert not client.connection.closed


async def test_private_channel_after_token_auth_and_not_someone_elses(harness: Harness) -> None:
    client = await harness.client()
    client.send({"op": "auth", "token": mint_token(JWT, "u1", Role.STUDENT)})
    [auth] = client.messages()
    assert auth["event"] == "authenticated"
    assert client.connection is not None
    assert client.connection.protocol is None  # a 2-byte-length frame, parsed to the end
    assert auth["data"]["sub"] == "u1"
    client.send({"op": "subscribe", "channel": "users/u2/notifications"})
    assert client.messages()[0]["data"]["status"] == 403
    client.send({"op": "subscribe", "channel": "users/u1/notifications"})
    await settle()
    assert [m["event"] for m in client.messages()] == ["subscribed"]


async def test_a_student_and_an_instructor_sharing_an_id_each_get_only_their_own(
    harness: Harness,
) -> None:
    """Live, and replayed for a subscription with ``since``."""
    notes = harness.hub.partition_key(Channel.notifications("u1"))
    clients = {}
    for role in (Role.STUDENT, Role.INSTRUCTOR):
        client = await harness.client()
        client.send({"op": "auth", "token": mint_token(JWT, "u1", role)})
        client.send({"op": "subscribe", "channel": "users/u1/notifications"})
        clients[role] = client
    await settle()
    harness.hub.ingest(NOTIFICATIONS_TOPIC, notes[1], shared_id_records())
    for role, expected in ((Role.STUDENT, STUDENT_SIDE), (Role.INSTRUCTOR, INSTRUCTOR_SIDE)):
        assert event_ids(clients[role]) == expected, role
        again = await harness.client()
        again.send({"op": "auth", "token": mint_token(JWT, "u1", role)})
        again.send(
            {"op": "subscribe", "channel": "users/u1/notifications", "since": f"n{notes[1]}:-1"}
        )
        await settle()
        assert event_ids(again) == expected, role


async def test_a_new_token_in_another_role_closes_private_subscriptions(
    harness: Harness,
) -> None:
    """A subscription is kept with the role it was made in: a token of another role for
    the same id may not take it over."""
    client = await harness.client()
    client.send({"op": "auth", "token": mint_token(JWT, "u1", Role.STUDENT)})
    client.send({"op": "subscribe", "channel": "users/u1/notifications"})
    await settle()
    client.send({"op": "auth", "token": mint_token(JWT, "u1", Role.STUDENT)})
    assert client.messages()[-1]["event"] == "authenticated"  # the same role: fine
    client.send({"op": "auth", "token": mint_token(JWT, "u1", Role.INSTRUCTOR)})
    assert client.messages()[-1] == {
        "event": "bye",
        "data": {
            "reason": "role-changed: the new token reads users/u1/notifications in another role"
        },
    }
    assert client.close_frame is not None
    assert client.close_frame.data[:2] == CloseCode.POLICY.to_bytes(2, "big")
    assert harness.hub.subscriber_counts() == {}


def event_ids(client: Client) -> list[str]:
    """The CloudEvents ids of the notification and booking messages received since the
    last look."""
    return [m["data"]["id"] for m in client.messages() if m["event"] in ("notification", "booking")]


async def test_invalid_token_closes_with_policy(harness: Harness) -> None:
    client = await harness.client()
    client.send({"op": "auth", "token": "not.a.jwt"})
    assert client.messages()[0]["event"] == "bye"
    assert client.close_frame is not None
    assert client.close_frame.data[:2] == CloseCode.POLICY.to_bytes(2, "big")


async def test_expired_token_closes_private_subscriptions_with_4001(harness: Harness) -> None:
    client = await harness.client()
    token = mint_token(JWT, "u1", Role.STUDENT, ttl=timedelta(seconds=1.5))
    client.send({"op": "auth", "token": token})
    client.send({"op": "subscribe", "channel": "users/u1/notifications"})
    await asyncio.sleep(1.6)  # ``exp`` is whole seconds: the token ends 0.5-1.5 s from now
    messages = client.messages()
    assert messages[-1] == {"event": "bye", "data": {"reason": "token-expired"}}
    assert client.close_frame is not None
    assert client.close_frame.data[:2] == (4001).to_bytes(2, "big")
    assert harness.hub.subscriber_counts() == {}


async def test_tokens_in_the_url_are_refused(harness: Harness) -> None:
    client = Client(harness.ws, "/v1/ws?access_token=abc")
    assert client.connection is None
    assert client.transport.writes[0].startswith(b"HTTP/1.1 400")


async def test_a_handshake_with_too_many_query_fields_is_answered_400(harness: Harness) -> None:
    client = Client(harness.ws, "/v1/ws?" + "&".join(f"f{n}=1" for n in range(25)))
    assert client.connection is None
    [answer] = client.transport.writes
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"content-type: application/problem+json" in head
    assert b"query" in orjson.loads(body)["detail"].encode()
    assert client.transport.closed


async def test_a_plain_get_is_answered_by_the_library(harness: Harness) -> None:
    transport = FakeTransport()
    assert harness.ws.open(transport, b"/v1/ws", [(b"host", b"gateway")]) is None
    assert transport.writes[0].startswith(b"HTTP/1.1 426")
    assert transport.closed


async def test_ticket_auth_holds_later_ops_until_redeemed(harness: Harness) -> None:
    gate = asyncio.Event()
    redeemer = FakeTicketRedeemer(gate=gate)
    redeemer.issue("good", Principal.model_validate({"sub": "u1", "role": "student"}))
    harness.gateway.tickets = redeemer
    client = await harness.client()
    client.send({"op": "auth", "ticket": "good"})
    client.send({"op": "subscribe", "channel": "users/u1/notifications"})
    await settle()
    assert client.messages() == []
    gate.set()
    await settle()
    assert [m["event"] for m in client.messages()] == ["authenticated", "subscribed"]
    used = await harness.client("/v1/ws?ticket=good")  # single use
    await settle()
    assert used.messages()[-1]["event"] == "bye"
    assert used.close_frame is not None
    assert used.close_frame.data[:2] == CloseCode.POLICY.to_bytes(2, "big")
    assert redeemer.attempts == ["good", "good"]


@pytest.mark.parametrize(
    ("count", "padding"),
    [(32, 0), (8, 15_000)],  # more messages, or more bytes, than may wait
    ids=["messages", "bytes"],
)
async def test_ops_piling_up_during_a_ticket_redemption_close_with_policy(
    harness: Harness, count: int, padding: int
) -> None:
    # the booking-api takes its time
    harness.gateway.tickets = FakeTicketRedeemer(gate=asyncio.Event())
    client = await harness.client()
    assert client.connection is not None
    client.send({"op": "auth", "ticket": "slow"})
    message = orjson.dumps({"op": "ping"}) + b" " * padding
    for _ in range(count):
        client.protocol.send_text(message)
        client.connection.data_received(b"".join(client.protocol.data_to_send()))
    assert client.messages() == []  # what fits waits for the ticket
    client.protocol.send_text(message)
    client.connection.data_received(b"".join(client.protocol.data_to_send()))
    assert [m["event"] for m in client.messages()] == ["bye"]
    assert client.close_frame is not None
    assert client.close_frame.data[:2] == CloseCode.POLICY.to_bytes(2, "big")
    assert b"while a ticket is redeemed" in client.close_frame.data[2:]


async def test_ticket_service_down_closes_with_try_again_later(harness: Harness) -> None:
    harness.tickets.unavailable = True
    client = await harness.client("/v1/ws?ticket=any")
    await settle()
    client.messages()
    assert client.close_frame is not None
    assert client.close_frame.data[:2] == CloseCode.TRY_AGAIN_LATER.to_bytes(2, "big")


async def test_binary_messages_close_the_connection(harness: Harness) -> None:
    client = await harness.client()
    client.send(b"\x00\x01")
    client.messages()
    assert client.close_frame is not None
    assert client.close_frame.data[:2] == CloseCode.UNSUPPORTED_DATA.to_bytes(2, "big")


async def test_garbage_text_closes_with_policy(harness: Harness) -> None:
    client = await harness.client()
    assert client.connection is not None
    client.protocol.send_text(b"{not json")
    client.connection.data_received(b"".join(client.protocol.data_to_send()))
    client.messages()
    assert client.close_frame is not None
    assert client.close_frame.data[:2] == CloseCode.POLICY.to_bytes(2, "big")


@pytest.mark.parametrize(
    "payload",
    [
        b'{"op":"ping","x":"\xff"}',  # a byte no UTF-8 text holds
        b'{"op":"unsubscribe","channel":"\xed\xa0\x80"}',  # an encoded surrogate
        b'{"op":"unsubscribe","channel":"\xc0\xaf"}',  # an overlong "/"
    ],
)
async def test_a_text_message_that_is_not_utf8_closes_with_1007(
    harness: Harness, payload: bytes
) -> None:
    """RFC 6455 8.1 and 7.4.1: a text message that is not UTF-8 fails the connection with
    1007, not as an unreadable op (on main: 1008)."""
    client = await harness.client()
    assert client.connection is not None
    client.connection.data_received(Frame(Opcode.TEXT, payload).serialize(mask=True))
    messages = client.messages()
    assert client.close_frame is not None
    assert client.close_frame.data[:2] == (1007).to_bytes(2, "big")
    assert messages[-1]["event"] == "bye"
    assert not harness.ws.connections


async def test_slow_consumer_closes_with_4008(harness: Harness) -> None:
    client = await harness.subscribed()
    assert client.transport.high == 32_768
    assert isinstance(client.connection, WsConnection)
    client.connection.pause_writing()
    await settle()
    assert client.messages()[-1] == {"event": "bye", "data": {"reason": "slow-consumer"}}
    assert client.close_frame is not None
    assert client.close_frame.data[:2] == (4008).to_bytes(2, "big")
    assert harness.hub.subscriber_counts() == {}


async def open_over_socketpair(
    harness: Harness,
) -> tuple[asyncio.Transport, WsConnection, ClientProtocol, socket.socket]:
    """A WebSocket on a real socket whose client side holds only a few kB unread."""
    server_sock, client_sock = socket.socketpair()
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, server_sock)
    client = ClientProtocol(parse_uri("ws://gateway/v1/ws"), max_size=None)
    request = client.connect()
    client.send_request(request)
    client.data_to_send()  # the request as uvicorn would have read it, handed over below
    headers = [(k.lower().encode(), v.encode()) for k, v in request.headers.raw_items()]
    connection = harness.ws.open(transport, b"/v1/ws", headers)
    assert connection is not None
    transport.set_protocol(connection)
    return transport, connection, client, client_sock


async def test_a_fast_client_gets_a_catch_up_larger_than_the_pending_limit(
    harness: Harness,
) -> None:
    """Over a real socket that holds a few kB: a snapshot 13 times the limit, read as fast
    as it comes, is not a slow consumer (on main: ``bye slow-consumer``, close 4008)."""
    harness.source.snapshots["i1"] = large_schedule()
    _, connection, client, client_sock = await open_over_socketpair(harness)
    reader, writer = await asyncio.open_connection(sock=client_sock)
    received: list[dict[str, Any]] = []

    async def read() -> None:
        client.receive_data(await asyncio.wait_for(reader.read(1 << 16), 5))
        for event in client.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                received.append(orjson.loads(event.data))

    async def message() -> dict[str, Any]:
        while not received:
            await read()
        return received.pop(0)

    try:
        while client.state is State.CONNECTING:  # the 101 answer
            await read()
        client.send_text(orjson.dumps({"op": "subscribe", "channel": SCHEDULE}))
        writer.write(b"".join(client.data_to_send()))
        assert (await message())["event"] == "subscribed"
        snap = await message()
        assert snap["event"] == "snapshot"
        assert len(snap["data"]["schedule"]["slots"]) == 2500
        harness.produce_versions(3)
        live = await message()
        assert (live["event"], live["data"].get("version")) == ("slot", 3)
        assert harness.ws.stats.slow_disconnects == 0
    finally:
        writer.close()


async def test_a_client_that_reads_nothing_cannot_pile_up_catch_ups_by_resubscribing(
    harness: Harness,
) -> None:
    """Each catch-up may wait in the transport beyond the pending limit, but only while its
    subscription lasts: a client that never reads and subscribes and unsubscribes again and
    again is a slow consumer (on main each round added the snapshot, 0.45 MB, to the
    transport and to the allowance, and the client was never cut off)."""
    harness.source.snapshots["i1"] = large_schedule()
    transport, connection, client, client_sock = await open_over_socketpair(harness)
    client.state = State.OPEN  # the 101 answer is left unread with the rest
    try:
        for _ in range(10):
            for op in ("subscribe", "unsubscribe"):
                client.send_text(orjson.dumps({"op": op, "channel": SCHEDULE}))
                client_sock.send(b"".join(client.data_to_send()))
                await settle()
            if connection.closed:
                break
        assert connection.closed
        assert harness.ws.stats.slow_disconnects == 1
        assert transport.get_write_buffer_size() < 2 * len(large_schedule().model_dump_json())
    finally:
        client_sock.close()


async def test_a_client_that_reads_its_catch_ups_may_resubscribe_at_will(
    harness: Harness,
) -> None:
    harness.source.snapshots["i1"] = large_schedule()
    _, connection, client, client_sock = await open_over_socketpair(harness)
    reader, writer = await asyncio.open_connection(sock=client_sock)

    async def read_until(event: str) -> None:
        while True:
            client.receive_data(await asyncio.wait_for(reader.read(1 << 16), 5))
            for frame in client.events_received():
                if isinstance(frame, Frame) and frame.opcode is Opcode.TEXT:
                    if orjson.loads(frame.data)["event"] == event:
                        return

    try:
        while client.state is State.CONNECTING:  # the 101 answer
            client.receive_data(await asyncio.wait_for(reader.read(1 << 16), 5))
            client.events_received()
        for _ in range(4):
            client.send_text(orjson.dumps({"op": "subscribe", "channel": SCHEDULE}))
            writer.write(b"".join(client.data_to_send()))
            await read_until("snapshot")
            client.send_text(orjson.dumps({"op": "unsubscribe", "channel": SCHEDULE}))
            writer.write(b"".join(client.data_to_send()))
            await read_until("unsubscribed")
        assert not connection.closed
        assert harness.ws.stats.slow_disconnects == 0
    finally:
        writer.close()


async def test_shutdown_closes_with_1001(harness: Harness) -> None:
    client = await harness.subscribed()
    await harness.ws.shutdown()
    assert client.messages()[-1] == {"event": "bye", "data": {"reason": "shutdown"}}
    assert client.close_frame is not None
    assert client.close_frame.data[:2] == (1001).to_bytes(2, "big")


async def test_client_close_is_answered_and_leaves_the_hub(harness: Harness) -> None:
    client = await harness.subscribed()
    assert client.connection is not None
    client.protocol.send_close(1000, "bye")
    client.connection.data_received(b"".join(client.protocol.data_to_send()))
    client.messages()
    assert client.close_frame is not None  # the echo
    assert client.transport.closed
    assert harness.hub.subscriber_counts() == {}
    assert not harness.ws.connections


async def test_keepalive_sends_heartbeats_and_pings_and_drops_silent_clients() -> None:
    h = Harness(Settings(jwt=JWT, heartbeat_seconds=0.06))
    talking, silent = await h.client(), await h.client()
    h.ws.start_background()
    events: list[str] = []
    # A period is 60 short sleeps, which a loaded machine stretches: wait for the outcome.
    async with asyncio.timeout(10):
        while "heartbeat" not in events or "pong" not in events or talking.pings < 1:
            await asyncio.sleep(0.05)
            talking.send({"op": "ping"})
            events += talking.events()
    assert silent.connection is not None
    silent.connection.last_seen -= 60
    async with asyncio.timeout(10):
        while silent.close_frame is None:
            await asyncio.sleep(0.01)
            silent.messages()
    assert talking.close_frame is None
    assert silent.close_frame.data[:2] == (4002).to_bytes(2, "big")
    await h.ws.shutdown()
    await h.gateway.shutdown()


async def test_metrics_count_websockets(harness: Harness) -> None:
    client = await harness.subscribed()
    assert client.connection is not None
    client.connection.pause_writing()
    await settle()
    await harness.subscribed()
    found = {m.name: m for m in WebSocketCollector(harness.ws).collect()}
    assert found["gateway_ws_connections"].samples[0].value == 1
    assert found["gateway_ws_subscriptions"].samples[0].value == 1
    assert found["gateway_ws_accepted"].samples[0].value == 2
    closes = {s.labels["reason"]: s.value for s in found["gateway_ws_closes"].samples}
    assert closes["slow-consumer"] == 1


async def test_a_message_split_over_reads_is_parsed_and_idle_connections_hold_no_parser(
    harness: Harness,
) -> None:
    client = await harness.client()
    assert client.connection is not None
    client.protocol.send_text(orjson.dumps({"op": "ping"}))
    wire = b"".join(client.protocol.data_to_send())
    for cut in (1, 5):  # inside the header, then inside the payload
        client.connection.data_received(wire[:cut])
        wire = wire[cut:]
        assert client.connection.protocol is not None  # mid-message: the parser is kept
    client.connection.data_received(wire)
    assert client.messages() == [{"event": "pong", "data": {}}]
    assert client.connection.protocol is None


async def test_a_spoofed_x_real_ip_through_a_trusted_proxy_does_not_escape_the_limit() -> None:
    # As Envoy Gateway forwards it (the fake transport has no peer: a trusted local proxy)
    h = Harness(Settings(jwt=JWT, max_streams_per_ip=1))
    clients = [
        Client(h.ws, extra={"X-Real-IP": f"198.51.100.{n}", "X-Forwarded-For": "203.0.113.7"})
        for n in range(2)
    ]
    assert clients[0].connection is not None
    assert clients[1].connection is None
    assert clients[1].transport.writes[0].startswith(b"HTTP/1.1 429")
    clients[0].connection.close(CloseCode.SHUTDOWN, "test")
    await h.ws.shutdown()
    await h.gateway.shutdown()


async def test_a_websocket_counts_as_one_stream_of_its_address() -> None:
    h = Harness(Settings(jwt=JWT, max_streams_per_ip=1))
    first = await h.client()
    assert first.connection is not None
    second = Client(h.ws)
    assert second.connection is None
    assert second.transport.writes[0].startswith(b"HTTP/1.1 429")
    first.connection.close(CloseCode.SHUTDOWN, "test")
    third = Client(h.ws)  # the address's count was given back
    assert third.connection is not None
    await h.ws.shutdown()
    await h.gateway.shutdown()


async def test_websockets_and_sse_streams_share_the_connection_cap() -> None:
    h = Harness(Settings(jwt=JWT, max_connections=1))
    h._writers, h.stalled_sockets = [], []
    try:
        websocket = await h.client()
        assert websocket.connection is not None
        refused = await (await h.connect()).start()
        assert refused.status == 503
        assert "retry-after: 5" in refused.head
        websocket.connection.close(CloseCode.SHUTDOWN, "test")
        stream = await (await h.connect()).start()  # the WebSocket's place was given back
        assert stream.status == 200
        second = Client(h.ws)
        assert second.connection is None
        assert second.transport.writes[0].startswith(b"HTTP/1.1 503")
    finally:
        await h.ws.shutdown()
        await h.gateway.shutdown()
        for writer in h._writers:
            writer.close()


def refused_subscribes(client: Client) -> list[dict[str, Any]]:
    return [
        m["data"]
        for m in client.messages()
        if m["event"] == "error" and m["data"]["op"] == "subscribe"
    ]


async def test_subscribes_past_a_connection_s_burst_get_429_with_a_retry_hint() -> None:
    """Each subscribe may cost a booking-api request: a socket churning subscribe and
    unsubscribe gets its burst, then one per ``1 / rate`` seconds; the rest start nothing."""
    h = Harness(Settings(jwt=JWT, ws_subscribe_burst=4, ws_subscribe_rate=0.5))
    h.source.gate = asyncio.Event()  # a slow booking-api
    try:
        client = await h.client()
        for n in range(20):
            channel = f"instructors/x{n}/schedule"
            client.send({"op": "subscribe", "channel": channel})
            await asyncio.sleep(0)  # its catch-up asks the booking-api
            client.send({"op": "unsubscribe", "channel": channel})
        await settle()
        refused = refused_subscribes(client)
        assert len(refused) == 16
        assert {(r["status"], r["retryAfter"]) for r in refused} == {(429, 2)}
        assert "4 subscribes" in refused[0]["detail"]
        assert len(h.source.fetches) == 4
        assert client.close_frame is None  # refused ops, not a closed connection
        other = await h.client()  # another connection has a burst of its own
        other.send({"op": "subscribe", "channel": SCHEDULE})
        assert [m["event"] for m in other.messages()] == ["subscribed"]
        assert h.gateway.stats.limited["ws-subscribe-rate"] == 16
    finally:
        await h.ws.shutdown()
        await h.gateway.shutdown()


async def test_an_address_s_websockets_share_a_subscribe_rate() -> None:
    h = Harness(Settings(jwt=JWT, ws_subscribe_burst_per_ip=3, ws_subscribe_rate_per_ip=0.5))
    try:
        first, second = await h.client(), await h.client()  # both from one address
        for client, channel in [(first, SCHEDULE), (first, "instructors/i2/schedule")]:
            client.send({"op": "subscribe", "channel": channel})
        second.send({"op": "subscribe", "channel": SCHEDULE})
        assert refused_subscribes(second) == []
        second.send({"op": "subscribe", "channel": "instructors/i2/schedule"})
        refused = refused_subscribes(second)
        assert [(r["status"], r.get("retryAfter")) for r in refused] == [(429, 2)]
        assert "one address" in refused[0]["detail"]
        assert h.gateway.stats.limited["ws-subscribe-ip-rate"] == 1
    finally:
        await h.ws.shutdown()
        await h.gateway.shutdown()
