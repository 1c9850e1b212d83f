"""Connections that never finish their first request head: a real gateway (uvicorn, uvloop,
in a thread) closes them after ``GATEWAY_REQUEST_HEAD_TIMEOUT_SECONDS``, while a stream
opened meanwhile goes on as if they were not there; heads too large are refused at once,
and a request body (no route reads one) does not hold its connection."""

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import orjson
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from push_gateway.app import build_server
from slotstream_contracts.settings import TopicSettings
from slotstream_testkit.kafka import KafkaEndpoint

from .conftest import FakeBookingApi, ServerThread, gateway_settings

pytestmark = pytest.mark.integration

PAGE = "/api/book-now/schedule-updates"
HEAD_TIMEOUT = 1.0
#: the timeout, the once-a-second sweep, and slack for a loaded machine
CLOSED_WITHIN = HEAD_TIMEOUT + 1.0 + 1.5
SILENT = 20


@pytest.fixture(scope="module")
def gateway(
    kafka: KafkaEndpoint, topics: TopicSettings, booking_api: FakeBookingApi
) -> Iterator[ServerThread]:
    settings = gateway_settings(
        kafka,
        topics,
        booking_api,
        request_head_timeout_seconds=HEAD_TIMEOUT,
        heartbeat_seconds=0.5,
    )
    server = ServerThread(build_server(settings), settings.port).start("/readyz")
    try:
        yield server
    finally:
        server.stop()


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server ends the connection within ``within`` seconds (it sends nothing
    before: no request was made)."""
    try:
        async with asyncio.timeout(within):
            return await reader.read(65536) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def next_event(events: AsyncIterator[ServerSentEvent]) -> ServerSentEvent:
    """The next event with a name or data (the stream's first frame is a bare ``retry``)."""
    async for event in events:
        if event.event != "message" or event.data:
            return event
    raise AssertionError("the stream ended")


@contextlib.asynccontextmanager
async def dribbling(port: int, head: bytes) -> AsyncIterator[asyncio.StreamReader]:
    """A connection sending ``head`` (never complete) one byte every 0.3 s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def dribble() -> None:
        with contextlib.suppress(ConnectionError):
            for i in range(len(head)):
                writer.write(head[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.3)

    task = asyncio.create_task(dribble())
    try:
        yield reader
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        writer.close()


async def test_connections_without_a_complete_request_head_are_closed_streams_go_on(
    gateway: ServerThread,
) -> None:
    silent = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(SILENT)]
    stream_head = f"GET {PAGE}?instructorId=idle-1 HTTP/1.1\r\nHost: gw\r\nX-Pad: ".encode()
    post_head = b"POST /healthz HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"p" * 64
    try:
        async with (
            dribbling(gateway.port, stream_head + b"s" * 64) as stream_dribbler,
            dribbling(gateway.port, post_head) as app_dribbler,
            httpx.AsyncClient(timeout=10) as client,
            aconnect_sse(client, "GET", f"{gateway.url}{PAGE}?instructorId=idle-1") as source,
        ):
            events = source.aiter_sse()
            first = await next_event(events)
            assert first.event == "snapshot"
            outcomes = await asyncio.gather(
                *(closed_by_server(reader, CLOSED_WITHIN) for reader, _ in silent),
                closed_by_server(stream_dribbler, CLOSED_WITHIN),
                closed_by_server(app_dribbler, CLOSED_WITHIN),
            )
            still_open = outcomes.count(False)
            assert still_open == 0, (
                f"{still_open} of {len(outcomes)} connections without a complete request "
                f"head still open {CLOSED_WITHIN} s after connecting "
                f"(GATEWAY_REQUEST_HEAD_TIMEOUT_SECONDS={HEAD_TIMEOUT})"
            )
            # the stream opened meanwhile is still served: its next event comes (a heartbeat
            # every 0.5 s, or the presence count, whichever is due first)
            async with asyncio.timeout(5):
                after = await next_event(events)
            assert after.event in ("heartbeat", "presence")
            metrics = (await client.get(f"{gateway.url}/metrics")).text
    finally:
        for _, writer in silent:
            writer.close()
    assert f"gateway_request_head_timeouts_total {float(SILENT + 2)}" in metrics


async def test_a_kept_alive_connection_idle_after_its_request_is_not_closed(
    gateway: ServerThread,
) -> None:
    """Its head was complete: the keep-alive timeout (75 s) is what ends it, not the head
    timeout (the edge's upstream keep-alive pool relies on that)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    request = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
    try:
        for _ in range(2):
            writer.write(request)
            await writer.drain()
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if b"content-length" in line
            )
            await reader.readexactly(length)
            assert not await closed_by_server(reader, CLOSED_WITHIN)
    finally:
        writer.close()


def rss_bytes() -> int:
    """This process's resident set (the gateway runs in a thread of it)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Refusal:
    answer: bytes
    #: seconds from the first byte sent until the server ended the connection (None: not)
    ended_after: float | None
    sent: int
    #: the most this process's resident set grew meanwhile
    rss_growth: int


async def send_head(port: int, head: bytes, within: float) -> Refusal:
    """Send ``head`` in 64 kB pieces as fast as the server reads them, reading what it
    answers until it ends the connection (or ``within`` seconds)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start, sent, peak = rss_bytes(), 0, 0

    async def send() -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionError):
            for i in range(0, len(head), 65536):
                writer.write(head[i : i + 65536])
                await writer.drain()
                sent += len(head[i : i + 65536])

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_bytes())
            await asyncio.sleep(0.02)

    sending, sampling = asyncio.create_task(send()), asyncio.create_task(sample())
    began = time.monotonic()
    answer, ended_after = b"", None
    try:
        async with asyncio.timeout(within):
            while chunk := await reader.read(65536):
                answer += chunk
            ended_after = time.monotonic() - began
    except TimeoutError:
        pass
    except ConnectionError:
        ended_after = time.monotonic() - began
    finally:
        for task in (sending, sampling):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        writer.close()
    return Refusal(answer, ended_after, sent, max(peak, rss_bytes()) - start)


