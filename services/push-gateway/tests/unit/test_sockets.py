"""A stream's writer over real sockets, on uvloop and on asyncio's own loop: frames reach
the client byte for byte and in order whether they go out with ``send(2)`` or through the
transport's buffer; a closed stream's writer never writes on a descriptor reused by the
next connection; TLS streams are written by their transport."""

import asyncio
import datetime
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import cast

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from push_gateway.adapters.sockets import SocketWriter, deliver, stream_writer
from push_gateway.stream import SseConnection

pytestmark = pytest.mark.skipif(SocketWriter is None, reason="the compiled writer is not built")

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Iterator[Callable[..., object]]:
    """Runs a coroutine function to completion on the loop under test."""
    loop = LOOPS[request.param]()
    yield lambda fn, *args: loop.run_until_complete(asyncio.wait_for(fn(*args), 30))
    loop.close()


class Accepted(asyncio.Protocol):
    """The server side of one connection: keeps its transport, reads nothing of note."""

    def __init__(self, sink: "asyncio.Queue[Accepted]") -> None:
        self.sink = sink
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        self.sink.put_nowait(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


@asynccontextmanager
async def server(
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[tuple[int, "asyncio.Queue[Accepted]"]]:
    accepted: asyncio.Queue[Accepted] = asyncio.Queue()
    srv = await asyncio.get_running_loop().create_server(
        lambda: Accepted(accepted), "127.0.0.1", 0, ssl=ssl_context
    )
    try:
        yield srv.sockets[0].getsockname()[1], accepted
    finally:
        srv.close()


async def connect(
    port: int, accepted: "asyncio.Queue[Accepted]", high_water: int = 1 << 30
) -> tuple[socket.socket, Accepted, asyncio.Transport]:
    """A client with a small receive buffer, the server side of its connection, and that
    side's transport (buffering up to ``high_water`` bytes before it pauses)."""
    client = socket.create_connection(("127.0.0.1", port))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    client.setblocking(False)
    side = await accepted.get()
    assert side.transport is not None
    side.transport.set_write_buffer_limits(high=high_water)
    return client, side, side.transport


def drain(client: socket.socket) -> bytes:
    """Everything the kernel holds for the client now, without waiting."""
    got = bytearray()
    while True:
        try:
            chunk = client.recv(1 << 20)
        except BlockingIOError:
            return bytes(got)
        if not chunk:
            return bytes(got)
        got += chunk


async def read_exactly(client: socket.socket, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        got += drain(client)
        await asyncio.sleep(0.001)
    return bytes(got)


def frames(start: int, count: int, size: int = 32 * 1024) -> list[bytes]:
    return [
        f"data: {n:08d}".encode().ljust(size - 2, b".") + b"\n\n"
        for n in range(start, start + count)
    ]


def test_frames_keep_their_order_across_a_full_socket_buffer(run: Callable[..., object]) -> None:
    """The client stops reading: frames pile up in the transport's buffer. The client then
    empties its socket while the loop has not yet flushed that buffer — a frame sent
    straight to the socket now would overtake the buffered ones."""

    async def scenario() -> None:
        async with server() as (port, accepted):
            client, _, transport = await connect(port, accepted)
            write = stream_writer(transport)
            assert type(write) is SocketWriter
            sent: list[bytes] = []
            batch = iter(frames(0, 10_000))
            while transport.get_write_buffer_size() == 0:
                frame = next(batch)
                write(frame)
                sent.append(frame)
            for frame in [next(batch) for _ in range(3)]:
                write(frame)
                sent.append(frame)
            received = drain(client)  # the loop has not run: the buffer is still unsent
            assert transport.get_write_buffer_size() > 0
            later = frames(20_000, 5)
            for frame in later:
                write(frame)
            sent += later
            expected = b"".join(sent)
            received += await read_exactly(client, len(expected) - len(received))
            assert received == expected
            client.close()

    run(scenario)


def test_writes_go_straight_to_the_socket_again_once_the_buffer_is_flushed(
    run: Callable[..., object],
) -> None:
    async def scenario() -> None:
        async with server() as (port, accepted):
            client, _, transport = await connect(port, accepted)
            write = stream_writer(transport)
            sent = frames(0, 200)
            for frame in sent:
                write(frame)
            assert transport.get_write_buffer_size() > 0
            received = await read_exactly(client, sum(map(len, sent)))
            while transport.get_write_buffer_size():  # noqa: ASYNC110 - no event to wait on
                await asyncio.sleep(0.001)
            write(b"data: direct\n\n")  # flushed: this one needs no loop iteration to leave
            assert transport.get_write_buffer_size() == 0
            await asyncio.sleep(0.01)
            assert received + drain(client) == b"".join(sent) + b"data: direct\n\n"
            client.close()

    run(scenario)


def test_a_closed_stream_never_writes_to_the_connection_that_reuses_its_descriptor(
    run: Callable[..., object],
) -> None:
    async def scenario() -> None:
        async with server() as (port, accepted):
            first_client, first, first_transport = await connect(port, accepted)
            stream = SseConnection(
                first_transport, (), {}, lambda *_: None, lambda _: None, 1 << 20, None
            )
            old_writer = stream.writer
            assert type(old_writer) is SocketWriter
            old_fd = old_writer.fd
            first_client.close()
            await first.lost  # the transport called connection_lost ...
            stream.connection_lost(None)  # ... which the stream gets in the gateway
            second_client, _, second_transport = await connect(port, accepted)
            assert second_transport.get_extra_info("socket").fileno() == old_fd
            try:
                old_writer(b"data: someone else's\n\n")
            except RuntimeError:
                pass  # the closed transport refuses it: fine, as long as nobody gets it
            second_transport.write(b"data: yours\n\n")
            assert await read_exactly(second_client, 13) == b"data: yours\n\n"
            await asyncio.sleep(0.01)
            assert drain(second_client) == b""
            second_client.close()

    run(scenario)


def test_a_client_that_reset_the_connection_is_closed_by_the_transport(
    run: Callable[..., object],
) -> None:
    async def scenario() -> None:
        async with server() as (port, accepted):
            client, side, transport = await connect(port, accepted)
            writers = {"gone": stream_writer(transport)}
            client.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            client.close()  # RST
            for _ in range(100):
                if side.lost.done():
                    break
                deliver(writers, b"data: x\n\n")
                await asyncio.sleep(0.005)
            assert isinstance(await side.lost, (ConnectionError, OSError, type(None)))

    run(scenario)


def test_the_fan_out_calls_writers_of_other_kinds_too() -> None:
    seen: list[bytes] = []
    deliver({"ws": seen.append, "other": seen.append}, b"frame")
    assert seen == [b"frame", b"frame"]


@contextmanager
def tls_context(tmp_path: Path) -> Iterator[tuple[ssl.SSLContext, ssl.SSLContext]]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client_context = ssl.create_default_context(cafile=tmp_path / "cert.pem")
    client_context.check_hostname = False
    yield server_context, client_context


def test_tls_streams_are_written_by_their_transport(
    run: Callable[..., object], tmp_path: Path
) -> None:
    """A TLS transport's ``socket`` is the raw TCP socket under the encryption: bytes sent
    on it would reach the client as plain text and break the TLS session."""

    async def scenario() -> None:
        with tls_context(tmp_path) as (server_context, client_context):
            async with server(server_context) as (port, accepted):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=client_context, server_hostname="localhost"
                )
                side = await accepted.get()
                assert side.transport is not None
                write = stream_writer(side.transport)
                assert type(write) is not SocketWriter
                write(b"data: sealed\n\n")
                assert await reader.readexactly(14) == b"data: sealed\n\n"
                writer.close()

    run(scenario)
