"""The snapshot fetch's keep-alive HTTP/1.1 client, against a real local server."""

import asyncio
import importlib.abc
import importlib.machinery
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType

import httpcore._synchronization
import pytest

from push_gateway.adapters.keepalive import KeepAliveClient
from push_gateway.adapters.snapshots import (
    HttpSnapshotSource,
    SnapshotNotFound,
    SnapshotUnavailable,
)
from push_gateway.testing import snapshot

Answer = Callable[[bytes], bytes | None]
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


def ok(body: bytes, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "content-type: application/json", f"content-length: {len(body)}"]
    return ("\r\n".join([*head, *extra]) + "\r\n\r\n").encode() + body


@dataclass
class Origin:
    """Answers each request head with ``answer(head)`` (None: never answer)."""

    answer: Answer
    heads: list[bytes] = field(default_factory=list)
    connections: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    port: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                answer = self.answer(head)
                if answer is not None:
                    writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def drop_idle(self) -> None:
        for writer in self.writers:
            writer.close()


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    found = Origin(lambda _: ok(b'{"a":1}'))
    server = await asyncio.start_server(found.serve, "127.0.0.1", 0)
    found.port = server.sockets[0].getsockname()[1]
    yield found
    server.close()
    found.drop_idle()


async def test_answers_and_keeps_the_connection(origin: Origin) -> None:
    client = KeepAliveClient(f"http://127.0.0.1:{origin.port}/base/", timeout=30)
    try:
        for _ in range(3):
            answer = await client.get("/api/x")
            assert (answer.status_code, answer.content) == (200, b'{"a":1}')
    finally:
        await client.aclose()
    assert origin.connections == 1
    assert origin.heads[0].startswith(b"GET /base/api/x HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{origin.port}".encode() in origin.heads[0]


async def test_concurrent_requests_use_their_own_connections(origin: Origin) -> None:
    client = KeepAliveClient(f"http://127.0.0.1:{origin.port}", timeout=30, max_idle=2)
    try:
        answers = await asyncio.gather(*(client.get(f"/n{n}") for n in range(5)))
        assert [a.status_code for a in answers] == [200] * 5
        await client.get("/again")
    finally:
        await client.aclose()
    assert origin.connections == 5  # the 6th request reused one of the 2 kept


async def test_a_connection_the_server_closed_while_idle_is_replaced(origin: Origin) -> None:
    client = KeepAliveClient(f"http://127.0.0.1:{origin.port}", timeout=30)
    try:
        assert (await client.get("/one")).status_code == 200
        origin.drop_idle()
        assert (await client.get("/two")).content == b'{"a":1}'
    finally:
        await client.aclose()
    assert origin.connections == 2


async def test_chunked_answers_and_connection_close(origin: Origin) -> None:
    origin.answer = lambda _: (
        b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    client = KeepAliveClient(f"http://127.0.0.1:{origin.port}", timeout=30)
    try:
        for _ in range(2):
            answer = await client.get("/missing")
            assert (answer.status_code, answer.content) == (404, b"abcde")
    finally:
        await client.aclose()
    assert origin.connections == 2  # "connection: close" is honoured


async def test_no_answer_times_out_and_no_server_is_an_os_error(origin: Origin) -> None:
    origin.answer = lambda _: None
    client = KeepAliveClient(f"http://127.0.0.1:{origin.port}", timeout=0.2)
    with pytest.raises(TimeoutError):
        await client.get("/silent")
    await client.aclose()
    origin.drop_idle()
    closed = KeepAliveClient("http://127.0.0.1:9", timeout=30)  # discard port: refused
    with pytest.raises(ConnectionRefusedError):
        await closed.get("/x")


async def test_snapshot_source_over_the_keep_alive_client(origin: Origin) -> None:
    body = snapshot("i1", []).model_dump_json(by_alias=True).encode()
    origin.answer = lambda head: ok(body) if b"/i1/" in head else NOT_FOUND
    client = KeepAliveClient(f"http://127.0.0.1:{origin.port}", timeout=30)
    try:
        source = HttpSnapshotSource(client)
        assert (await source.fetch("i1")).instructor_id == "i1"
        with pytest.raises(SnapshotNotFound):
            await source.fetch("i2")
    finally:
        await client.aclose()
    unreachable = HttpSnapshotSource(KeepAliveClient("http://127.0.0.1:9", timeout=30))
    with pytest.raises(SnapshotUnavailable):
        await unreachable.fetch("i1")


class _Recorder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.asked: list[str] = []

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,  # noqa: ARG002 - the finder protocol's
        target: ModuleType | None = None,  # noqa: ARG002
    ) -> importlib.machinery.ModuleSpec | None:
        self.asked.append(fullname)
        return None


async def test_httpx_requests_search_no_module_per_call() -> None:
    """httpcore asks ``import sniffio`` on every lock, event and cancel-shield; anyio 4.x no
    longer brings sniffio, and a failed import scans sys.path each time (~75 µs)."""
    recorder = _Recorder()
    sys.meta_path.insert(0, recorder)
    try:
        for _ in range(3):
            httpcore._synchronization.current_async_library()
    finally:
        sys.meta_path.remove(recorder)
    assert recorder.asked == []