#: several MB of the shortest header lines: uvicorn keeps two bytes objects and a tuple
#: (~130 bytes) per line, so buffered they would grow the process by ~25x their size
FLOOD = b"a:b\r\n" * (4 * 1024 * 1024 // 5)


@pytest.mark.parametrize(
    "head",
    [
        f"GET {PAGE}?instructorId=big-1 HTTP/1.1\r\nHost: gw\r\nCookie: ".encode()
        + b"c" * 100_000
        + b"\r\n\r\n",
        f"GET {PAGE}?instructorId=big-1 HTTP/1.1\r\nHost: gw\r\n".encode() + FLOOD,
        b"POST /healthz HTTP/1.1\r\nHost: gw\r\n" + FLOOD,
    ],
    ids=["stream-get-100kB-cookie", "stream-get-4MB-of-lines", "post-4MB-of-lines"],
)
async def test_a_request_head_over_the_limit_is_refused_431_at_once(
    gateway: ServerThread, head: bytes
) -> None:
    """Answered ``431`` (problem+json) and ended as soon as the head passes 64 kB: not
    served, and not buffered (the gateway's memory does not grow with what is sent) until
    the head timeout closes it."""
    refusal = await send_head(gateway.port, head, CLOSED_WITHIN)
    status, _, body = refusal.answer.partition(b"\r\n\r\n")
    refused_at_once = (
        refusal.answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        and refusal.ended_after is not None
        and refusal.ended_after < HEAD_TIMEOUT
        and refusal.rss_growth < 16 * 1024 * 1024
    )
    assert refused_at_once, (
        f"answered {refusal.answer[:60]!r}, connection ended after {refusal.ended_after} s, "
        f"{refusal.sent} bytes of a {len(head)}-byte head sent, the process grew by "
        f"{refusal.rss_growth / 2**20:.1f} MB meanwhile"
    )
    assert b"content-type: application/problem+json\r\n" in status
    assert orjson.loads(body)["status"] == 431


@pytest.mark.parametrize(
    "dribble",
    [b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"p" * 64, b"\r\n" * 64],
    ids=["second-head", "blank-lines"],
)
async def test_a_kept_alive_connections_next_request_head_dribbled_is_closed(
    gateway: ServerThread, dribble: bytes
) -> None:
    """After a first request on a kept-alive connection, its next head (or the blank
    lines a client may send before it) dribbled a byte at a time is closed after the head
    timeout as a first head is: uvicorn's keep-alive timer ends at its first byte and no
    other timer follows."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
    try:
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            await reader.readuntil(b"}")
        began = time.monotonic()
        for i in range(len(dribble)):
            writer.write(dribble[i : i + 1])
            await writer.drain()
            if await closed_by_server(reader, 0.3):
                break
        open_for = time.monotonic() - began
        assert open_for < CLOSED_WITHIN, (
            f"the next request head, dribbled a byte every 0.3 s, "
            f"{'closed' if i + 1 < len(dribble) else 'still open'} {open_for:.1f} s after "
            f"its first byte (GATEWAY_REQUEST_HEAD_TIMEOUT_SECONDS={HEAD_TIMEOUT})"
        )
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """One response (head and its ``content-length`` body)."""
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if b"content-length" in line
        )
        return head + await reader.readexactly(length)


async def test_a_request_body_sent_after_its_answer_does_not_hold_the_connection(
    gateway: ServerThread,
) -> None:
    """No route reads a body: a request with one is answered ``Connection: close`` and
    the connection ended, so a client dribbling the body after reading its answer (which
    ends uvicorn's keep-alive timer, and no other timer follows) is not held for ever."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"POST /healthz HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000000\r\n\r\n")
    try:
        answer = await read_answer(reader)
        assert answer.startswith(b"HTTP/1.1 405"), answer
        began, closed = time.monotonic(), False
        while not closed and time.monotonic() - began < CLOSED_WITHIN:
            with contextlib.suppress(ConnectionError):
                writer.write(b"b")
                await writer.drain()
            closed = await closed_by_server(reader, 0.5)
        open_for = time.monotonic() - began
        status = answer.partition(b"\r\n")[0]
        assert closed, (
            f"a body dribbled a byte every 0.5 s after its answer ({status!r}) still open "
            f"{open_for:.1f} s after its first byte"
        )
        assert b"\r\nconnection: close\r\n" in answer.lower()
    finally:
        writer.close()


async def test_a_request_body_sent_at_once_gets_its_whole_answer_before_the_end(
    gateway: ServerThread,
) -> None:
    """The connection of a request with a 1 MB body the route does not read is ended
    after the answer without a reset (what the client still sends is read and dropped
    first): the client reads the whole ``405``, then the end of the connection."""
    body = b"b" * 1_000_000
    refusal = await send_head(
        gateway.port,
        b"POST /healthz HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
        CLOSED_WITHIN,
    )
    head, _, answered = refusal.answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405"), refusal.answer[:60]
    assert orjson.loads(answered) == {"detail": "Method Not Allowed"}
    assert refusal.ended_after is not None
    assert refusal.ended_after < CLOSED_WITHIN


async def test_a_refused_request_head_is_counted(gateway: ServerThread) -> None:
    """Each ``431`` shows in ``gateway_request_heads_refused_total`` (one log line a
    sweep says how many, so a flood of them cannot flood the log)."""

    def refused(metrics: str) -> float:
        found = re.search(r"^gateway_request_heads_refused_total (\S+)$", metrics, re.MULTILINE)
        assert found, "gateway_request_heads_refused_total is not in /metrics"
        return float(found[1])

    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        before = refused((await client.get("/metrics")).text)
        await send_head(gateway.port, b"GET /healthz HTTP/1.1\r\n" + FLOOD, CLOSED_WITHIN)
        after = refused((await client.get("/metrics")).text)
    assert after - before == 1
