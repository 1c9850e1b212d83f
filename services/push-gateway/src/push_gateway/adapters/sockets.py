"""A stream's writer: ``send(2)`` on its socket where the compiled module is built and the
transport is a plain TCP or Unix socket transport (``_sockets.pyx`` says why), its
``transport.write`` otherwise (TLS, another transport, no C compiler at install)."""

import asyncio
import socket
from asyncio import selector_events
from typing import Final

import uvloop.loop

from push_gateway.domain.hub import Deliver, Writer, write_each

try:
    from push_gateway.adapters._sockets import SocketWriter as SocketWriter
    from push_gateway.adapters._sockets import deliver as _compiled_deliver
except ImportError:  # built without a C compiler (see setup.py)
    SocketWriter = None  # type: ignore[assignment,misc]
    #: the hub's fan-out loop (``ChannelHub(deliver=...)``)
    deliver: Deliver = write_each
else:
    deliver = _compiled_deliver

#: whether streams are written with ``send(2)`` (the gateway logs it at start)
COMPILED: Final = SocketWriter is not None


#: transport classes whose ``socket`` is written with no layer in between (a TLS
#: transport's ``socket`` is the raw one underneath: never written directly); uvloop is
#: the server's loop (``app.build_server``), asyncio's own is the tests' and tools'
_PLAIN: Final[tuple[type, ...]] = (
    selector_events._SelectorSocketTransport,  # type: ignore[attr-defined]  # noqa: SLF001
    uvloop.loop.TCPTransport,  # type: ignore[attr-defined]
    uvloop.loop.UnixTransport,  # type: ignore[attr-defined]
)


def stream_writer(transport: asyncio.Transport) -> Writer:
    """The writer every write to the stream goes through (see ``_sockets.pyx``)."""
    if SocketWriter is None or type(transport) not in _PLAIN:
        return transport.write
    if transport.get_extra_info("sslcontext") is not None:
        return transport.write
    sock: socket.socket | None = transport.get_extra_info("socket")
    if sock is None or sock.type != socket.SOCK_STREAM:
        return transport.write
    return SocketWriter(transport, sock.fileno())


def release_writer(writer: Writer) -> None:
    """The connection is closing: ``writer`` stops using its socket."""
    if SocketWriter is not None and type(writer) is SocketWriter:
        writer.release()
