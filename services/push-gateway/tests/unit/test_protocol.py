"""The HTTP protocol of the gateway's port, over real sockets with uvicorn (uvloop): stream
requests go to the gateway, every other request is served by uvicorn and the app as before
(it reads the socket addresses only for those)."""

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import cast

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from push_gateway.api.protocol import protocol_for
from push_gateway.domain.stats import GatewayStats
from push_gateway.gateway import Gateway
from slotstream_testkit.net import free_port

PAGE = "/api/book-now/schedule-updates"
ORIGIN = "https://app.example"
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"


@dataclass
class Opened:
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    #: the protocol that read the request (the transport's until the hand-over)
    reader: type


@dataclass
class RecordingGateway:
    """Stands in for :class:`Gateway`: records each stream request it is handed and opens
    the stream (the 200 head and one comment frame), as an accepted stream starts."""

    opened: list[Opened] = field(default_factory=list)
    stats: GatewayStats = field(default_factory=GatewayStats)

    def open_stream(
        self,
        transport: asyncio.Transport,
        path: str,
        query_string: bytes,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> asyncio.Protocol:
        reader = type(transport.get_protocol())
        self.opened.append(Opened(path, query_string, list(headers), reader))
        transport.write(STREAM_HEAD + b": opened " + path.encode() + b"\n\n")
        return asyncio.Protocol()  # an SSE client sends nothing more that matters


def whoami_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(CORSMiddleware, allow_origins=[ORIGIN], allow_methods=["GET"])

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, object]:
        client = request.client
        return {
            "client": client.host if client else None,
            "server": list(request.scope["server"] or []),
        }

    return app


