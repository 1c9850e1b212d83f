"""``GET /v1/ws``: the same channels, frames, authorization and resume positions as SSE, over
one WebSocket with subscribe/unsubscribe ops.

Like an SSE stream, a WebSocket bypasses ASGI: ``api/protocol.py`` detaches the transport
from uvicorn once the request's headers are parsed and hands it here. The handshake and
the parsing of client frames (unmasking, control frames, closing handshake, size limits)
are ``websockets``' sans-I/O :class:`~websockets.server.ServerProtocol`; the gateway writes by
hand only the server frames of the fan-out (``domain/ws_protocol.py``), so the hub hands one
frame's bytes to every subscriber's ``transport.write`` as it does for SSE.

Each subscription is a :class:`WsSubscription`: to the gateway it is an SSE connection of one
channel (the same catch-up — snapshot or missed events from its ``since`` — the same
resync handling, the same hub registration), whose catch-up output is re-encoded as
WebSocket frames and whose live frames come from the hub's WebSocket fan-out.
"""

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar, Final
from urllib.parse import parse_qs

import jwt as pyjwt
import structlog
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from push_gateway.adapters.heartbeats import HEARTBEAT_STEPS
from push_gateway.adapters.tickets import TicketServiceUnavailable
from push_gateway.domain.frames import ByeReason
from push_gateway.domain.positions import PositionError, parse_position
from push_gateway.domain.requests import Problem, StreamRequest, readers_of
from push_gateway.domain.ws_protocol import (
    CLOSE_CODE_OF_REASON,
    CLOSE_CODE_OF_REFUSAL,
    KEEPALIVE,
    AuthOp,
    CloseCode,
    OpError,
    PingOp,
    RefusalReason,
    SubscribeOp,
    UnsubscribeOp,
    json_event,
    parse_op,
    sse_to_ws,
)
from push_gateway.gateway import Gateway
from push_gateway.stream import (
    CLOSE_GRACE_SECONDS,
    SseConnection,
    StreamState,
    write_catch_up,
)
from push_gateway.timing import sleep_to_grid
from slotstream_contracts.auth import InvalidToken, JwtSettings, Principal, verify_token
from slotstream_contracts.channels import Channel, ChannelError

log = structlog.get_logger(__name__)

#: Largest client message accepted (ops are tiny; a JWT is the biggest part).
MAX_MESSAGE_BYTES: Final = 16 * 1024
#: Messages that may wait for a ticket's redemption (up to 35 s), at most: room for an
#: ``auth``'s usual followers (a subscribe per channel); more closes the connection (1008).
MAX_WAITING_MESSAGES: Final = 32
MAX_WAITING_BYTES: Final = 128 * 1024
#: Most query fields a handshake may have (it needs ``ticket`` at most).
MAX_QUERY_FIELDS: Final = 20
#: A client that sent nothing (not even a pong) for two keep-alive periods plus this is gone.
PING_SLACK_SECONDS: Final = 5.0


def frame_parser() -> ServerProtocol:
    """The library's protocol for an accepted connection: it parses client frames (and
    answers pings and the closing handshake); the handshake itself is checked by
    :meth:`WebSocketGateway.open`."""
    return ServerProtocol(max_size=MAX_MESSAGE_BYTES, state=State.OPEN)


def client_frame_length(frame: Frame) -> int:
    """How many bytes a parsed client frame took on the wire (masked, no extensions)."""
    size = len(frame.data)
    return 2 + (0 if size < 126 else 2 if size < 0x10000 else 8) + 4 + size


def authenticate_token(token: str, settings: JwtSettings) -> tuple[Principal, float]:
    """The verified principal and the Unix time at which the token stops being accepted."""
    principal = verify_token(token, settings)
    # verified just above (``exp`` is a required claim): reading it back needs no key
    claims = pyjwt.decode(token, options={"verify_signature": False})
    return principal, float(claims["exp"]) + settings.leeway_seconds


@dataclass
class WebSocketStats:
    accepted: int = 0
    rejected: int = 0
    subscriptions: int = 0
    slow_disconnects: int = 0
    token_expiries: int = 0
    ping_timeouts: int = 0
    policy_closes: int = 0


