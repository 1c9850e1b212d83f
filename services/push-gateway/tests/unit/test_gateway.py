"""The gateway's stream handling over real sockets (socketpairs), with in-memory fakes for
the booking-api, Kafka history and presence."""

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import timedelta

import orjson
import pytest
from aiokafka.partitioner import murmur2
from pydantic import SecretStr

from push_gateway.adapters.kafka import FakeHistory, FakeLogBounds
from push_gateway.adapters.presence import FakePresenceBus, PresenceTable
from push_gateway.adapters.snapshots import CoalescingSnapshots, FakeSnapshotSource, TakenSnapshot
from push_gateway.adapters.tickets import (
    MAX_REDEMPTIONS_IN_FLIGHT,
    MAX_REDEMPTIONS_WAITING,
    FakeTicketRedeemer,
)
from push_gateway.app import build_gateway
from push_gateway.config import Settings
from push_gateway.domain.catch_up import snapshot_frame
from push_gateway.domain.hub import ChannelHub, Record
from push_gateway.stream import SseConnection, StreamState
from push_gateway.testing import (
    FakeRecord,
    booking_event,
    notification_event,
    record_of,
    resync_event,
    slot,
    slot_event,
    snapshot,
)
from slotstream_contracts.auth import JwtSettings, Principal, Role, mint_token
from slotstream_contracts.channels import Channel, ChannelKind
from slotstream_contracts.entities import Audience, ScheduleSnapshot
from slotstream_contracts.topics import NOTIFICATIONS_TOPIC, SCHEDULE_TOPIC

PAGE = "/api/book-now/schedule-updates"
EVENTS = "/v1/events"
JWT = JwtSettings(secret=SecretStr("unit-secret-5e0b9c2d7f1a4e8b6c3d9a0f"), leeway_seconds=0)
#: ``exp`` is whole seconds, so a token minted for 1 s ends 0-1 s later (sometimes before
#: its stream has opened); one minted for 2 s lives more than a second
SHORT_TTL = timedelta(seconds=2)


@dataclass
class Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int = 0
    head: str = ""

    async def start(self) -> "Client":
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        self.head = head.decode()
        self.status = int(self.head.split(" ")[1])
        return self

    async def events(self, count: int) -> list[dict[str, str]]:
        found: list[dict[str, str]] = []
        while len(found) < count:
            block = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), 5)
            fields: dict[str, str] = {}
            for line in block.decode().strip("\n").split("\n"):
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value
            if "event" in fields:
                found.append(fields)
        return found

    async def rest(self) -> bytes:
        return await asyncio.wait_for(self.reader.read(), 5)


class Harness:
    def __init__(self, settings: Settings) -> None:
        self.hub = ChannelHub(
            {ChannelKind.SCHEDULE: SCHEDULE_TOPIC, ChannelKind.NOTIFICATIONS: NOTIFICATIONS_TOPIC},
            ring_size=8,
        )
        for p in range(2):
            self.hub.assign(SCHEDULE_TOPIC, p, 0, 2)
        self.hub.assign(NOTIFICATIONS_TOPIC, 0, 0, 1)
        self.source = FakeSnapshotSource({"i1": snapshot("i1", [slot("i1", "s1", 2)])})
        self.history = FakeHistory()
        self.tickets = FakeTicketRedeemer()
        self.gateway = build_gateway(
            settings,
            self.hub,
            CoalescingSnapshots(self.source),
            self.history,
            FakePresenceBus("g1", PresenceTable(10)),
            tickets=self.tickets,
        )
        self.offsets: dict[int, int] = {}

    @property
    def part(self) -> int:
        return self.hub.partition_key(Channel.schedule("i1"))[1]

    def produce(self, *records: FakeRecord) -> None:
        self.history.log.setdefault((SCHEDULE_TOPIC, self.part), []).extend(records)
        self.hub.ingest(SCHEDULE_TOPIC, self.part, list(records))

    def slot_records(self, versions: range, slot_id: str = "s1") -> list[FakeRecord]:
        records = []
        for version in versions:
            offset = self.offsets.get(self.part, 0)
            self.offsets[self.part] = offset + 1
            records.append(record_of(slot_event("i1", slot_id, version), offset))
        return records

    async def connect(
        self,
        query: str = "instructorId=i1",
        headers: list[tuple[bytes, bytes]] | None = None,
        stalled: bool = False,
        path: str = PAGE,
        small_buffer: bool = False,
    ) -> Client:
        """``small_buffer`` (implied by ``stalled``): the socket holds only a few kB, so
        what the client has not read yet waits in the server's transport."""
        server_sock, client_sock = socket.socketpair()
        if stalled or small_buffer:
            server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, server_sock)
        connection = self.gateway.open_stream(transport, path, query.encode(), headers or [])
        if connection is not None:
            transport.set_protocol(connection)
        if stalled:  # nobody reads this socket until the test says so
            self.stalled_sockets.append(client_sock)
            return Client(asyncio.StreamReader(), None)  # type: ignore[arg-type]
        # a frame may be a snapshot of megabytes
        reader, writer = await asyncio.open_connection(sock=client_sock, limit=1 << 23)
        self._writers.append(writer)
        return Client(reader, writer)

    async def drain_stalled(self) -> bytes:
        sock = self.stalled_sockets[-1]
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        chunks = []
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), 5):
            chunks.append(chunk)
        return b"".join(chunks)

    _writers: list[asyncio.StreamWriter]
    stalled_sockets: list[socket.socket]


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness(Settings(max_connections=3, max_pending_bytes=32_768, retry_ms=1500, jwt=JWT))
    h._writers = []
    h.stalled_sockets = []
    try:
        yield h
    finally:
        await h.gateway.shutdown()
        for writer in h._writers:
            writer.close()
        for sock in h.stalled_sockets:
            sock.close()


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


def data(event: dict[str, str]) -> dict[str, object]:
    loaded: dict[str, object] = orjson.loads(event["data"])
    return loaded


async def test_stream_opens_with_headers_retry_and_snapshot(harness: Harness) -> None:
    client = await (await harness.connect()).start()
    assert client.status == 200
    assert "content-type: text/event-stream" in client.head
    assert "cache-control: no-store" in client.head
    assert "x-accel-buffering: no" in client.head
    assert await client.reader.readuntil(b"\n\n") == b"retry: 1500\n\n"
    [first] = await client.events(1)
    assert first["event"] == "snapshot"
    assert first["id"] == f"s{harness.part}:-1"
    assert data(first)["channel"] == "instructors/i1/schedule"


async def test_deltas_during_the_snapshot_fetch_follow_it_only_when_newer(harness: Harness) -> None:
    harness.source.gate = asyncio.Event()
    pending = asyncio.create_task(harness.connect())
    async with asyncio.timeout(5):  # the fetch has begun: later records follow the snapshot
        while not harness.source.fetches:  # noqa: ASYNC110
            await asyncio.sleep(0)
    harness.produce(*harness.slot_records(range(1, 4)))  # s1 v1..v3; snapshot holds v2
    harness.source.gate.set()
    client = await (await pending).start()
    events = await client.events(2)
    assert [e["event"] for e in events] == ["snapshot", "slot"]
    assert data(events[1])["version"] == 3
    assert events[1]["id"] == f"s{harness.part}:2"
    harness.produce(*harness.slot_records(range(4, 5)))
    [live] = await client.events(1)
    assert data(live)["version"] == 4


async def test_a_shared_snapshot_is_followed_by_the_records_since_it_was_taken(
    harness: Harness,
) -> None:
    first = await (await harness.connect()).start()
    [snap] = await first.events(1)
    harness.produce(*harness.slot_records(range(1, 5)))  # s1 v1..v4; the snapshot holds v2
    await first.events(4)
    late = await (await harness.connect()).start()  # reuses the snapshot taken before
    events = await late.events(3)
    assert [e["event"] for e in events] == ["snapshot", "slot", "slot"]
    assert events[0]["id"] == snap["id"]  # the position the shared snapshot covers
    assert [data(e)["version"] for e in events[1:]] == [3, 4]
    assert harness.source.fetches == ["i1"]


