"""The HTTP side of the gateway's port: stream requests are handed to the gateway, every
other request to uvicorn and the FastAPI app.

Why not an ASGI ``StreamingResponse``: that costs a task, a queue wake-up and an ASGI
``send`` (with its wrappers) per delivery, ~20 µs of CPU and ~28 kB per connection measured.
Instead the transport of an accepted stream request is detached from HTTP handling and given
to an :class:`~push_gateway.stream.SseConnection` (the same move uvicorn makes for a
WebSocket upgrade); from then on the hub writes the shared frame bytes straight into
``transport.write``.

Every connection starts with a :class:`StreamRequestProtocol`: a few slots, no uvicorn
state. It reads the first request's head with httptools' parser (uvicorn's), and a ``GET``
on a stream path goes to the gateway from there. Anything else — another method or path, a
malformed head, a WebSocket upgrade elsewhere — is given, with the bytes read so far, to
:class:`GatewayHttpProtocol` (uvicorn's ``HttpToolsProtocol``), which serves
it and whatever follows on the connection exactly as uvicorn does, handing over a stream
request that comes later on a kept-alive connection too. uvicorn's per-connection state
(parser, scope, flow control, loggers: ~2–3 kB) was built for every stream before, and in a
connect storm hundreds of those at once set the process's peak heap, which it keeps
(``docs/scaling.md``, issue 14 items 1 and 4).

Neither protocol has a timer while a head is read (uvicorn's keep-alive timer ends at the
first byte of the next request): a connection that sends nothing, or dribbles a head, would
be held for ever. Each keeps the time its head began (one float: the connection's start, or
the first byte after a request on a kept-alive connection) until the head is complete, and
:func:`close_unfinished_heads`, run once a second by the server (``app._Server``), closes
those past ``GATEWAY_REQUEST_HEAD_TIMEOUT_SECONDS``; a timer per connection would cost a
connect storm a heap entry and a cancel per stream.

Nor does either limit a head's size (httptools has no limit, uvicorn keeps every header
line): each counts the bytes of the head under way, and one past ``max_head_bytes``
(``GATEWAY_MAX_REQUEST_HEAD_BYTES``) is answered ``431`` at once, the connection ended
(:func:`_end_lingering`) and counted in ``gateway.stats.heads_refused`` (the sweep logs
how many, once a second at most).

Nor is a request body timed: no route reads one, uvicorn drops it once the answer is sent,
and its bytes end uvicorn's keep-alive timer, so a body dribbled after its answer held the
connection for ever. A request that announces a body is answered ``Connection: close`` and
its connection ended after the answer as a refused head's is (:func:`_end_lingering`), at
no cost to any other request.
"""

import asyncio
import urllib.parse
from collections.abc import Iterable
from time import monotonic
from typing import Any, ClassVar, Final

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

from push_gateway.api.ws import WebSocketGateway
from push_gateway.domain.requests import MAX_REQUEST_HEAD_BYTES, STREAM_PATHS, Problem
from push_gateway.domain.responses import ResponseHeads
from push_gateway.domain.ws_protocol import WS_PATH
from push_gateway.gateway import Gateway

#: how long a connection whose head was refused is still read (and what it sends dropped)
#: before it is closed: closing a socket with unread bytes resets the connection, and the
#: client would likely lose the ``431`` before reading it
REFUSED_LINGER_SECONDS: Final = 1.0


def head_too_large(max_head_bytes: int) -> bytes:
    """The answer to a request head longer than ``max_head_bytes`` (problem+json, as the
    gateway refuses stream requests; no path or CORS headers: the head was not read)."""
    problem = Problem(
        431,
        "Request Header Fields Too Large",
        f"the request line and header fields exceed {max_head_bytes} bytes",
    )
    return ResponseHeads((), 0).problem(problem, None, None)


class _Refused(asyncio.Protocol):
    """A connection whose head was refused: what the client still sends is dropped until it
    closes its side or :data:`REFUSED_LINGER_SECONDS` have passed (nginx's lingering
    close)."""

    __slots__ = ()

    def eof_received(self) -> bool:
        return False  # the transport closes


def _end_lingering(transport: asyncio.Transport) -> None:
    """End the connection after what was written: a FIN now, the socket closed once the
    client stops sending or after :data:`REFUSED_LINGER_SECONDS`."""
    transport.set_protocol(_Refused())
    if transport.can_write_eof():
        transport.write_eof()
        asyncio.get_running_loop().call_later(REFUSED_LINGER_SECONDS, transport.close)
    else:
        transport.close()


