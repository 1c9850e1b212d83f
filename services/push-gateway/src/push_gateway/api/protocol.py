"""uvicorn's httptools protocol, taught to hand SSE requests to the gateway.

Why not an ASGI ``StreamingResponse``: that costs a task, a queue wake-up and an ASGI
``send`` (with its wrappers) per delivery, ~20 µs of CPU and ~28 kB per connection measured.
Here a ``GET`` on a stream path is parsed by uvicorn as usual; once its headers are complete
the gateway validates it and, if it is accepted, the transport is detached from uvicorn and
given to an :class:`~push_gateway.stream.SseConnection` (the same move uvicorn makes for a
WebSocket upgrade). From then on the hub writes the shared frame bytes straight into
``transport.write``. Every other request (health, metrics, presence, CORS preflight) goes to
the FastAPI app unchanged.
"""

import asyncio
import urllib.parse
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

from push_gateway.api.ws import WebSocketGateway
from push_gateway.domain.requests import STREAM_PATHS
from push_gateway.domain.ws_protocol import WS_PATH
from push_gateway.gateway import Gateway


class GatewayHttpProtocol(HttpToolsProtocol):
    """Set ``gateway`` on a subclass (see :func:`protocol_for`)."""

    gateway: ClassVar[Gateway]
    websockets: ClassVar[WebSocketGateway | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stream_request: tuple[str, bytes] | None = None

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
        if self.parser.get_method() == b"GET":
            parsed = httptools.parse_url(self.url)
            path = urllib.parse.unquote(parsed.path.decode("ascii", "replace"))
            if path in STREAM_PATHS or (path == WS_PATH and self.websockets is not None):
                self._stream_request = (path, parsed.query or b"")
                return
        if self.client is None:
            self.server = get_local_addr(self.transport)
            self.client = get_remote_addr(self.transport)
            self.scope["server"] = self.server
            self.scope["client"] = self.client
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._stream_request is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._stream_request is None:
            super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        if self._stream_request is None:  # another path: uvicorn's own WebSocket support
            super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        if self._stream_request is not None:
            return  # already handed over; anything more from the client is ignored
        super().data_received(data)
        if self._stream_request is not None:
            self._hand_over(*self._stream_request)

    def _hand_over(self, path: str, query: bytes) -> None:
        self.connections.discard(self)
        self._unset_keepalive_if_required()
        connection: asyncio.Protocol | None
        if path == WS_PATH and self.websockets is not None:
            connection = self.websockets.open(self.transport, self.url, self.headers)
        else:
            connection = self.gateway.open_stream(self.transport, path, query, self.headers)
        if connection is not None:
            self.transport.set_protocol(connection)
        self.parser = None  # type: ignore[assignment]
        self.scope = None  # type: ignore[assignment]


def protocol_for(
    gateway: Gateway, websockets: WebSocketGateway | None = None
) -> type[GatewayHttpProtocol]:
    """A protocol class bound to one gateway (uvicorn instantiates it per connection)."""
    return type(
        "BoundGatewayHttpProtocol",
        (GatewayHttpProtocol,),
        {"gateway": gateway, "websockets": websockets},
    )