@dataclass
class Served:
    port: int
    gateway: RecordingGateway


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    gateway = RecordingGateway()
    port = free_port()
    config = uvicorn.Config(
        whoami_app(),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=protocol_for(cast(Gateway, gateway)),
        lifespan="off",
        log_config=None,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(60):
            while not server.started:  # noqa: ASYNC110 - uvicorn sets a flag
                await asyncio.sleep(0.01)
        yield Served(port, gateway)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await serving


async def exchange(
    port: int, *pieces: bytes, until: bytes | None = None, then_wait: float = 0.0
) -> bytes:
    """Send ``pieces`` one at a time (each its own segment), then read until ``until`` is
    in the answer (and whatever else comes within ``then_wait`` seconds), or until the
    server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
        answer = b""
        async with asyncio.timeout(10):
            while until is None or until not in answer:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                answer += chunk
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(then_wait):
                while chunk := await reader.read(65536):
                    answer += chunk
        return answer
    finally:
        writer.close()


def stream_request(target: str = f"{PAGE}?instructorId=i1", *extra: bytes) -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: gw\r\nAccept: text/event-stream\r\n".encode()
        + b"".join(extra)
        + b"\r\n"
    )


async def test_app_requests_see_the_client_and_server_addresses(served: Served) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as client:
        for _ in range(2):  # the second request on the same kept-alive connection
            answer = (await client.get("/whoami")).json()
            assert answer == {"client": "127.0.0.1", "server": ["127.0.0.1", served.port]}
    assert served.gateway.opened == []


async def test_a_stream_request_in_pieces_is_handed_over_with_its_query_and_headers(
    served: Served,
) -> None:
    request = stream_request(
        f"{PAGE}?instructorId=i1", b"Last-Event-ID: s0-5\r\n", b"X-Real-IP: 203.0.113.7\r\n"
    )
    # a byte at a time at first (one read each, as a slow client's), then larger pieces
    pieces = (*(request[i : i + 1] for i in range(30)), request[30:60], request[60:])
    answer = await exchange(served.port, *pieces, until=b"\n\n")
    assert answer.startswith(STREAM_HEAD)
    [opened] = served.gateway.opened
    assert (opened.path, opened.query) == (PAGE, b"instructorId=i1")
    assert opened.headers == [
        (b"host", b"gw"),
        (b"accept", b"text/event-stream"),
        (b"last-event-id", b"s0-5"),
        (b"x-real-ip", b"203.0.113.7"),
    ]


async def test_a_percent_encoded_stream_path_is_handed_over_decoded(served: Served) -> None:
    await exchange(
        served.port,
        stream_request("/api/book-now/%73chedule-updates?instructorId=i1"),
        until=b"\n\n",
    )
    assert [o.path for o in served.gateway.opened] == [PAGE]


@pytest.mark.parametrize("pieces", [1, 8])
async def test_a_stream_request_with_a_very_large_header_is_still_served(
    served: Served, pieces: int
) -> None:
    cookie = b"Cookie: session=" + b"c" * 40_000 + b"\r\n"
    request = stream_request(PAGE + "?instructorId=i1", cookie)
    size = -(-len(request) // pieces)
    answer = await exchange(
        served.port, *(request[i : i + size] for i in range(0, len(request), size)), until=b"\n\n"
    )
    assert answer.startswith(STREAM_HEAD)
    [opened] = served.gateway.opened
    assert (b"cookie", cookie[8:-2]) in opened.headers


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /api/book-now/schedule-updates?instructorId=i1 HTTP/1.1 junk\r\n\r\n",
        b"GET /api/book-now/schedule-updates?instructorId=i1 HTTP/1.1\r\nHost gw\r\n\r\n",
        b"GET\x01 / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the plain port
    ],
)
async def test_a_malformed_request_is_answered_400_by_uvicorn(
    served: Served, request_bytes: bytes
) -> None:
    answer = await exchange(served.port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert answer.endswith(b"Invalid HTTP request received.")
    assert served.gateway.opened == []


async def test_a_stream_after_app_requests_on_one_kept_alive_connection(served: Served) -> None:
    whoami = b"GET /whoami HTTP/1.1\r\nHost: gw\r\n\r\n"
    answer = await exchange(served.port, whoami, whoami, stream_request(), until=b"\n\n")
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert answer.count(b'"client":"127.0.0.1"') == 2
    assert [o.path for o in served.gateway.opened] == [PAGE]


async def test_head_and_options_on_a_stream_path_are_the_apps(served: Served) -> None:
    target = f"{PAGE}?instructorId=i1"
    head = await exchange(
        served.port, f"HEAD {target} HTTP/1.1\r\nHost: gw\r\n\r\n".encode(), until=b"\r\n\r\n"
    )
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n")  # the app has no such route
    preflight = await exchange(
        served.port,
        f"OPTIONS {target} HTTP/1.1\r\nHost: gw\r\nOrigin: {ORIGIN}\r\n"
        "Access-Control-Request-Method: GET\r\n\r\n".encode(),
        until=b"\r\n\r\nOK",
    )
    assert preflight.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"access-control-allow-origin: {ORIGIN}\r\n".encode() in preflight
    assert served.gateway.opened == []


async def test_a_request_pipelined_behind_a_stream_request_does_not_reach_the_stream(
    served: Served,
) -> None:
    """A client may send anything after its stream request; none of it is served into
    the stream (main served the second request's response into the open SSE stream)."""
    answer = await exchange(
        served.port,
        stream_request() + b"GET /whoami HTTP/1.1\r\nHost: gw\r\n\r\n",
        until=b"\n\n",
        then_wait=0.5,
    )
    assert answer == STREAM_HEAD + f": opened {PAGE}\n\n".encode()
    [opened] = served.gateway.opened
    assert (b"host", b"gw") in opened.headers


async def test_a_stream_request_is_read_without_uvicorns_http_state(served: Served) -> None:
    """uvicorn's per-connection protocol (parser, scope, flow control, loggers) is built
    only for connections that carry app requests: in a connect storm hundreds of them at
    once set the gateway's peak memory, and building each took ~10 µs of the storm's CPU."""
    await exchange(served.port, stream_request(), until=b"\n\n")
    [opened] = served.gateway.opened
    assert not issubclass(opened.reader, HttpToolsProtocol)


async def test_each_request_head_on_a_kept_alive_connection_is_held_to_the_limit(
    served: Served,
) -> None:
    """Each head is counted from the end of the request before it: two 40 kB heads on
    one connection are served, the next one of 100 kB is refused ``431`` and the
    connection ended, not read into uvicorn's header list (and counted)."""
    large = b"GET /whoami HTTP/1.1\r\nHost: gw\r\nCookie: " + b"c" * 40_000 + b"\r\n\r\n"
    over = b"GET /whoami HTTP/1.1\r\nHost: gw\r\n" + b"a:b\r\n" * 20_000 + b"\r\n"
    answer = await exchange(served.port, large, large, over)
    assert re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", answer) == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 431 Request Header Fields Too Large",
    ]
    assert served.gateway.stats.heads_refused == 1