def _announces_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request head (names lower-cased) announces a body: a ``Content-Length``
    other than 0 or a ``Transfer-Encoding`` (httptools refused a malformed length)."""
    return any(
        name == b"transfer-encoding" or (name == b"content-length" and value.strip(b" \t0"))
        for name, value in headers
    )


class _EndsLingering(asyncio.Transport):
    """The transport as the cycle of a request with a body sees it (uvicorn's cycle writes
    the answer, then closes the transport unless kept alive): closing it ends the
    connection lingering (:meth:`GatewayHttpProtocol.end_lingering`), since an abrupt close
    with the body unread would reset the connection and the client likely lose the
    answer."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: "GatewayHttpProtocol") -> None:
        super().__init__()
        self._protocol = protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._protocol.transport.write(data)

    def is_closing(self) -> bool:
        return self._protocol.transport.is_closing()

    def close(self) -> None:
        self._protocol.end_lingering()


def _stream_target(url: bytes, websockets: bool) -> tuple[str, bytes] | None:
    """(path, query) when a ``GET`` of ``url`` is a stream request, else None; the path is
    percent-decoded as uvicorn decodes it for the app."""
    parsed = httptools.parse_url(url)
    path = urllib.parse.unquote(parsed.path.decode("ascii", "replace"))
    if path in STREAM_PATHS or (path == WS_PATH and websockets):
        return path, parsed.query or b""
    return None


class _RequestHead:
    """httptools' parser callbacks for one request head: the target and the headers (names
    lower-cased, as uvicorn gives them to the app). What follows the first head in the same
    bytes (a pipelined request) is not recorded."""

    __slots__ = ("url", "headers", "complete")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        if not self.complete:
            self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.complete = True


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's protocol for the connections :class:`StreamRequestProtocol` gives it (set
    ``gateway`` on a subclass, see :func:`protocol_for`): it serves the app's requests, and
    hands a stream request that arrives later on the same connection to the gateway."""

    gateway: ClassVar[Gateway]
    websockets: ClassVar[WebSocketGateway | None] = None
    max_head_bytes: ClassVar[int] = MAX_REQUEST_HEAD_BYTES
    #: the answer to a head over ``max_head_bytes`` (:func:`head_too_large`)
    too_large: ClassVar[bytes] = head_too_large(MAX_REQUEST_HEAD_BYTES)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stream_request: tuple[str, bytes] | None = None
        #: when the head under way began (``time.monotonic()``): the connection's start, or
        #: the first byte after a request; None while there is none (between requests:
        #: uvicorn's keep-alive timeout; a body)
        self.head_since: float | None = None
        #: the bytes read of the head under way (or of the wait for the next one), from
        #: the read after the previous request ended; -1: a request ended in this read;
        #: None while a body is read
        self._head_bytes: int | None = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """uvicorn's, without reading both socket addresses: a stream never needs them (its
        client address is read once, in ``Gateway.open_stream``), and each costs a
        ``getsockname``/``getpeername`` and a socket object from uvloop — measurable when
        10,000 streams connect at once. Requests for the app get them in
        :meth:`on_headers_complete`."""
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self.scheme = "https" if is_ssl(transport) else "http"

    def on_headers_complete(self) -> None:
        self.head_since = self._head_bytes = None
        if self.parser.get_method() == b"GET":
            target = _stream_target(self.url, self.websockets is not None)
            if target is not None:
                self._stream_request = target
                return
        if self.client is None:
            self.server = get_local_addr(self.transport)
            self.client = get_remote_addr(self.transport)
            self.scope["server"] = self.server
            self.scope["client"] = self.client
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope and _announces_body(self.headers):
            # a new cycle (not a WebSocket upgrade): no route reads a body, whose bytes
            # would end uvicorn's keep-alive timer with no other timer after (see the
            # module docstring); answered ``connection: close``, then ended lingering
            cycle.keep_alive = False
            cycle.transport = _EndsLingering(self)

    def on_body(self, body: bytes) -> None:
        if self._stream_request is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._stream_request is None:
            super().on_message_complete()
            self._head_bytes = -1

    def on_response_complete(self) -> None:
        if self.parser is None:  # ended after the answer (end_lingering): nothing follows
            self.server_state.total_requests += 1
        else:
            super().on_response_complete()

    def end_lingering(self) -> None:
        """End the connection after the answer written (:func:`_end_lingering`): what the
        client still sends, the rest of a body or pipelined requests, is dropped."""
        if self.parser is None:
            return  # already ended
        self.connections.discard(self)
        self._unset_keepalive_if_required()
        _end_lingering(self.transport)
        self.parser = None  # type: ignore[assignment]
        self.scope = None  # type: ignore[assignment]
        self.headers = None  # type: ignore[assignment]

    def handle_websocket_upgrade(self) -> None:
        if self._stream_request is None:  # another path: uvicorn's own WebSocket support
            super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        if self._stream_request is not None:
            return  # already handed over; anything more from the client is ignored
        head_bytes = self._head_bytes
        if head_bytes is not None:  # a head under way, or the wait for the next one
            if self.head_since is None:
                # the first bytes after a request: they end uvicorn's keep-alive timer,
                # and nothing else would end a head (or blank lines) dribbled from here
                self.head_since = monotonic()
            if head_bytes + len(data) > self.max_head_bytes:
                self._read_past_limit(data, self.max_head_bytes - head_bytes)
                return
        super().data_received(data)
        head_bytes = self._head_bytes
        if head_bytes is not None:
            # -1: a request ended within this read; the next head, begun after it, is
            # counted from the next read (at most one read of it uncounted, never a false
            # refusal: the count never takes in bytes of a previous request)
            self._head_bytes = head_bytes + len(data) if head_bytes >= 0 else 0
        if self._stream_request is not None:
            self._hand_over(*self._stream_request)

    def _read_past_limit(self, data: bytes, room: int) -> None:
        """A read that would take the head under way past ``max_head_bytes``: its first
        ``room`` bytes are parsed alone; a head still not complete then is refused, else
        the rest is read as any read (a pipelined head in it counted from its start)."""
        super().data_received(data[:room])
        head_bytes = self._head_bytes
        if self._stream_request is not None:
            self._hand_over(*self._stream_request)
        elif self.transport.is_closing() or self.transport.get_protocol() is not self:
            pass  # answered 400 by uvicorn, or upgraded to its WebSocket protocol
        elif head_bytes is not None and head_bytes >= 0:
            self._refuse()
        else:
            if head_bytes is not None:  # the request ended: the next head begins here
                self._head_bytes = 0
            if len(data) > room:
                self.data_received(data[room:])

    def _refuse(self) -> None:
        """Answer ``431`` and end the connection as after any answer (:meth:`end_lingering`),
        dropping what was read of the head; a response still under way to an earlier
        request is dropped as when its client goes."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        self.gateway.stats.heads_refused += 1
        self.transport.write(self.too_large)
        self.end_lingering()

    def _hand_over(self, path: str, query: bytes) -> None:
        self.connections.discard(self)
        self._unset_keepalive_if_required()
        _open(self.gateway, self.websockets, self.transport, path, query, self.url, self.headers)
        self.parser = None  # type: ignore[assignment]
        self.scope = None  # type: ignore[assignment]