class _SubscriptionOutput(asyncio.Transport):
    """A subscription's transport as the gateway's catch-up code sees it: SSE frames written
    here go out re-encoded as WebSocket frames; closing it ends only the subscription."""

    __slots__ = ("_connection",)

    def __init__(self, connection: "WsConnection") -> None:
        super().__init__()
        self._connection = connection

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._connection.write(sse_to_ws(bytes(data)))

    def is_closing(self) -> bool:
        return self._connection.closed

    def close(self) -> None:
        """The WebSocket outlives its subscriptions."""

    def abort(self) -> None:
        """The WebSocket outlives its subscriptions."""

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """The WebSocket's own transport is bounded (see :class:`WsConnection`)."""


class WsSubscription(SseConnection):
    """One channel of one WebSocket, served by the gateway like a one-channel SSE stream."""

    __slots__ = ("owner", "allowance", "allowance_round")
    #: the hub gives it the shared WebSocket frame (``ChannelHub.go_live``)
    websocket: ClassVar[bool] = True

    def __init__(self, owner: "WsConnection", channel: Channel, gateway: Gateway) -> None:
        super().__init__(
            _SubscriptionOutput(owner),
            (channel,),
            {channel: gateway.hub.partition_key(channel)},
            # the gateway's own bookkeeping for streams it serves: detach, resync
            on_close=gateway._closed,  # noqa: SLF001
            on_resync=gateway._resync,  # noqa: SLF001
            max_pending_bytes=gateway.settings.max_pending_bytes,
            origin=owner.origin,
        )
        self.owner = owner
        self.writer = owner.transport.write
        self.headers_sent = True  # the 101 answer was the head
        #: bytes of its catch-ups the WebSocket's transport may hold beyond the pending
        #: limit, granted in the owner's allowance round ``allowance_round``
        self.allowance = 0
        self.allowance_round = 0

    def output_catch_up(self, data: bytes, max_pending_bytes: int) -> None:
        """As WebSocket frames, exempt from the limit of the WebSocket's own transport while
        this subscription lasts (see :meth:`WsConnection.subscription_ended`)."""
        owner = self.owner
        if owner.closed:
            return
        frames = sse_to_ws(data)
        round_ = owner.allowance_round
        write_catch_up(
            owner.transport, owner.write, frames, max_pending_bytes, owner.allowances_ended
        )
        if owner.allowance_round != round_:
            return  # sent at once: no allowance left
        if self.allowance_round != round_:
            self.allowance, self.allowance_round = 0, round_
        self.allowance += len(frames)

    def close(self, reason: ByeReason | None, retry_ms: int | None = None) -> None:  # noqa: ARG002
        if self.state is StreamState.CLOSED:
            return
        self.state = StreamState.CLOSED
        self._on_close(self, reason)
        self.owner.subscription_ended(self, reason)