async def test_records_after_a_shared_snapshot_survive_a_slow_fetch_of_another_channel(
    harness: Harness,
) -> None:
    """A two-channel stream reuses i1's snapshot while i2's is still being fetched; the
    ring moves past that snapshot meanwhile. The record between it and the stream's start
    still follows it (on main: the stream got both snapshots and never s1 v3)."""
    harness.source.snapshots["i2"] = snapshot("i2", [])
    first = await (await harness.connect()).start()
    await first.events(1)  # i1's snapshot (s1 v2) is taken and kept for reuse
    harness.produce(*harness.slot_records(range(3, 4)))  # s1 v3, after that snapshot
    harness.source.gate = asyncio.Event()  # i2's fetch is held open
    query = "channel=instructors/i1/schedule&channel=instructors/i2/schedule"
    ahead = [(b"last-event-id", b"s0:999999.s1:999999")]  # refused: both get snapshots
    pending = asyncio.create_task(harness.connect(query, ahead, path=EVENTS))
    async with asyncio.timeout(5):
        while "i2" not in harness.source.fetches:  # noqa: ASYNC110
            await asyncio.sleep(0)
    # other instructors' records fill the ring (8) past i1's snapshot
    harness.produce(*(record_of(slot_event("i9", f"x{n}", 1), 1 + n) for n in range(10)))
    harness.source.gate.set()
    client = await (await pending).start()
    harness.produce(*harness.slot_records(range(4, 5)))  # live: after the stream's start
    events = await client.events(3)
    assert [(e["event"], data(e).get("version")) for e in events] == [
        ("snapshot", None),  # i1's
        ("snapshot", None),  # i2's (every snapshot first: only the last has an id)
        ("slot", 3),  # what happened to i1 since its snapshot
    ]
    [live] = await client.events(1)
    assert data(live)["version"] == 4


async def open_stream_directly(harness: Harness) -> tuple[SseConnection, socket.socket]:
    """``open_stream`` called here (not behind ``connect``'s awaits): its state on return."""
    server_sock, client_sock = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, server_sock)
    connection = harness.gateway.open_stream(transport, PAGE, b"instructorId=i1", [])
    assert connection is not None
    transport.set_protocol(connection)
    return connection, client_sock


async def reading(harness: Harness, client_sock: socket.socket) -> Client:
    reader, writer = await asyncio.open_connection(sock=client_sock)
    harness._writers.append(writer)
    return Client(reader, writer)


async def test_a_stream_whose_shared_snapshot_is_at_hand_is_live_at_once(
    harness: Harness,
) -> None:
    """No task and no await for the streams of a connect storm after the first per channel:
    the stream is written and live when ``open_stream`` returns, with the same frames."""
    first = await (await harness.connect()).start()
    [snap] = await first.events(1)
    assert next(iter(harness.gateway.connections)).state is StreamState.LIVE
    harness.produce(*harness.slot_records(range(1, 4)))  # s1 v1..v3; the snapshot holds v2
    await first.events(3)
    connection, client_sock = await open_stream_directly(harness)
    assert connection.state is StreamState.LIVE
    assert connection.headers_sent
    late = await (await reading(harness, client_sock)).start()
    events = await late.events(2)
    assert [e["event"] for e in events] == ["snapshot", "slot"]
    assert events[0]["id"] == snap["id"]
    assert data(events[1])["version"] == 3
    assert harness.source.fetches == ["i1"]


async def test_a_stream_without_its_snapshot_at_hand_waits_for_the_fetch(
    harness: Harness,
) -> None:
    harness.source.gate = asyncio.Event()
    connection, client_sock = await open_stream_directly(harness)
    assert connection.state is StreamState.CATCHING_UP
    harness.source.gate.set()
    [first] = await (await (await reading(harness, client_sock)).start()).events(1)
    assert first["event"] == "snapshot"
    assert connection.state.value == "live"  # (mypy keeps the narrowing above)


async def test_streams_arriving_during_a_fetch_wait_for_it_without_a_task_each(
    harness: Harness,
) -> None:
    """A connect storm's streams of one channel, before its first snapshot arrived: the
    first stream starts the fetch, the others wait on that fetch too (no task, no coroutine
    frames each) and get the same frames: snapshot, then the newer deltas."""
    harness.source.gate = asyncio.Event()
    first, first_sock = await open_stream_directly(harness)
    second, second_sock = await open_stream_directly(harness)
    assert len(harness.gateway._tasks) == 0  # noqa: SLF001
    assert second.state is StreamState.CATCHING_UP
    harness.produce(*harness.slot_records(range(1, 4)))  # s1 v1..v3; the snapshot holds v2
    harness.source.gate.set()
    for sock in (first_sock, second_sock):
        events = await (await (await reading(harness, sock)).start()).events(2)
        assert [e["event"] for e in events] == ["snapshot", "slot"]
        assert data(events[1])["version"] == 3
    assert {first.state.value, second.state.value} == {"live"}  # (mypy keeps the narrowing)
    assert harness.source.fetches == ["i1"]


async def test_a_burst_of_streams_before_any_fetch_waits_for_one_fetch_without_tasks(
    harness: Harness,
) -> None:
    """The requests of a connect storm are read many per loop turn: the first stream of a
    channel starts its snapshot fetch at once, so the others of that turn wait on it too
    instead of each getting a task and coroutine frames (several kB each, the storm's peak
    heap, which the process keeps)."""
    harness.source.gate = asyncio.Event()
    loop = asyncio.get_running_loop()
    pairs = [socket.socketpair() for _ in range(3)]
    transports = [
        (await loop.connect_accepted_socket(asyncio.Protocol, server_sock))[0]
        for server_sock, _ in pairs
    ]
    connections = []
    for transport in transports:  # one loop turn: no await between the requests
        connection = harness.gateway.open_stream(transport, PAGE, b"instructorId=i1", [])
        assert connection is not None
        transport.set_protocol(connection)
        connections.append(connection)
    assert len(harness.gateway._tasks) == 0  # noqa: SLF001
    harness.produce(*harness.slot_records(range(1, 4)))  # s1 v1..v3; the snapshot holds v2
    harness.source.gate.set()
    for _, client_sock in pairs:
        events = await (await (await reading(harness, client_sock)).start()).events(2)
        assert [e["event"] for e in events] == ["snapshot", "slot"]
        assert data(events[1])["version"] == 3
    assert {c.state.value for c in connections} == {"live"}
    assert harness.source.fetches == ["i1"]


async def test_a_burst_of_streams_for_an_unknown_instructor_is_answered_404(
    harness: Harness,
) -> None:
    loop = asyncio.get_running_loop()
    pairs = [socket.socketpair() for _ in range(3)]
    for server_sock, _ in pairs:
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, server_sock)
        connection = harness.gateway.open_stream(transport, PAGE, b"instructorId=ghost", [])
        assert connection is not None
        transport.set_protocol(connection)
    for _, client_sock in pairs:
        client = await (await reading(harness, client_sock)).start()
        assert client.status == 404
    assert harness.source.fetches == ["ghost"]


def test_streams_at_the_same_position_share_the_snapshot_frame_bytes() -> None:
    taken = TakenSnapshot(snapshot("i1", []), 4, 0.0, encoded=b'{"slots":[]}')
    channel = Channel.schedule("i1")
    frame = snapshot_frame(channel, taken, b"s0:4")
    assert frame == (
        b'id: s0:4\nevent: snapshot\ndata: {"channel":"instructors/i1/schedule",'
        b'"schedule":{"slots":[]}}\n\n'
    )
    assert snapshot_frame(channel, taken, b"s0:4") is frame
    assert snapshot_frame(channel, taken, b"s0:5").startswith(b"id: s0:5\n")