def _open(
    gateway: Gateway,
    websockets: WebSocketGateway | None,
    transport: asyncio.Transport,
    path: str,
    query: bytes,
    url: bytes,
    headers: list[tuple[bytes, bytes]],
) -> None:
    """Give the transport to the stream the request opens (or leave it with the protocol
    that read the request, when the request was answered and the transport closed)."""
    connection: asyncio.Protocol | None
    if path == WS_PATH and websockets is not None:
        connection = websockets.open(transport, url, headers)
    else:
        connection = gateway.open_stream(transport, path, query, headers)
    if connection is not None:
        transport.set_protocol(connection)


class StreamRequestProtocol(asyncio.Protocol):
    """What uvicorn creates for each new connection (see the module docstring). Set
    ``gateway`` and ``app_protocol`` on a subclass (see :func:`protocol_for`)."""

    __slots__ = (
        "_config",
        "_server_state",
        "_app_state",
        "_transport",
        "_received",
        "_parser",
        "head_since",
    )

    gateway: ClassVar[Gateway]
    websockets: ClassVar[WebSocketGateway | None] = None
    #: serves every connection whose first request is not a stream request
    app_protocol: ClassVar[type[GatewayHttpProtocol]]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # the arguments uvicorn's protocol factory passes; kept for app_protocol
        self._config = config
        self._server_state = server_state
        self._app_state = app_state
        self._transport: asyncio.Transport | None = None
        #: the bytes read so far (a bytearray once a head spans several reads); None once
        #: the connection was handed over
        self._received: bytes | bytearray | None = b""
        #: the parser of a head that spans several reads (fed each read once)
        self._parser: tuple[httptools.HttpRequestParser, _RequestHead] | None = None
        #: when the connection was made (``time.monotonic()``): while it is in uvicorn's
        #: set, its first head is not complete yet (see :func:`close_unfinished_heads`)
        self.head_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # in uvicorn's set, so a graceful shutdown closes a connection that sent nothing
        # yet, and the once-a-second sweep one that sends no complete head in time
        self._server_state.connections.add(self)  # type: ignore[arg-type]
        self._transport = transport  # type: ignore[assignment]
        self.head_since = monotonic()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - any cause
        self._server_state.connections.discard(self)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: no request is under way here, close."""
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        received = self._received
        if received is None:
            return  # handed over and answered; anything more from the client is ignored
        if self._parser is None:
            if received:  # the first bytes were not enough to tell
                data = bytes(received) + data
            received = data
            if not data.startswith(b"GET "):
                if len(data) >= 4 or not b"GET ".startswith(data):
                    self._to_app(data)
                else:
                    self._received = data
                return
            head = _RequestHead()
            parser = httptools.HttpRequestParser(head)
            # as uvicorn's parser: a response to the first of pipelined requests
            parser.set_dangerous_leniencies(lenient_data_after_close=True)
        else:
            parser, head = self._parser
            received += data  # a bytearray by now: extended in place
        max_head_bytes = self.app_protocol.max_head_bytes
        if len(received) > max_head_bytes:
            # parsed only to the limit: a head not complete within it is refused below
            data = data[: max_head_bytes - (len(received) - len(data))]
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the head is complete; the upgrade is the WebSocket gateway's to answer
        except httptools.HttpParserError:
            self._to_app(received)  # uvicorn answers it (400) as before
            return
        if not head.complete:
            if len(received) > max_head_bytes:
                transport = self._let_go()
                self.gateway.stats.heads_refused += 1
                transport.write(self.app_protocol.too_large)
                _end_lingering(transport)
            elif self._parser is None:
                # the rest of the head comes in later reads: each is parsed once
                self._parser = (parser, head)
                self._received = bytearray(received)
            return
        try:
            target = _stream_target(head.url, self.websockets is not None)
        except httptools.HttpParserInvalidURLError:
            target = None
        if target is None:
            self._to_app(received)
            return
        _open(self.gateway, self.websockets, self._let_go(), *target, head.url, head.headers)

    def _let_go(self) -> asyncio.Transport:
        """This protocol is done with the connection (handed over, or refused): it reads no
        more and leaves uvicorn's set (no sweep, no shutdown close of it). Its transport."""
        assert self._transport is not None
        self._received = self._parser = None
        self._server_state.connections.discard(self)
        return self._transport

    def _to_app(self, received: bytes | bytearray) -> None:
        """Give the connection to uvicorn's protocol, as if it had read ``received``."""
        transport = self._let_go()
        protocol = self.app_protocol(
            config=self._config, server_state=self._server_state, app_state=self._app_state
        )
        protocol.head_since = self.head_since
        protocol.connection_made(transport)
        transport.set_protocol(protocol)
        protocol.data_received(bytes(received))