class WsConnection(asyncio.Protocol):
    """One open WebSocket: client ops in, frames out; owns its subscriptions."""

    __slots__ = (
        "server",
        "transport",
        "protocol",
        "origin",
        "client_ip",
        "subscriptions",
        "principal",
        "expiry",
        "closed",
        "last_seen",
        "allowance_round",
        "_subscribes",
        "_waiting",
        "_unparsed",
    )

    def __init__(
        self,
        server: "WebSocketGateway",
        transport: asyncio.Transport,
        origin: str | None,
        client_ip: str,
    ) -> None:
        self.server = server
        self.transport = transport
        self.client_ip = client_ip
        #: the library's frame parser, only while a message is in flight or closing
        self.protocol: ServerProtocol | None = None
        self.origin = origin
        self.subscriptions: dict[Channel, WsSubscription] = {}
        self.principal: Principal | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self.closed = False
        self.last_seen = time.monotonic()
        #: this connection's subscribe rate (its address's is the admission's)
        self._subscribes = server.gateway.admission.subscribe_bucket()
        #: messages that arrived while a ticket was being redeemed, answered in order after it
        self._waiting: list[bytes] | None = None
        #: bytes received but not yet returned as frames (0: the parser is between frames)
        self._unparsed = 0
        #: counts the times the catch-up allowances on the transport ended (all at once)
        self.allowance_round = 0
        transport.set_write_buffer_limits(high=server.gateway.settings.max_pending_bytes)

    # -- output ------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if data and not self.closed:
            self.transport.write(data)

    def allowances_ended(self) -> None:
        """The transport holds no more than the pending limit: every catch-up allowance
        granted so far has ended (``stream.write_catch_up``)."""
        self.allowance_round += 1

    def _parser(self) -> ServerProtocol:
        if self.protocol is None:
            self.protocol = frame_parser()
        return self.protocol

    def _flush(self) -> None:
        """Send what the protocol library queued (pongs, the closing handshake)."""
        for chunk in self._parser().data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:  # end of stream: the server closes TCP after the closing handshake
                self.transport.close()

    # -- asyncio.Protocol --------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        protocol = self._parser()
        protocol.receive_data(data)
        self._unparsed += len(data)
        for event in protocol.events_received():
            if not isinstance(event, Frame):
                continue
            self._unparsed -= client_frame_length(event)
            if self.closed:
                continue
            if event.opcode is Opcode.TEXT and event.fin:
                message = bytes(event.data)
                if not message.isascii():
                    # The library leaves text to its reader (its parser checks only close
                    # reasons); RFC 6455 8.1 and 7.4.1: not UTF-8 fails the connection, 1007.
                    try:
                        message.decode()
                    except UnicodeDecodeError:
                        self.refuse("invalid-data", "text message is not UTF-8")
                        continue
                self._message(message)
            elif event.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                self.refuse("unsupported-data", "only unfragmented text messages")
            elif event.opcode is Opcode.CLOSE:
                self._end()
        self._flush()
        if protocol.parser_exc is not None:
            self._end()  # the library already answered the protocol error with a close frame
        elif self._unparsed == 0 and protocol.state is State.OPEN and protocol.current_size is None:
            # Between messages of an open connection (no extensions) a fresh parser is the
            # same as this one: drop it rather than hold ~1.7 kB per idle connection.
            self.protocol = None

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        # called from inside transport.write(), possibly mid fan-out: act on the next tick
        asyncio.get_running_loop().call_soon(self.close, CloseCode.SLOW_CONSUMER, "slow-consumer")

    def resume_writing(self) -> None:
        """Nothing to resume: a client that fell behind is disconnected, not waited for."""

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - any cause
        self._end()

    # -- closing -----------------------------------------------------------------------------
    def close(self, code: CloseCode, reason: str) -> None:
        """Say why (a ``bye`` message, then a close frame with ``code``) and close."""
        if self.closed:
            return
        if code is CloseCode.SLOW_CONSUMER:
            self.server.stats.slow_disconnects += 1
        elif code is CloseCode.POLICY:
            self.server.stats.policy_closes += 1
        log.info("websocket closed", code=int(code), reason=reason)
        if not self.transport.is_closing():
            self.transport.write(json_event("bye", {"reason": reason}))
        self._end()
        protocol = self._parser()
        if protocol.state is State.OPEN:
            protocol.send_close(code, reason.encode()[:123].decode(errors="ignore"))
            self._flush()
        asyncio.get_running_loop().call_later(CLOSE_GRACE_SECONDS, self._abort_if_open)

    def refuse(self, reason: RefusalReason, detail: str) -> None:
        """Close for something the client did (1003, 1007, 1008): the reason starts with
        the fixed token an app matches on, the detail after it is for people."""
        self.close(CLOSE_CODE_OF_REFUSAL[reason], f"{reason}: {detail}")

    def _end(self) -> None:
        """Leave the hub and the gateway's books (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        for subscription in list(self.subscriptions.values()):
            subscription.close(None)
        self.server.connections.discard(self)
        self.server.gateway.admission.release(self.client_ip, None)

    def _abort_if_open(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()
        if self.transport.get_write_buffer_size():
            self.transport.abort()

    # -- ops ---------------------------------------------------------------------------------
    def _message(self, data: bytes) -> None:
        waiting = self._waiting
        if waiting is not None:
            if (
                len(waiting) >= MAX_WAITING_MESSAGES
                or sum(map(len, waiting)) + len(data) > MAX_WAITING_BYTES
            ):
                self.refuse(
                    "too-many-messages",
                    f"more than {MAX_WAITING_MESSAGES} messages or "
                    f"{MAX_WAITING_BYTES // 1024} kB sent while a ticket is redeemed",
                )
                return
            waiting.append(data)
            return
        try:
            op = parse_op(data)
        except OpError as exc:
            self.refuse("unreadable-message", str(exc))
            return
        if isinstance(op, SubscribeOp):
            self._subscribe(op)
        elif isinstance(op, UnsubscribeOp):
            self._unsubscribe(op)
        elif isinstance(op, AuthOp):
            if op.token is not None:
                self._authenticate_token(op.token)
            else:
                assert op.ticket is not None
                self.redeem(op.ticket)
        elif isinstance(op, PingOp):
            self.write(json_event("pong", {}))

    def _error(self, op: str, channel: str, problem: Problem) -> None:
        payload: dict[str, object] = {
            "op": op,
            "channel": channel,
            "status": problem.status,
            "title": problem.title,
            "detail": problem.detail,
        }
        for name, value in problem.headers:
            if name == "retry-after":  # an HTTP answer's header: the message's field
                payload["retryAfter"] = int(value)
        self.write(json_event("error", payload))

    def _subscribe(self, op: SubscribeOp) -> None:
        try:
            channel = self._check_subscription(op)
            resume_from = parse_position(op.since) if op.since else None
            # last: only a subscribe that would start a catch-up takes a token
            self.server.gateway.admission.admit_subscribe(
                self.client_ip, self._subscribes, time.monotonic()
            )
        except PositionError as exc:
            self._error(op.op, op.channel, Problem(400, "Bad Request", f"since: {exc}"))
            return
        except Problem as problem:
            self._error(op.op, op.channel, problem)
            return
        gateway = self.server.gateway
        subscription = WsSubscription(self, channel, gateway)
        subscription.readers = readers_of(self.principal)
        self.subscriptions[channel] = subscription
        self.server.stats.subscriptions += 1
        self.write(json_event("subscribed", {"channel": channel.name}))
        request = StreamRequest(
            channels=(channel,),
            resume_from=resume_from,
            principal=self.principal,
            origin=self.origin,
        )
        gateway.serve_subscription(subscription, request)

    def _check_subscription(self, op: SubscribeOp) -> Channel:
        """The channel, if this connection may subscribe to it now; else the problem."""
        try:
            channel = Channel.parse(op.channel)
        except ChannelError as exc:
            raise Problem(400, "Bad Request", str(exc)) from None
        if channel in self.subscriptions:
            raise Problem(409, "Conflict", f"already subscribed to {channel}")
        limit = self.server.gateway.settings.max_channels_per_connection
        if len(self.subscriptions) >= limit:
            raise Problem(400, "Bad Request", f"at most {limit} channels per connection")
        if channel.is_private:
            if self.principal is None:
                raise Problem(401, "Unauthorized", 'private channels need {"op":"auth"} first')
            if not self.principal.may_act_for(channel.owner_id):
                raise Problem(403, "Forbidden", f"{channel} belongs to another user")
        if not self.server.gateway.hub.assigned:
            raise Problem(
                503,
                "Service Unavailable",
                "gateway is starting: retry in 1 s",
                (("retry-after", "1"),),
            )
        return channel

    def _unsubscribe(self, op: UnsubscribeOp) -> None:
        subscription = None
        with contextlib.suppress(ChannelError):
            subscription = self.subscriptions.get(Channel.parse(op.channel))
        if subscription is None:
            self._error(op.op, op.channel, Problem(404, "Not Found", "not subscribed"))
            return
        subscription.close(None)
        self.write(json_event("unsubscribed", {"channel": op.channel}))

    def subscription_ended(self, subscription: WsSubscription, reason: ByeReason | None) -> None:
        """A subscription left the hub: unsubscribed, or the gateway ended it with a reason."""
        channel = subscription.channels[0]
        if self.subscriptions.get(channel) is subscription:
            del self.subscriptions[channel]
        if self.closed:
            return
        if subscription.allowance and subscription.allowance_round == self.allowance_round:
            self._revoke_allowance(subscription.allowance)
        if reason is None:
            return
        if reason == "instructor-unknown":
            problem = Problem(404, "Not Found", f"no instructor {channel.owner_id!r}")
            self._error("subscribe", channel.name, problem)
            return
        self.close(CLOSE_CODE_OF_REASON.get(reason, CloseCode.INTERNAL_ERROR), reason)

    def _revoke_allowance(self, size: int) -> None:
        """End the allowance of a subscription's catch-up still unsent when the subscription
        ends: otherwise a client that reads nothing could pile up one catch-up (a snapshot,
        up to ~2 MB) per subscribe, never passing the raised limit. What is left unsent
        beyond the limit and the other subscriptions' allowances is a slow consumer."""
        transport = self.transport
        limit = self.server.gateway.settings.max_pending_bytes
        high = max(limit, transport.get_write_buffer_limits()[1] - size)
        transport.set_write_buffer_limits(high=high)
        if transport.get_write_buffer_size() > high:
            self.pause_writing()  # a transport that does not check on a new limit

    # -- authentication ----------------------------------------------------------------------
    def _authenticate_token(self, token: str) -> None:
        try:
            principal, expires_at = authenticate_token(token, self.server.gateway.settings.jwt)
        except (InvalidToken, ValueError) as exc:
            self.refuse("invalid-token", str(exc))
            return
        self._authenticated(principal, expires_at)

    def redeem(self, ticket: str) -> None:
        """Redeem a stream ticket (DESIGN D2, the gateway's ticket adapter); messages that
        arrive meanwhile wait for the answer."""
        self._waiting = []
        self.server.spawn(self._redeem(ticket))

    async def _redeem(self, ticket: str) -> None:
        gateway = self.server.gateway
        try:
            redeemed = await gateway.tickets.redeem(ticket)
        except TicketServiceUnavailable as exc:
            log.warning("ticket redemption failed", error=str(exc))
            self.close(CloseCode.TRY_AGAIN_LATER, "ticket-redemption-failed")
            return
        if redeemed is None:
            self.refuse("ticket-refused", "unknown, used or expired ticket")
            return
        leeway = gateway.settings.jwt.leeway_seconds
        self._authenticated(redeemed.principal, redeemed.token_expires_at + leeway)
        waiting, self._waiting = self._waiting or [], None
        for message in waiting:
            if self.closed:
                return
            self._message(message)

    def _authenticated(self, principal: Principal, expires_at: float) -> None:
        if self.closed:
            return
        readers = readers_of(principal)
        for channel, subscription in self.subscriptions.items():
            if channel.is_private and not principal.may_act_for(channel.owner_id):
                self.refuse("channel-forbidden", f"the new token may not read {channel}")
                return
            if channel.is_private and subscription.readers != readers:
                # the hub keeps it with the roles it was subscribed in
                self.refuse("role-changed", f"the new token reads {channel} in another role")
                return
        self.principal = principal
        if self.expiry is not None:
            self.expiry.cancel()
        # private subscriptions must not outlive the token: the client authenticates again
        self.expiry = asyncio.get_running_loop().call_later(
            max(0.0, expires_at - time.time()), self._expire
        )
        payload = {"sub": principal.user_id, "role": principal.role, "expiresAt": int(expires_at)}
        self.write(json_event("authenticated", payload))

    def _expire(self) -> None:
        self.expiry = None
        self.principal = None
        if any(channel.is_private for channel in self.subscriptions):
            self.server.stats.token_expiries += 1
            self.close(CloseCode.TOKEN_EXPIRED, "token-expired")