async def test_resume_from_the_ring_replays_exactly_the_missed_events(harness: Harness) -> None:
    harness.produce(*harness.slot_records(range(1, 6)))
    client = await (
        await harness.connect(headers=[(b"last-event-id", f"s{harness.part}:1".encode())])
    ).start()
    events = await client.events(3)
    assert [data(e)["version"] for e in events] == [3, 4, 5]
    assert events[-1]["id"] == f"s{harness.part}:4"
    assert harness.source.fetches == []  # no snapshot on a resume
    assert harness.history.reads == []
    assert (harness.gateway.stats.resumes_ring, harness.gateway.stats.resumes_kafka) == (1, 0)


async def test_resume_older_than_the_ring_reads_kafka_back(harness: Harness) -> None:
    harness.produce(*harness.slot_records(range(1, 21)))  # ring keeps 8: offsets 12..19
    query = f"instructorId=i1&lastEventId=s{harness.part}:4"
    client = await (await harness.connect(query)).start()
    events = await client.events(15)
    assert [data(e)["version"] for e in events] == list(range(6, 21))
    assert harness.history.reads == [(SCHEDULE_TOPIC, harness.part, 5, 12)]
    assert (harness.gateway.stats.resumes_ring, harness.gateway.stats.resumes_kafka) == (0, 1)


async def test_resume_point_gone_from_kafka_gets_a_fresh_snapshot(harness: Harness) -> None:
    harness.produce(*harness.slot_records(range(1, 21)))
    harness.history.beginning = lambda _t, _p: 10
    client = await (await harness.connect(f"instructorId=i1&lastEventId=s{harness.part}:4")).start()
    [first] = await client.events(1)
    assert first["event"] == "snapshot"
    assert first["id"] == f"s{harness.part}:19"
    assert harness.gateway.stats.resumes_gone == 1


async def test_resync_record_sends_resync_then_a_fresh_snapshot(harness: Harness) -> None:
    client = await (await harness.connect()).start()
    await client.events(1)
    harness.source.snapshots["i1"] = snapshot("i1", [slot("i1", "s1", 7)])
    harness.produce(record_of(resync_event("r1"), 0))
    events = await client.events(2)
    assert [e["event"] for e in events] == ["resync", "snapshot"]
    assert data(events[1])["schedule"]["version"] == 7  # type: ignore[index]


async def test_a_snapshot_taken_before_a_resync_is_not_shared_after_it(
    harness: Harness,
) -> None:
    """A ``stream.resync`` says the log before it cannot be trusted (the publisher lost
    history; what it publishes now may not repeat every change). A stream opened after one
    must not get the snapshot kept from before it, patched with the records since: on main
    it got that snapshot (s1 v2) and never the v7 the booking-api shows now."""
    first = await (await harness.connect()).start()
    await first.events(1)  # i1's snapshot (s1 v2), kept for reuse
    first.writer.close()
    async with asyncio.timeout(5):
        while harness.gateway.connections:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    harness.source.snapshots["i1"] = snapshot("i1", [slot("i1", "s1", 7)])
    harness.produce(record_of(resync_event("r1"), 0))
    late = await (await harness.connect()).start()
    [snap] = await late.events(1)
    assert snap["event"] == "snapshot"
    assert data(snap)["schedule"]["version"] == 7  # type: ignore[index]
    assert harness.source.fetches == ["i1", "i1"]


async def test_slow_client_is_cut_off_and_others_keep_receiving(harness: Harness) -> None:
    await harness.connect(stalled=True)
    healthy = await (await harness.connect()).start()
    await healthy.events(1)
    reading = asyncio.create_task(healthy.events(200))
    big = "x" * 400
    for n in range(200):
        event = slot_event("i1", f"s{n}", 1).model_copy(update={"subject": big})
        harness.produce(record_of(event, n))
        await asyncio.sleep(0.001)
    events = await reading
    assert [e["id"] for e in events] == [f"s{harness.part}:{n}" for n in range(200)]
    assert harness.gateway.stats.slow_disconnects == 1
    assert len(harness.gateway.connections) == 1
    tail = (await harness.drain_stalled()).rstrip(b"\n")
    assert tail.endswith(b'event: bye\ndata: {"reason":"slow-consumer"}')


def large_schedule() -> ScheduleSnapshot:
    """~0.45 MB of JSON: 13 times the harness's GATEWAY_MAX_PENDING_BYTES (a month of
    5-minute slots is ~1.9 MB)."""
    return snapshot("i1", [slot("i1", f"s{n}", 1) for n in range(2500)])


def padded_slot_record(n: int) -> FakeRecord:
    """A live record of ~0.9 kB."""
    event = slot_event("i1", f"s{n}", 2).model_copy(update={"subject": "x" * 400})
    return record_of(event, n)


async def test_a_fast_client_gets_a_catch_up_larger_than_the_pending_limit(
    harness: Harness,
) -> None:
    """Head, snapshot and replay go out in one write, most of it into the transport's
    buffer when the snapshot is large; that alone is not falling behind (on main:
    ``bye slow-consumer`` right after the snapshot, however fast the client read)."""
    harness.source.snapshots["i1"] = large_schedule()
    client = await (await harness.connect(small_buffer=True)).start()
    [snap] = await client.events(1)
    assert len(snap["data"]) > 10 * harness.gateway.settings.max_pending_bytes
    harness.produce(*harness.slot_records(range(3, 4)))
    [live] = await client.events(1)
    assert (live["event"], data(live).get("version")) == ("slot", 3)
    assert harness.gateway.stats.slow_disconnects == 0


async def test_a_client_that_never_reads_its_large_catch_up_is_still_cut_off(
    harness: Harness,
) -> None:
    """Only the catch-up itself is exempt: once GATEWAY_MAX_PENDING_BYTES more than it
    wait unsent, the client is cut off."""
    harness.source.snapshots["i1"] = large_schedule()
    await harness.connect(stalled=True)
    [connection] = harness.gateway.connections
    async with asyncio.timeout(5):
        while connection.state is StreamState.CATCHING_UP:  # noqa: ASYNC110
            await asyncio.sleep(0)
    for n in range(200):  # ~180 kB
        harness.produce(padded_slot_record(n))
        await asyncio.sleep(0)
    async with asyncio.timeout(5):
        while not harness.gateway.stats.slow_disconnects:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    received = await harness.drain_stalled()
    assert received.count(b"event: snapshot\n") == 1
    assert received.rstrip(b"\n").endswith(b'event: bye\ndata: {"reason":"slow-consumer"}')


async def test_once_its_catch_up_is_read_a_client_is_held_to_the_pending_limit_again(
    harness: Harness,
) -> None:
    harness.source.snapshots["i1"] = large_schedule()
    client = await (await harness.connect(small_buffer=True)).start()
    await client.events(1)  # all of the snapshot: nothing of it is waiting any more
    [connection] = harness.gateway.connections
    limit = harness.gateway.settings.max_pending_bytes
    async with asyncio.timeout(5):  # the allowance ends on the next timer-grid tick
        while connection.transport.get_write_buffer_limits()[1] != limit:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    client.writer.transport.pause_reading()  # type: ignore[attr-defined]  # stops reading
    for n in range(200):  # ~180 kB: far less than the catch-up, far more than the limit
        harness.produce(padded_slot_record(n))
        await asyncio.sleep(0)
    async with asyncio.timeout(5):
        while not harness.gateway.stats.slow_disconnects:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert harness.gateway.connections == set()


async def test_connections_over_the_limit_get_503_with_retry_after(harness: Harness) -> None:
    for _ in range(3):
        await (await harness.connect()).start()
    refused = await (await harness.connect()).start()
    assert refused.status == 503
    assert "retry-after: 5" in refused.head
    assert "application/problem+json" in refused.head


