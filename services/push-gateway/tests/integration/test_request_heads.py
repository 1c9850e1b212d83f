"""Connections that never finish their first request head: a real gateway (uvicorn, uvloop,
in a thread) closes them after ``GATEWAY_REQUEST_HEAD_TIMEOUT_SECONDS``, while a stream
opened meanwhile goes on as if they were not there."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import httpx
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
            # the stream opened meanwhile is still served (heartbeats every 0.5 s)
            async with asyncio.timeout(5):
                after = await next_event(events)
            assert after.event == "heartbeat"
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