class WebSocketGateway:
    """Accepts WebSockets, keeps them alive, closes them at shutdown."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.connections: set[WsConnection] = set()
        gateway.websockets = self.connections
        self.stats = WebSocketStats()
        self._tasks: set[asyncio.Task[None]] = set()
        self._keepalive: asyncio.Task[None] | None = None

    def start_background(self) -> None:
        self._keepalive = asyncio.create_task(self._keepalive_loop(), name="ws-keepalive")

    async def shutdown(self) -> None:
        """Close every WebSocket with 1001 (reconnect to another instance)."""
        if self._keepalive is not None:
            self._keepalive.cancel()
        for connection in list(self.connections):
            connection.close(CloseCode.SHUTDOWN, "shutdown")
        for task in [*self._tasks, *([self._keepalive] if self._keepalive else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def open(
        self,
        transport: asyncio.Transport,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> WsConnection | None:
        """Answer the handshake of ``GET <target>``; the connection that now owns the
        transport, or None when the request was refused (and answered)."""
        gateway = self.gateway
        path, _, raw_query = target.partition(b"?")
        origin = next((v.decode("latin-1") for k, v in headers if k == b"origin"), None)
        ip = gateway.admission.client_ip(transport.get_extra_info("peername"), headers)
        try:
            if not gateway.accepting:
                raise Problem(
                    503, "Service Unavailable", "gateway is shutting down", (("retry-after", "1"),)
                )
            # the same per-address connect rate and stream count as SSE streams
            gateway.admission.admit_ip(ip, time.monotonic())
            gateway.admit_stream()
            try:
                query = parse_qs(
                    raw_query.decode("utf-8", "replace"), max_num_fields=MAX_QUERY_FIELDS
                )
            except ValueError as exc:  # too many fields: answered like SSE's query errors
                raise Problem(400, "Bad Request", f"unreadable query string: {exc}") from None
            if "access_token" in query or "token" in query:
                raise Problem(
                    400, "Bad Request", 'no tokens in URLs: send {"op":"auth","token":…} instead'
                )
        except Problem as problem:
            self.stats.rejected += 1
            gateway.reject(transport, problem, path.decode("latin-1"), origin)
            return None
        # uvicorn already parsed the request: the library checks it (``accept``); frames are
        # parsed by a protocol in state OPEN, so no parsed request stays referenced by a
        # suspended handshake parser (1.6 kB per connection).
        protocol = frame_parser()
        request = Request(
            target.decode("latin-1"),
            Headers((name.decode("latin-1"), value.decode("latin-1")) for name, value in headers),
        )
        response = protocol.accept(request)
        transport.write(response.serialize())
        if response.status_code != HTTPStatus.SWITCHING_PROTOCOLS:
            self.stats.rejected += 1
            transport.close()
            return None
        connection = WsConnection(self, transport, origin, ip)
        gateway.admission.hold(ip, None)
        self.connections.add(connection)
        self.stats.accepted += 1
        tickets = query.get("ticket")
        if tickets:
            connection.redeem(tickets[-1])
        return connection

    async def _keepalive_loop(self) -> None:
        """Each ``heartbeat_seconds``: the visible ``heartbeat`` message and a ping frame to
        every WebSocket (spread over the period like SSE heartbeats); a client silent for two
        periods (browsers answer pings by themselves) is closed with 4002."""
        period = self.gateway.settings.heartbeat_seconds
        pause = period / HEARTBEAT_STEPS
        while True:
            connections = list(self.connections)
            share = -(-len(connections) // HEARTBEAT_STEPS)  # ceiling
            for step in range(HEARTBEAT_STEPS):
                await sleep_to_grid(pause)  # with the other periodic timers: one wake-up
                silent_since = time.monotonic() - 2 * period - PING_SLACK_SECONDS
                for connection in connections[step * share : (step + 1) * share]:
                    if connection.closed:
                        continue
                    if connection.last_seen < silent_since:
                        self.stats.ping_timeouts += 1
                        connection.close(CloseCode.PING_TIMEOUT, "ping-timeout")
                    else:
                        connection.transport.write(KEEPALIVE)