async def test_unknown_instructor_is_404_before_the_stream_opens(harness: Harness) -> None:
    client = await (await harness.connect("instructorId=ghost")).start()
    assert client.status == 404
    assert b"ghost" in await client.rest()
    assert harness.gateway.connections == set()


async def test_shutdown_says_bye_with_a_short_jittered_retry(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each stream gets retry = shutdown_retry_ms + a random share of the jitter window, so
    a drained gateway's clients come back spread out (on main: all at exactly 500 ms)."""
    drawn: list[tuple[int, int]] = []

    def randint(low: int, high: int) -> int:
        drawn.append((low, high))
        return 1234

    monkeypatch.setattr(random, "randint", randint)
    client = await (await harness.connect()).start()
    await client.events(1)
    await harness.gateway.shutdown()
    tail = await client.rest()
    assert tail.endswith(b'retry: 1734\n\nevent: bye\ndata: {"reason":"shutdown"}\n\n')
    assert drawn == [(0, harness.gateway.settings.shutdown_retry_jitter_ms)]
    assert harness.gateway.settings.shutdown_retry_jitter_ms >= 1000
    refused = await (await harness.connect()).start()
    assert refused.status == 503


async def test_a_private_stream_says_bye_and_closes_when_its_token_expires(
    harness: Harness,
) -> None:
    notes = harness.hub.partition_key(Channel.notifications("u1"))
    expiring = mint_token(JWT, "u1", Role.STUDENT, ttl=SHORT_TTL)
    lasting = mint_token(JWT, "u1", Role.STUDENT, ttl=timedelta(hours=1))
    query = "channel=users/u1/notifications"
    short = await (await harness.connect(query, bearer(expiring), path=EVENTS)).start()
    long = await (await harness.connect(query, bearer(lasting), path=EVENTS)).start()
    public = await (await harness.connect()).start()
    await public.events(1)  # its snapshot: all three streams are live now
    harness.hub.ingest(
        NOTIFICATIONS_TOPIC, notes[1], [record_of(notification_event("u1", "n1", "hi"), 0)]
    )
    [note] = await short.events(1)
    assert note["event"] == "notification"
    [bye] = await short.events(1)  # within the token's second, no heartbeat needed
    assert (bye["event"], data(bye)) == ("bye", {"reason": "token-expired"})
    assert await short.rest() == b""  # and the server closed the stream
    assert harness.gateway.stats.token_expiries == 1
    assert len(harness.gateway.connections) == 2
    harness.hub.ingest(
        NOTIFICATIONS_TOPIC, notes[1], [record_of(notification_event("u1", "n2", "on"), 1)]
    )
    assert [e["event"] for e in await long.events(2)] == ["notification", "notification"]


async def test_a_token_expiring_during_catch_up_still_gets_its_bye(harness: Harness) -> None:
    harness.source.gate = asyncio.Event()  # the snapshot never comes
    token = mint_token(JWT, "i1", Role.INSTRUCTOR, ttl=SHORT_TTL)
    query = "channel=instructors/i1/schedule&channel=users/i1/notifications"
    client = await (await harness.connect(query, bearer(token), path=EVENTS)).start()
    assert client.status == 200
    [bye] = await client.events(1)
    assert (bye["event"], data(bye)) == ("bye", {"reason": "token-expired"})
    assert harness.gateway.connections == set()


TICKET = "t" * 43
STUDENT = Principal.model_validate({"sub": "u1", "role": "student"})


async def test_a_stream_ticket_opens_its_owners_stream_once(harness: Harness) -> None:
    harness.tickets.issue(TICKET, STUDENT)
    query = f"channel=users/u1/notifications&ticket={TICKET}"
    client = await (await harness.connect(query, path=EVENTS)).start()
    assert client.status == 200
    notes = harness.hub.partition_key(Channel.notifications("u1"))
    harness.hub.ingest(
        NOTIFICATIONS_TOPIC, notes[1], [record_of(notification_event("u1", "n1", "hi"), 0)]
    )
    assert [e["event"] for e in await client.events(1)] == ["notification"]
    again = await (await harness.connect(query, path=EVENTS)).start()
    assert again.status == 401
    assert b"unknown, used or expired stream ticket" in await again.rest()
    assert harness.tickets.attempts == [TICKET, TICKET]


async def test_a_ticket_for_another_users_channel_is_403(harness: Harness) -> None:
    harness.tickets.issue(TICKET, STUDENT)
    query = f"channel=users/u2/notifications&ticket={TICKET}"
    refused = await (await harness.connect(query, path=EVENTS)).start()
    assert refused.status == 403
    assert harness.gateway.connections == set()


async def test_tickets_that_cannot_be_checked_answer_503(harness: Harness) -> None:
    harness.tickets.unavailable = True
    query = f"channel=users/u1/notifications&ticket={TICKET}"
    refused = await (await harness.connect(query, path=EVENTS)).start()
    assert refused.status == 503
    assert "retry-after: 1" in refused.head


async def test_a_ticket_stream_ends_when_the_underlying_token_does(harness: Harness) -> None:
    harness.tickets.issue(TICKET, STUDENT, ttl_seconds=1)
    query = f"channel=users/u1/notifications&ticket={TICKET}"
    client = await (await harness.connect(query, path=EVENTS)).start()
    assert client.status == 200
    [bye] = await client.events(1)
    assert (bye["event"], data(bye)) == ("bye", {"reason": "token-expired"})


# -- one id, two roles (a student and an instructor may share an id) ------------------------

INSTRUCTOR = Principal.model_validate({"sub": "u1", "role": "instructor"})


def shared_id_records() -> list[FakeRecord]:
    """What user id u1 is sent as a student (who booked i9's slot) and as an instructor
    (whose slot s2 booked), then one record from before records named their role."""
    student, instructor = Audience.STUDENT, Audience.INSTRUCTOR
    return [
        record_of(notification_event("u1", "n-student", "You booked", student), 0),
        record_of(notification_event("u1", "n-instructor", "s2 booked you", instructor), 1),
        record_of(booking_event("i9", "b-student", "sl1", "u1", student), 2),
        record_of(booking_event("u1", "b-instructor", "sl2", "s2", instructor), 3),
        record_of(notification_event("u1", "n-old", "from before roles"), 4),
    ]


async def ids_until(client: Client, last: str) -> list[str]:
    """The CloudEvents ids a stream receives, up to and including ``last``."""
    seen: list[str] = []
    while not seen or seen[-1] != last:
        [event] = await client.events(1)
        seen.append(str(data(event)["id"]))
    return seen


STUDENT_SIDE = ["n-student-v1", "b-student-v1", "n-old-v1"]
INSTRUCTOR_SIDE = ["n-instructor-v1", "b-instructor-v1", "n-old-v1"]


async def test_a_student_and_an_instructor_sharing_an_id_each_get_only_their_own(
    harness: Harness,
) -> None:
    notes = harness.hub.partition_key(Channel.notifications("u1"))
    token = mint_token(JWT, "u1", Role.STUDENT, ttl=timedelta(hours=1))
    query = "channel=users/u1/notifications"
    student = await (await harness.connect(query, bearer(token), path=EVENTS)).start()
    harness.tickets.issue(TICKET, INSTRUCTOR)
    instructor = await (await harness.connect(f"{query}&ticket={TICKET}", path=EVENTS)).start()
    async with asyncio.timeout(5):  # the ticket is redeemed: both streams are live
        while len(harness.hub.live_subscribers(Channel.notifications("u1"))) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    harness.hub.ingest(NOTIFICATIONS_TOPIC, notes[1], shared_id_records())
    assert await ids_until(student, "n-old-v1") == STUDENT_SIDE
    assert await ids_until(instructor, "n-old-v1") == INSTRUCTOR_SIDE


async def test_a_resume_replays_only_the_streams_own_role(harness: Harness) -> None:
    notes = harness.hub.partition_key(Channel.notifications("u1"))
    harness.hub.ingest(NOTIFICATIONS_TOPIC, notes[1], shared_id_records())
    resume = (b"last-event-id", f"n{notes[1]}:-1".encode())
    streams = {}
    for role in (Role.STUDENT, Role.INSTRUCTOR):
        token = mint_token(JWT, "u1", role, ttl=timedelta(hours=1))
        streams[role] = await (
            await harness.connect(
                "channel=users/u1/notifications", [*bearer(token), resume], path=EVENTS
            )
        ).start()
    assert await ids_until(streams[Role.STUDENT], "n-old-v1") == STUDENT_SIDE
    assert await ids_until(streams[Role.INSTRUCTOR], "n-old-v1") == INSTRUCTOR_SIDE


async def test_every_stream_gets_a_visible_heartbeat_event_each_period() -> None:
    """A named ``heartbeat`` event without ``id:`` (a comment never reaches the page's
    EventSource, so its watchdog could not see it; an id would move the resume position)."""
    h = Harness(Settings(heartbeat_seconds=0.3, jwt=JWT))
    h._writers, h.stalled_sockets = [], []
    try:
        clients = [await (await h.connect()).start() for _ in range(3)]
        for client in clients:
            await client.events(1)  # the snapshot
        h.gateway.start_background()  # the first period sees all three

        async def heartbeat(client: Client) -> dict[str, str]:
            while True:  # presence events may come first
                [event] = await client.events(1)
                if event["event"] == "heartbeat":
                    return event

        for client in clients:
            assert await asyncio.wait_for(heartbeat(client), 2) == {
                "event": "heartbeat",
                "data": "{}",
            }
    finally:
        await h.gateway.shutdown()
        for writer in h._writers:
            writer.close()


async def test_a_stream_sent_an_event_in_the_last_half_period_gets_no_heartbeat() -> None:
    """The event itself showed the client (its watchdog resets on any frame) and the proxies
    that the stream is alive; a stream with nothing sent gets its heartbeat, and the busy
    one does too once its last event is more than half a period old."""
    h = Harness(Settings(heartbeat_seconds=10, jwt=JWT))
    h._writers, h.stalled_sockets = [], []
    h.source.snapshots["i2"] = snapshot("i2", [slot("i2", "s9", 1)])
    try:
        busy = await (await h.connect()).start()
        idle = await (await h.connect("instructorId=i2")).start()
        for client in (busy, idle):
            await client.events(1)  # the snapshot
        h.produce(*h.slot_records(range(3, 4)))
        [event] = await busy.events(1)
        assert event["event"] == "slot"
        connections = list(h.gateway.connections)
        now = time.monotonic()

        assert h.gateway.heartbeats.send(connections, now) == 1
        [beat] = await idle.events(1)
        assert beat["event"] == "heartbeat"

        assert h.gateway.heartbeats.send(connections, now + 5.1) == 2
        for client in (busy, idle):
            [beat] = await client.events(1)
            assert beat["event"] == "heartbeat"
    finally:
        await h.gateway.shutdown()
        for writer in h._writers:
            writer.close()


# -- history bounds (issue 10, item 3) ----------------------------------------------------


async def test_a_resume_older_than_the_bound_gets_a_snapshot_not_the_history() -> None:
    h = Harness(Settings(max_resume_lag=10, jwt=JWT))
    h._writers, h.stalled_sockets = [], []
    try:
        h.produce(*h.slot_records(range(1, 21)))
        client = await (await h.connect(f"instructorId=i1&lastEventId=s{h.part}:-1")).start()
        [first] = await client.events(1)
        assert first["event"] == "snapshot"
        assert first["id"] == f"s{h.part}:19"
        assert h.history.reads == []
        assert h.gateway.stats.resumes_refused == 1
    finally:
        await h.gateway.shutdown()


async def test_a_resume_ahead_of_the_log_gets_a_snapshot_at_once(harness: Harness) -> None:
    harness.produce(*harness.slot_records(range(1, 4)))
    started = asyncio.get_running_loop().time()
    client = await (
        await harness.connect(headers=[(b"last-event-id", f"s{harness.part}:999999".encode())])
    ).start()
    [first] = await client.events(1)
    assert first["event"] == "snapshot"
    assert first["id"] == f"s{harness.part}:2"
    # refused on the spot, not after waiting for the hub to reach that position
    assert harness.gateway.stats.resumes_refused == 1
    bounds = harness.gateway.catch_up.bounds
    assert isinstance(bounds, FakeLogBounds)
    assert bounds.lookups == [(SCHEDULE_TOPIC, harness.part)]  # the broker has no more either
    waited = asyncio.get_running_loop().time() - started
    assert waited < harness.gateway.settings.catch_up_timeout_seconds / 2


async def test_a_resume_past_this_gateways_fetches_waits_for_the_records_another_delivered(
    harness: Harness,
) -> None:
    """Another gateway delivered offset 4; this one's latest fetch answer predates offsets
    3-5 (its high watermark says 3) while the broker's log ends at 6. The client waits for
    this gateway to read them and is replayed what follows its id, not sent a snapshot (a
    ``resync history-unavailable`` for notifications)."""
    part = harness.part
    harness.produce(*harness.slot_records(range(1, 4)))  # offsets 0-2: read here
    later = harness.slot_records(range(4, 7))  # offsets 3-5: in the log, not fetched here yet
    bounds = harness.gateway.catch_up.bounds
    assert isinstance(bounds, FakeLogBounds)
    assert bounds.bounds(SCHEDULE_TOPIC, part) == (0, 3)
    bounds.log_ends = {(SCHEDULE_TOPIC, part): 6}  # what the broker answers
    pending = asyncio.create_task(
        harness.connect(headers=[(b"last-event-id", f"s{part}:4".encode())])
    )
    await asyncio.sleep(0.05)  # the stream is catching up: this gateway reads on
    harness.produce(*later)
    client = await (await pending).start()
    [first] = await client.events(1)
    assert (first["event"], first["id"]) == ("slot", f"s{part}:5")
    assert data(first)["version"] == 6
    assert harness.source.fetches == []
    stats = harness.gateway.stats
    assert (stats.resumes_refused, stats.resumes_ring) == (0, 1)
    assert bounds.lookups == [(SCHEDULE_TOPIC, part)]


async def test_a_restart_of_the_partition_while_the_broker_is_asked_refuses_the_resume(
    harness: Harness,
) -> None:
    """The ingest restarts the partition (``hub.restart``: records lost, the log cut back
    to offset 3) while the resume past this gateway's end waits for the broker's answer:
    offset 4 may now name another record than the one the client had, so the stream
    starts fresh (a snapshot), not replayed from its id, even once this gateway has read
    past it again."""
    part = harness.part
    harness.produce(*harness.slot_records(range(1, 4)))  # offsets 0-2: read here
    bounds = harness.gateway.catch_up.bounds
    assert isinstance(bounds, FakeLogBounds)
    bounds.log_ends = {(SCHEDULE_TOPIC, part): 6}  # what the broker answers
    bounds.held = asyncio.Event()
    pending = asyncio.create_task(
        harness.connect(headers=[(b"last-event-id", f"s{part}:4".encode())])
    )
    await asyncio.sleep(0.05)  # the resume asks the broker
    assert bounds.lookups == [(SCHEDULE_TOPIC, part)]
    harness.hub.restart(SCHEDULE_TOPIC, part, 3)  # the next record is at offset 3 again
    harness.produce(*harness.slot_records(range(10, 13)))  # other records at offsets 3-5
    bounds.held.set()
    client = await (await pending).start()
    [first] = await client.events(1)
    assert first["event"] == "snapshot", first
    stats = harness.gateway.stats
    assert (stats.resumes_refused, stats.resumes_ring) == (1, 0)


async def test_an_id_refused_for_another_reason_is_not_checked_with_the_broker(
    harness: Harness,
) -> None:
    """Past this gateway's end, but naming a partition not of the stream: refused without
    a broker round trip (a client cannot make the gateway ask for nothing)."""
    harness.produce(*harness.slot_records(range(1, 4)))
    other = 1 - harness.part
    ahead = f"s{harness.part}:999999.s{other}:0".encode()
    client = await (await harness.connect(headers=[(b"last-event-id", ahead)])).start()
    [first] = await client.events(1)
    assert first["event"] == "snapshot"
    bounds = harness.gateway.catch_up.bounds
    assert isinstance(bounds, FakeLogBounds)
    assert bounds.lookups == []


async def test_a_resume_before_the_log_start_gets_a_snapshot(harness: Harness) -> None:
    harness.produce(*harness.slot_records(range(1, 6)))
    assert isinstance(harness.gateway.catch_up.bounds, FakeLogBounds)
    harness.gateway.catch_up.bounds.starts[(SCHEDULE_TOPIC, harness.part)] = 3
    client = await (await harness.connect(f"instructorId=i1&lastEventId=s{harness.part}:0")).start()
    [first] = await client.events(1)
    assert first["event"] == "snapshot"
    assert harness.history.reads == []


async def test_a_lost_notification_resume_gets_a_resync_frame(harness: Harness) -> None:
    notes = harness.hub.partition_key(Channel.notifications("u1"))
    harness.hub.ingest(
        NOTIFICATIONS_TOPIC, notes[1], [record_of(notification_event("u1", "n1", "hi"), 0)]
    )
    token = mint_token(JWT, "u1", Role.STUDENT, ttl=timedelta(hours=1))
    client = await (
        await harness.connect(
            "channel=users/u1/notifications",
            headers=[
                (b"authorization", f"Bearer {token}".encode()),
                (b"last-event-id", f"n{notes[1]}:5000".encode()),
            ],
            path=EVENTS,
        )
    ).start()
    [frame] = await client.events(1)
    assert frame["event"] == "resync"
    assert data(frame) == {"channel": "users/u1/notifications", "reason": "history-unavailable"}
    assert frame["id"] == f"n{notes[1]}:0"


# -- partitions added to a topic ---------------------------------------------------------


def hashed_to(record_key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner writes ``record_key`` to."""
    hashed: int = murmur2(record_key)
    return (hashed & 0x7FFFFFFF) % partitions


async def test_a_notification_resume_from_before_partitions_were_added_gets_a_resync(
    harness: Harness,
) -> None:
    """The notifications topic grew from one partition to two: the user's records now go
    to n1, and the client's id names n0 (the old layout). On main the stream started at
    the end of n1 without a word, and the notification written there before the resume
    was lost silently: the first frame was the next live notification."""
    for p in range(2):
        harness.hub.assign(NOTIFICATIONS_TOPIC, p, 0, 2)
    user = next(
        f"u{n}" for n in range(100) if hashed_to(f"u{n}".encode(), 2) == 1
    )  # on n0 before, on n1 now
    harness.hub.ingest(
        NOTIFICATIONS_TOPIC, 0, [record_of(notification_event(user, "n1", "seen"), 0)]
    )
    missed = record_of(notification_event(user, "n2", "written after the growth"), 0)
    harness.hub.ingest(NOTIFICATIONS_TOPIC, 1, [missed])
    token = mint_token(JWT, user, Role.STUDENT, ttl=timedelta(hours=1))
    client = await (
        await harness.connect(
            f"channel=users/{user}/notifications",
            headers=[
                (b"authorization", f"Bearer {token}".encode()),
                (b"last-event-id", b"n0:0"),  # the id of "seen", written before the growth
            ],
            path=EVENTS,
        )
    ).start()
    live = record_of(notification_event(user, "n3", "live"), 1)
    harness.hub.ingest(NOTIFICATIONS_TOPIC, 1, [live])
    [first] = await client.events(1)
    assert (first["event"], first["id"]) == ("resync", "n1:0"), first
    assert data(first) == {
        "channel": f"users/{user}/notifications",
        "reason": "history-unavailable",  # the page reloads its notifications
    }
    [then] = await client.events(1)
    assert (then["event"], then["id"]) == ("notification", "n1:1")


async def test_a_resume_whose_channels_exchanged_partitions_replays_both_layouts(
    harness: Harness,
) -> None:
    """Growing from three partitions to four can swap two channels' partitions: instructor
    ``a`` was on p and is on q now, ``b`` the other way round, so an id written with the
    old layout names exactly the stream's partitions. ``a``'s update written to p before
    the growth, after the client's position, must be replayed too. On main p was read
    back for ``b`` only: ``a`` v2 was never sent."""
    by_move: dict[tuple[int, int], str] = {}
    for n in range(1000):
        moved = tuple(hashed_to(f"i{n}".encode(), count) for count in (3, 4))
        by_move.setdefault((moved[0], moved[1]), f"i{n}")
    (p, q), a = next(
        (move, owner)
        for move, owner in by_move.items()
        if move[0] != move[1] and (move[1], move[0]) in by_move
    )
    b = by_move[(q, p)]
    for part in range(4):
        harness.hub.assign(SCHEDULE_TOPIC, part, 0, 4)
    for owner in (a, b):
        harness.source.snapshots[owner] = snapshot(owner, [])
    harness.hub.ingest(  # before the growth: a on p, b on q; the client saw offsets 0
        SCHEDULE_TOPIC,
        p,
        [record_of(slot_event(a, "sa", 1), 0), record_of(slot_event(a, "sa", 2), 1)],
    )
    harness.hub.ingest(SCHEDULE_TOPIC, q, [record_of(slot_event(b, "sb", 1), 0)])
    # after it: a on q, b on p
    harness.hub.ingest(SCHEDULE_TOPIC, p, [record_of(slot_event(b, "sb", 2), 2)])
    harness.hub.ingest(SCHEDULE_TOPIC, q, [record_of(slot_event(a, "sa", 3), 1)])
    old_id = ".".join(f"s{part}:0" for part in sorted((p, q)))
    client = await (
        await harness.connect(
            f"channel=instructors/{a}/schedule&channel=instructors/{b}/schedule",
            headers=[(b"last-event-id", old_id.encode())],
            path=EVENTS,
        )
    ).start()
    harness.hub.ingest(SCHEDULE_TOPIC, q, [record_of(slot_event(a, "sa", 4), 2)])
    got: list[tuple[str, object, object]] = []
    while (a, 4) not in [(owner, version) for _, owner, version in got]:  # the live one
        [e] = await client.events(1)
        got.append((e["event"], data(e)["instructorid"], data(e)["version"]))
    assert sorted(got, key=str) == sorted(
        [("slot", a, 2), ("slot", b, 2), ("slot", a, 3), ("slot", a, 4)], key=str
    ), got


async def test_a_resync_record_read_back_from_kafka_is_not_filtered_out(
    harness: Harness,
) -> None:
    records = harness.slot_records(range(1, 21))  # the ring keeps 8: offsets 12..19
    records[6] = record_of(resync_event("r1"), 6)
    harness.produce(*records)
    harness.source.snapshots["i1"] = snapshot("i1", [slot("i1", "s1", 30)])
    client = await (await harness.connect(f"instructorId=i1&lastEventId=s{harness.part}:2")).start()
    events = await client.events(2)
    assert [e["event"] for e in events] == ["resync", "snapshot"]
    assert data(events[1])["schedule"]["version"] == 30  # type: ignore[index]


async def test_a_client_cut_off_after_the_resync_frame_gets_the_snapshot_on_resume(
    harness: Harness,
) -> None:
    """A resume whose missed range holds a ``stream.resync`` is answered ``resync``, then a
    fresh ``snapshot`` (up to ~2 MB). A client cut off after the ``resync`` frame, before
    the snapshot is through, resumes from the last id it got: that must bring the snapshot
    again. On main the ``resync`` frame's id already named the stream's start: the resume
    replayed nothing after it, and the client went on without the snapshot."""
    records = harness.slot_records(range(1, 21))  # the ring keeps 8: offsets 12..19
    records[6] = record_of(resync_event("r1"), 6)
    harness.produce(*records)
    harness.source.snapshots["i1"] = snapshot("i1", [slot("i1", "s1", 30)])
    resumed_from = f"s{harness.part}:2"
    client = await (await harness.connect(f"instructorId=i1&lastEventId={resumed_from}")).start()
    notice, _ = await client.events(2)
    assert notice["event"] == "resync"
    held = notice.get("id", resumed_from)  # the browser's Last-Event-ID when cut off here
    again = await (await harness.connect(f"instructorId=i1&lastEventId={held}")).start()
    harness.produce(*harness.slot_records(range(31, 32)))  # live, after the snapshot's v30
    [first] = await again.events(1)
    assert first["event"] in ("resync", "snapshot"), first


async def test_records_after_a_resync_during_the_catch_up_wait_for_its_snapshot(
    harness: Harness,
) -> None:
    """A ``stream.resync`` arrives while a stream's first snapshot is fetched; the stream
    is written what it gathered, then catches up again (``resync`` + a snapshot taken
    after it, a second fetch). The records after the resync must not be written before
    that: their ids are past the resync, and a client cut off before the second snapshot
    resumed from there, never to be told. On main they were, with ``s<p>:1``."""
    harness.source.gate = first_fetch = asyncio.Event()
    # a resume point ahead of the log: refused, the stream attaches and fetches a snapshot
    ahead = [(b"last-event-id", f"s{harness.part}:999999".encode())]
    pending = asyncio.create_task(harness.connect(headers=ahead))
    async with asyncio.timeout(5):
        while not harness.source.fetches:  # noqa: ASYNC110
            await asyncio.sleep(0)
    harness.produce(record_of(resync_event("r1"), 0))
    harness.offsets[harness.part] = 1
    harness.produce(*harness.slot_records(range(3, 4)))  # s1 v3 at offset 1, after it
    harness.source.gate = second_fetch = asyncio.Event()  # the snapshot after the resync
    first_fetch.set()
    client = await (await pending).start()
    got: list[dict[str, str]] = []
    with contextlib.suppress(TimeoutError):
        while True:
            got += await asyncio.wait_for(client.events(1), 0.3)
    held = [e["id"] for e in got if "id" in e]
    assert all(int(i.split(":")[1]) < 0 for i in held), got  # before the resync at 0
    harness.source.snapshots["i1"] = snapshot("i1", [slot("i1", "s1", 3)])
    second_fetch.set()
    events = await client.events(2)
    assert [e["event"] for e in events] == ["resync", "snapshot"]


@pytest.mark.parametrize("count", [2, 10], ids=["ring", "past-the-ring"])
async def test_a_resync_of_a_live_stream_writes_the_other_partitions_records_once(
    harness: Harness, count: int
) -> None:
    """A live ``/v1/events`` stream of two instructors on two partitions gets a
    ``stream.resync`` on i1's; in the same loop turn (before the catch-up task runs)
    records of i2 without a CloudEvents id arrive on the other partition (10: more than
    the ring keeps). They are buffered for the catch-up and must be written once each,
    with ids that never go back. On main the catch-up also replayed them, from the ring
    (read when the task ran, with no bound at the positions taken at the resync) or past
    the ring from Kafka: each came twice, the second copy of v5 with an id before v6's."""
    harness.source.snapshots["i2"] = snapshot("i2", [slot("i2", "s9", 4)])
    i2_part = harness.hub.partition_key(Channel.schedule("i2"))[1]
    assert i2_part != harness.part
    query = "channel=instructors/i1/schedule&channel=instructors/i2/schedule"
    client = await (await harness.connect(query, path=EVENTS)).start()
    assert [e["event"] for e in await client.events(2)] == ["snapshot", "snapshot"]
    # no await from here to the live record: the resync's catch-up task has not run yet
    harness.produce(record_of(resync_event("r1"), 0))
    without_id = [
        replace(record_of(slot_event("i2", "s9", 5 + offset), offset), ce_id=None)
        for offset in range(count)
    ]
    harness.history.log[(SCHEDULE_TOPIC, i2_part)] = list(without_id)
    harness.hub.ingest(SCHEDULE_TOPIC, i2_part, without_id)
    got: list[dict[str, str]] = []
    while not got or got[-1]["event"] != "snapshot":
        got += await client.events(1)
    # live again: a record with an id marks the end of what the catch-up wrote
    live = record_of(slot_event("i2", "s9", 5 + count), count)
    harness.hub.ingest(SCHEDULE_TOPIC, i2_part, [live])
    while (data(got[-1]).get("instructorid"), data(got[-1]).get("version")) != ("i2", 5 + count):
        got += await client.events(1)
    slots = [data(e)["version"] for e in got if e["event"] == "slot"]
    assert slots == list(range(5, 6 + count)), got
    positions = [
        {part: int(offset) for part, _, offset in (c.partition(":") for c in e["id"].split("."))}
        for e in got
        if "id" in e
    ]
    for before, after in zip(positions, positions[1:], strict=False):
        assert all(after[part] >= before[part] for part in before), positions
    # no client resumed: gateway_resumes_total (Last-Event-ID resumes) stays where it was
    stats = harness.gateway.stats
    assert (stats.resumes_ring, stats.resumes_kafka, stats.resumes_gone) == (0, 0, 0)


async def test_a_client_cut_off_between_two_snapshots_gets_the_second_on_resume(
    harness: Harness,
) -> None:
    """A new ``/v1/events`` stream of two instructors on two partitions starts with two
    snapshots. A client cut off after the first resumes from the last id it got (or, with
    none, starts anew): the other channel must get its snapshot. On main the first
    snapshot's id already named the other partition at the stream's start; the resume was
    honoured, and that channel never got a snapshot, only the deltas after it."""
    harness.source.snapshots["i2"] = snapshot("i2", [slot("i2", "s9", 4)])
    i2_part = harness.hub.partition_key(Channel.schedule("i2"))[1]
    assert i2_part != harness.part
    query = "channel=instructors/i1/schedule&channel=instructors/i2/schedule"
    client = await (await harness.connect(query, path=EVENTS)).start()
    first, second = await client.events(2)
    assert (first["event"], second["event"]) == ("snapshot", "snapshot")
    missed = (
        "instructors/i2/schedule"
        if data(first)["channel"] != "instructors/i2/schedule"
        else "instructors/i1/schedule"
    )
    held = [(b"last-event-id", first["id"].encode())] if "id" in first else []
    again = await (await harness.connect(query, held, path=EVENTS)).start()
    harness.produce(*harness.slot_records(range(3, 4)))  # live: i1's s1 v3
    harness.hub.ingest(SCHEDULE_TOPIC, i2_part, [record_of(slot_event("i2", "s9", 5), 0)])
    got: list[dict[str, str]] = []
    while sum(e["event"] == "slot" for e in got) < 2:
        got += await again.events(1)
    snapshots = [data(e)["channel"] for e in got if e["event"] == "snapshot"]
    assert missed in snapshots, got


# -- per-client limits (issue 10, item 4) -------------------------------------------------


def from_ip(ip: str) -> list[tuple[bytes, bytes]]:
    """What a proxy adds (the harness's socketpair peer counts as a trusted local proxy)."""
    return [(b"x-forwarded-for", ip.encode())]


async def limited(settings: Settings) -> Harness:
    h = Harness(settings)
    h._writers, h.stalled_sockets = [], []
    return h


async def test_streams_per_ip_are_limited_with_429_and_freed_on_close() -> None:
    h = await limited(Settings(max_streams_per_ip=2, jwt=JWT))
    try:
        held = [await (await h.connect(headers=from_ip("10.0.0.1"))).start() for _ in range(2)]
        refused = await (await h.connect(headers=from_ip("10.0.0.1"))).start()
        assert refused.status == 429
        assert "retry-after: 3" in refused.head
        assert "application/problem+json" in refused.head
        other = await (await h.connect(headers=from_ip("10.0.0.2"))).start()
        assert other.status == 200
        assert h.gateway.stats.limited["ip-streams"] == 1
        held[0].writer.close()
        await asyncio.sleep(0.05)
        again = await (await h.connect(headers=from_ip("10.0.0.1"))).start()
        assert again.status == 200
        await h.gateway.shutdown()
        # nothing left behind for closed streams
        assert len(h.gateway.admission.streams_per_ip) == 0
    finally:
        await h.gateway.shutdown()


async def test_a_spoofed_x_real_ip_through_a_trusted_proxy_does_not_escape_the_limit() -> None:
    # As Envoy Gateway forwards it: the client's own X-Real-IP unchanged, its TCP address
    # appended to X-Forwarded-For; the harness's peer is a trusted (local) proxy.
    h = await limited(Settings(max_streams_per_ip=2, jwt=JWT))
    try:
        statuses = []
        for n in range(4):
            headers = [
                (b"x-real-ip", f"198.51.100.{n}".encode()),
                (b"x-forwarded-for", b"203.0.113.7"),
            ]
            statuses.append((await (await h.connect(headers=headers)).start()).status)
        assert statuses == [200, 200, 429, 429]
        assert h.gateway.admission.streams_per_ip["203.0.113.7"] == 2
    finally:
        await h.gateway.shutdown()


async def test_private_streams_per_user_are_limited() -> None:
    h = await limited(Settings(max_streams_per_user=1, jwt=JWT))
    token = mint_token(JWT, "u1", Role.STUDENT, ttl=timedelta(hours=1))
    auth = [(b"authorization", f"Bearer {token}".encode())]
    try:
        query = "channel=users/u1/notifications"
        first = await (
            await h.connect(query, headers=auth + from_ip("10.0.0.1"), path=EVENTS)
        ).start()
        assert first.status == 200
        second = await (
            await h.connect(query, headers=auth + from_ip("10.0.0.2"), path=EVENTS)
        ).start()
        assert second.status == 429
        assert b"private streams" in await second.rest()
        public = await (await h.connect(headers=from_ip("10.0.0.2"))).start()
        assert public.status == 200
    finally:
        await h.gateway.shutdown()


async def test_ticket_streams_count_against_their_user_once_redeemed() -> None:
    h = await limited(Settings(max_streams_per_user=1, jwt=JWT))
    try:
        query = "channel=users/u1/notifications&ticket="
        first_ticket = h.tickets.issue("a" * 43, STUDENT)
        second_ticket = h.tickets.issue("b" * 43, STUDENT)
        first = await (
            await h.connect(query + first_ticket, headers=from_ip("10.0.0.1"), path=EVENTS)
        ).start()
        assert first.status == 200
        second = await (
            await h.connect(query + second_ticket, headers=from_ip("10.0.0.2"), path=EVENTS)
        ).start()
        assert second.status == 429
        assert b"private streams" in await second.rest()
        assert h.gateway.admission.streams_per_user.full("u1")
    finally:
        await h.gateway.shutdown()
    assert not h.gateway.admission.streams_per_user.full("u1")  # released when the stream closed


async def test_connect_rate_per_ip_is_a_token_bucket() -> None:
    h = await limited(Settings(connect_rate_per_ip=1, connect_burst_per_ip=2, jwt=JWT))
    try:
        statuses = [
            (await (await h.connect(headers=from_ip("10.0.0.1"))).start()).status for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        assert (await (await h.connect(headers=from_ip("10.0.0.9"))).start()).status == 200
        await asyncio.sleep(1.05)
        assert (await (await h.connect(headers=from_ip("10.0.0.1"))).start()).status == 200
    finally:
        await h.gateway.shutdown()


async def test_unknown_instructors_cost_one_booking_api_request_then_none(
    harness: Harness,
) -> None:
    query = "&".join(f"channel=instructors/ghost{n}/schedule" for n in range(16))
    harness.gateway.settings.max_channels_per_connection = 16
    first = await (await harness.connect(query, path=EVENTS)).start()
    assert first.status == 404
    second = await (await harness.connect("instructorId=ghost0")).start()
    assert second.status == 404
    assert len(harness.source.fetches) == 1


@pytest.mark.parametrize("warm", [True, False])
async def test_unknown_instructors_after_known_ones_cost_one_booking_api_request(
    harness: Harness, warm: bool
) -> None:
    """A known instructor named first (its snapshot shared, or fetched for this request)
    must not let the unknown ones after it go to the booking-api all at once: the stream
    fails on the first 404 whatever the others are, so only that one may be asked."""
    harness.gateway.settings.max_channels_per_connection = 16
    if warm:
        assert (await (await harness.connect()).start()).status == 200
    query = "channel=instructors/i1/schedule&" + "&".join(
        f"channel=instructors/ghost{n}/schedule" for n in range(15)
    )
    answer = await (await harness.connect(query, path=EVENTS)).start()
    assert answer.status == 404
    await asyncio.sleep(0.05)  # fetches started but not awaited would show by now
    assert harness.source.fetches == ["i1", "ghost0"]


async def test_ticket_redemptions_past_the_bound_answer_503_at_once() -> None:
    """Random tickets each cost a booking-api request: a flood of them is asked at most
    ``MAX_REDEMPTIONS_IN_FLIGHT`` at a time, ``MAX_REDEMPTIONS_WAITING`` more wait in the
    gateway, and the next is answered 503 + Retry-After at once, not queued for its turn."""
    h = await limited(Settings(max_connections=1000, jwt=JWT))
    h.tickets.gate = asyncio.Event()  # a booking-api that does not answer
    total = MAX_REDEMPTIONS_IN_FLIGHT + MAX_REDEMPTIONS_WAITING
    query = "channel=users/u1/notifications&ticket="
    try:
        for n in range(total):  # 40 per address: the per-address limits are not tested here
            await h.connect(f"{query}{n:016d}", path=EVENTS, headers=from_ip(f"10.0.1.{n // 40}"))
        await asyncio.sleep(0.05)
        assert len(h.tickets.attempts) == MAX_REDEMPTIONS_IN_FLIGHT
        over = await (
            await h.connect(f"{query}{total:016d}", path=EVENTS, headers=from_ip("10.0.2.1"))
        ).start()
        assert over.status == 503
        assert "retry-after: 1" in over.head
        h.tickets.gate.set()
        await asyncio.sleep(0.05)
        assert len(h.tickets.attempts) == total  # the waiting ones were asked in turn
    finally:
        await h.gateway.shutdown()


def _unused(record: Record) -> None:  # keeps the Record import meaningful for mypy
    del record


async def test_a_new_subscriber_is_told_the_viewer_count_even_when_it_did_not_change() -> None:
    """Presence is sent when a channel's count changes; a page that takes the place of
    another (a reload, a reconnect) leaves the count as it was, and must still be told."""
    h = Harness(Settings(presence_interval_seconds=0.2, heartbeat_seconds=60, jwt=JWT))
    h._writers, h.stalled_sockets = [], []

    async def presence(client: Client) -> dict[str, object]:
        while True:
            [event] = await client.events(1)
            if event["event"] == "presence":
                return data(event)

    try:
        first = await (await h.connect()).start()
        await first.events(1)  # the snapshot
        h.gateway.start_background()
        assert await asyncio.wait_for(presence(first), 2) == {
            "channel": "instructors/i1/schedule",
            "count": 1,
        }
        first.writer.close()
        second = await (await h.connect()).start()
        await second.events(1)  # the snapshot
        assert await asyncio.wait_for(presence(second), 2) == {
            "channel": "instructors/i1/schedule",
            "count": 1,
        }
    finally:
        await h.gateway.shutdown()
        for writer in h._writers:
            writer.close()
