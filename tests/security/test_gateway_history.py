"""Black-box: a push-gateway of the demo stack must not hand history, waits or streams to
anyone who asks (issue 10, items 3 and 4). Talks HTTP straight to a gateway, as an
attacker who reached it would; the Kafka broker is used only to make the log long."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from scripts.devstack import SCHEDULE_PARTITIONS, DevStack
from slotstream_contracts.channels import Channel
from slotstream_contracts.topics import SCHEDULE_TOPIC

pytestmark = pytest.mark.integration

PAGE = "/api/book-now/schedule-updates"
#: the gateway's default GATEWAY_MAX_RESUME_LAG is 4096 records per partition
LONGER_THAN_THE_BOUND = 4300
#: the gateway's default GATEWAY_MAX_STREAMS_PER_IP
STREAMS_PER_IP = 50
#: the gateway's default GATEWAY_CATCH_UP_TIMEOUT_SECONDS: how long a resume may wait
CATCH_UP_WAIT = 10.0


@dataclass
class RawStream:
    """One HTTP/1.1 stream request over a plain socket (so the source address can be chosen)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)

    async def frames(self, count: int, within: float = 5.0) -> list[tuple[str, str]]:
        """The next ``count`` events as ``(event, id)``, skipping comments and ``retry:``."""
        found: list[tuple[str, str]] = []
        deadline = time.monotonic() + within
        while len(found) < count:
            block = await asyncio.wait_for(
                self.reader.readuntil(b"\n\n"), max(0.01, deadline - time.monotonic())
            )
            fields = dict(
                line.partition(": ")[::2]
                for line in block.decode().strip("\n").split("\n")
                if not line.startswith(":")
            )
            if "event" in fields:
                found.append((fields["event"], fields.get("id", "")))
        return found

    def close(self) -> None:
        self.writer.close()


async def request(
    url: str, path: str, *, source: str = "127.0.0.1", within: float = 5.0
) -> RawStream:
    """Send the request from ``source``; the status and headers must arrive ``within``."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    reader, writer = await asyncio.open_connection(
        parts.hostname, parts.port, local_addr=(source, 0)
    )
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), within)).decode("latin-1")
    status_line, *lines = head.strip().split("\r\n")
    stream = RawStream(reader, writer, int(status_line.split(" ")[1]))
    stream.headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    return stream


@asynccontextmanager
async def streams() -> AsyncIterator[list[RawStream]]:
    opened: list[RawStream] = []
    try:
        yield opened
    finally:
        for stream in opened:
            stream.close()


def schedule_partition(instructor_id: str) -> int:
    """Where the instructor's schedule lives (Kafka's default partitioner, as the gateway)."""
    hashed: int = murmur2(Channel.schedule(instructor_id).record_key)
    return (hashed & 0x7FFFFFFF) % SCHEDULE_PARTITIONS


async def lengthen_partition(bootstrap: str, partition: int, records: int) -> None:
    """Records of a key nobody subscribes to: the partition's log grows past the bound."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        sends = [
            await producer.send(SCHEDULE_TOPIC, b"{}", key=b"sec-filler", partition=partition)
            for _ in range(records)
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def metric(gateway_url: str, sample: str) -> float:
    """One sample of the gateway's ``/metrics``, e.g. ``gateway_records_total``."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{gateway_url}/metrics")).text
    [value] = [line.split()[-1] for line in text.splitlines() if line.startswith(f"{sample} ")]
    return float(value)


async def records_ingested(gateway_url: str) -> float:
    """Kafka records the gateway's hub has read."""
    return await metric(gateway_url, "gateway_records_total")


async def resumes_refused(gateway_url: str) -> float:
    """Resume points the gateway answered with a fresh start at once."""
    return await metric(gateway_url, 'gateway_resumes_total{source="refused"}')


async def test_a_guest_resuming_from_the_start_of_the_log_gets_a_snapshot(
    stack: DevStack,
) -> None:
    instructor = stack.user("instructor").id
    partition = schedule_partition(instructor)
    before = await records_ingested(stack.gateway_url(1))
    await lengthen_partition(stack.bootstrap_servers, partition, LONGER_THAN_THE_BOUND)
    async with asyncio.timeout(60):  # the gateway has read them all (not: a fixed 1 s)
        while await records_ingested(stack.gateway_url(1)) < before + LONGER_THAN_THE_BOUND:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    async with streams() as opened:
        stream = await request(
            stack.gateway_url(1), f"{PAGE}?instructorId={instructor}&lastEventId=s{partition}:-1"
        )
        opened.append(stream)
        assert stream.status == 200
        [(event, frame_id)] = await stream.frames(1)
    # not the instructor's history from offset 0, but the current state
    assert event == "snapshot"
    assert int(frame_id.split(":")[1]) >= LONGER_THAN_THE_BOUND - 1


async def test_an_id_ahead_of_the_log_is_answered_at_once(stack: DevStack) -> None:
    """Refused on the spot (counted as such), not after waiting for the gateway to reach
    that position: the gateway's GATEWAY_CATCH_UP_TIMEOUT_SECONDS (10 s) would show."""
    instructor = stack.user("instructor").id
    partition = schedule_partition(instructor)
    refused = await resumes_refused(stack.gateway_url(2))
    started = time.monotonic()
    async with streams() as opened:
        stream = await request(
            stack.gateway_url(2),
            f"{PAGE}?instructorId={instructor}&lastEventId=s{partition}:999999999",
            within=CATCH_UP_WAIT / 2,
        )
        opened.append(stream)
        assert stream.status == 200
        left = CATCH_UP_WAIT / 2 - (time.monotonic() - started)
        [(event, _)] = await stream.frames(1, within=left)
    assert event == "snapshot"
    assert await resumes_refused(stack.gateway_url(2)) == refused + 1


async def test_one_address_gets_429_beyond_its_stream_limit_while_another_is_served(
    stack: DevStack,
) -> None:
    instructor = stack.user("instructor").id
    path = f"{PAGE}?instructorId={instructor}"
    url = stack.gateway_url(2)
    async with streams() as opened:
        refused = None
        for _ in range(STREAMS_PER_IP + 10):
            # an address of its own: the gateway's connect allowance it uses up (refilled
            # at 10/s) must not refuse the next test's streams from 127.0.0.1
            stream = await request(url, path, source="127.0.0.4")
            opened.append(stream)
            if stream.status != 200:
                refused = stream
                break
        assert refused is not None, f"{len(opened)} streams from one address, none refused"
        assert refused.status == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["content-type"] == "application/problem+json"
        assert len(opened) - 1 <= STREAMS_PER_IP
        # a second client, another address, same gateway: served as usual
        other = await request(url, path, source="127.0.0.2")
        opened.append(other)
        assert other.status == 200
        [(event, _)] = await other.frames(1)
        assert event == "snapshot"