def close_unfinished_heads(connections: Iterable[object], deadline: float) -> tuple[int, int]:
    """Close the connections among ``connections`` (uvicorn's ``server_state.connections``)
    whose request head under way began before ``deadline`` (``time.monotonic()``) and is
    still not complete; returns (closed, still waiting). Streams are not in the set (handed
    over); connections serving a request or idle after one have no head under way."""
    closed = waiting = 0
    for connection in list(connections):  # closing takes them out of the set
        if isinstance(connection, StreamRequestProtocol):
            transport: asyncio.Transport | None = connection._transport
            since: float | None = connection.head_since
        elif isinstance(connection, GatewayHttpProtocol):
            transport, since = connection.transport, connection.head_since
        else:
            continue
        if since is None or transport is None:
            continue
        if since <= deadline:
            transport.close()
            closed += 1
        else:
            waiting += 1
    return closed, waiting


def protocol_for(
    gateway: Gateway,
    websockets: WebSocketGateway | None = None,
    max_head_bytes: int = MAX_REQUEST_HEAD_BYTES,
) -> type[StreamRequestProtocol]:
    """A protocol class bound to one gateway (uvicorn instantiates it per connection)."""
    bound = {"gateway": gateway, "websockets": websockets}
    app_protocol = type(
        "BoundGatewayHttpProtocol",
        (GatewayHttpProtocol,),
        {
            **bound,
            "max_head_bytes": max_head_bytes,
            "too_large": head_too_large(max_head_bytes),
        },
    )
    return type(
        "BoundStreamRequestProtocol",
        (StreamRequestProtocol,),
        {**bound, "app_protocol": app_protocol, "__slots__": ()},
    )
