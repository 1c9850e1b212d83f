"""The ingest's lean fetch loop: its requests are what aiokafka's own FetchRequest structs
decode, its response reader (compiled and Python twin) reads what aiokafka's FetchResponse
structs encode, and the loop — against a fake cluster of several brokers — hands every
record out exactly once and in order through leader moves, lost connections, stale
answers, corrupt batches and offsets out of range."""

from __future__ import annotations

import asyncio
import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog
import structlog.testing
from aiokafka.errors import CorruptRecordException, KafkaConnectionError
from aiokafka.protocol import fetch as protocol

from push_gateway.adapters import _batches, batches
from push_gateway.adapters.fetch import (
    FETCH_VERSIONS,
    FetchRequestTemplate,
    LeanFetcher,
    PartitionState,
)
from push_gateway.adapters.fetch_links import _RawResponse
from push_gateway.adapters.kafka import KafkaIngest, TopicMissing, partitions_of
from push_gateway.adapters.records import IngestRecord
from push_gateway.config import GatewayKafkaSettings
from push_gateway.domain.hub import NO_READERS, ChannelHub, Readers
from slotstream_contracts.channels import Channel, ChannelKind
from slotstream_testkit.record_batches import BatchRecord, record_batch

PARSERS: dict[str, Any] = {
    "compiled": _batches.parse_fetch_response,
    "python": batches.parse_fetch_response,
}
HEADERS = [("ce_type", b"slot.updated"), ("ce_id", b"e-1"), ("content-type", b"x")]
REQUESTS = {v: getattr(protocol, f"FetchRequest_v{v}") for v in FETCH_VERSIONS}
RESPONSES = {v: getattr(protocol, f"FetchResponse_v{v}") for v in FETCH_VERSIONS}


def batch(base: int, values: Sequence[bytes], *, control: bool = False) -> bytes:
    records = [BatchRecord(i, 1_000 + i, b"k", value, HEADERS) for i, value in enumerate(values)]
    return record_batch(base, records, control=control)


# -- request encoding ------------------------------------------------------------------------
def decode_request(frame: bytes) -> tuple[int, int, int, str, Any]:
    """(api key, version, correlation id, client id, the body as aiokafka decodes it)."""
    (size,) = struct.unpack_from(">i", frame)
    assert size == len(frame) - 4
    api_key, version, correlation, name_size = struct.unpack_from(">hhih", frame, 4)
    client = frame[14 : 14 + name_size].decode()
    body = REQUESTS[version].decode(io.BytesIO(frame[14 + name_size :]))
    return api_key, version, correlation, client, body


@pytest.mark.parametrize("version", FETCH_VERSIONS)
def test_the_request_is_what_aiokafka_decodes_with_offsets_patched(version: int) -> None:
    states = [PartitionState("a", 0, 0), PartitionState("b", 3, 0), PartitionState("a", 2, 0)]
    template = FetchRequestTemplate(version, "slot", states, 1, 5_000_000, 1_000_000)
    cases = ((7, (25, 1 << 20), (10, 20, 30)), (8, (100, 1), (11, 2**40, 0)))
    for correlation, wait, offsets in cases:
        api_key, got_version, got_correlation, client, body = decode_request(
            template.encode(correlation, wait, offsets)
        )
        assert (api_key, got_version, got_correlation, client) == (1, version, correlation, "slot")
        fields = body.__dict__
        assert fields["replica_id"] == -1
        assert (fields["max_wait_time"], fields["min_bytes"]) == wait
        assert fields["max_bytes"] == 5_000_000
        assert fields["isolation_level"] == 0
        if version >= 7:
            assert (fields["session_id"], fields["session_epoch"]) == (0, -1)
            assert fields["forgotten_topics_data"] == []
        if version >= 11:
            assert fields["rack_id"] == ""
        asked = {
            (topic, p[0]): (p[-3] if version >= 5 else p[-2], p[-1])
            for topic, partitions in fields["topics"]
            for p in partitions
        }
        assert asked == {
            ("a", 0): (offsets[0], 1_000_000),
            ("b", 3): (offsets[1], 1_000_000),
            ("a", 2): (offsets[2], 1_000_000),
        }


def test_versions_outside_the_encoded_range_are_refused() -> None:
    with pytest.raises(ValueError, match="v12"):
        FetchRequestTemplate(12, "c", [PartitionState("a", 0, 0)], 1, 1, 1)
    for parse in PARSERS.values():
        with pytest.raises(ValueError, match="v3"):
            parse(b"\0" * 64, 4, 3)


# -- response reading ------------------------------------------------------------------------
def response(
    version: int, topics: list[tuple[str, list[tuple[int, int, int, bytes | None]]]], error: int = 0
) -> bytes:
    """A FetchResponse frame (correlation id first) as aiokafka's structs encode it;
    partitions as (partition, error, high watermark, records), log start = hw - 100."""
    encoded = []
    for topic, partitions in topics:
        rows = []
        for partition, code, highwater, records in partitions:
            aborted = [(7, highwater - 1)] if partition % 2 else None  # skipped when reading
            row: tuple[Any, ...] = (partition, code, highwater, highwater)
            if version >= 5:
                row += (highwater - 100,)
            row += (aborted,)
            if version >= 11:
                row += (-1,)
            rows.append((*row, records))
        encoded.append((topic, rows))
    args: tuple[Any, ...] = (0,)
    if version >= 7:
        args += (error, 0)
    body: bytes = RESPONSES[version](*args, encoded).encode()
    return struct.pack(">i", 99) + body


@pytest.mark.parametrize("version", FETCH_VERSIONS)
def test_both_readers_read_what_aiokafka_encodes(version: int) -> None:
    one = batch(40, [b"a", b"b"])
    two = batch(7, [b"c"]) + batch(8, [b"d"], control=True)
    data = response(
        version,
        [
            ("schedule", [(0, 0, 42, one), (1, 0, 9, two), (2, 0, 100, b""), (3, 6, -1, None)]),
            ("notifications", [(0, 1, 5, None)]),
        ],
    )
    for parse in PARSERS.values():
        error, partitions = parse(data, 4, version)
        assert error == 0
        got = [(t, p, code, hw, ls, data[s:e]) for t, p, code, hw, ls, s, e in partitions]
        start = (lambda hw: hw - 100) if version >= 5 else (lambda _hw: -1)
        assert got == [
            ("schedule", 0, 0, 42, start(42), one),
            ("schedule", 1, 0, 9, start(9), two),
            ("schedule", 2, 0, 100, start(100), b""),
            ("schedule", 3, 6, -1, start(-1), b""),
            ("notifications", 0, 1, 5, start(5), b""),
        ]
        # the records read straight from the response, control batch skipped, positions past it
        reader = _batches.BatchReader(
            data, 7, True, IngestRecord, partitions[1][5], partitions[1][6]
        )
        assert (reader.scan_next, reader.scan_records) == (9, 1)
        assert [(r.offset, r.value) for r in reader.take(100)] == [(7, b"c")]
        assert reader.done
        assert reader.next_offset == 9


def test_the_top_level_error_code_is_read() -> None:
    data = response(11, [], error=70)
    for parse in PARSERS.values():
        assert parse(data, 4, 11) == (70, [])


@pytest.mark.parametrize("cut", [1, 5, 17, 40, 80])
def test_a_truncated_response_is_an_error_from_both(cut: int) -> None:
    data = response(11, [("schedule", [(0, 0, 42, batch(40, [b"a", b"b"]))])])
    for parse in PARSERS.values():
        with pytest.raises(CorruptRecordException):
            parse(data[: len(data) - cut], 4, 11)


def test_readers_over_a_slice_agree_and_scan_the_next_offset() -> None:
    records = batch(5, [b"x", b"y", b"z"]) + batch(8, [b"m"], control=True) + batch(9, [b"w"])
    data = b"junk" + records + batch(10, [b"partial"])[:30] + b"more junk"
    start, end = 4, 4 + len(records) + 30
    for reader_type in (_batches.BatchReader, batches.BatchReader):
        reader = reader_type(data, 6, True, IngestRecord, start, end)
        assert (reader.scan_next, reader.scan_records) == (10, 4)
        taken = [(r.offset, r.value) for r in reader.take(2)] + [
            (r.offset, r.value) for r in reader.take(10)
        ]
        assert taken == [(6, b"y"), (7, b"z"), (9, b"w")]
        assert reader.done
        assert reader.next_offset == 10


def test_the_raw_response_hands_the_frame_on_undecoded() -> None:
    frame = io.BytesIO(struct.pack(">i", 12345) + b"body")
    assert _RawResponse.parse_response_header(frame).correlation_id == 12345
    assert _RawResponse.RESPONSE_TYPE.decode(frame) == struct.pack(">i", 12345) + b"body"


# -- the loop, against a fake cluster ----------------------------------------------------------
@dataclass
class FakeLog:
    batches: list[bytes] = field(default_factory=list)
    end: int = 0
    start: int = 0
    #: base offset of a batch → answers it is still missing from (stored after later ones)
    late: dict[int, int] = field(default_factory=dict)

    def append(self, values: Sequence[bytes]) -> None:
        self.batches.append(batch(self.end, values))
        self.end += len(values)

    def read(self, offset: int) -> bytes:
        """Every batch that ends after ``offset`` (a broker answers from the batch holding
        it), at most two per answer so that a topic takes several rounds."""
        found = []
        for raw in self.batches:
            base = int.from_bytes(raw[0:8], "big")
            if base + int.from_bytes(raw[23:27], "big") < offset:
                continue
            if self.late.get(base, 0) > 0:
                self.late[base] -= 1
                continue
            found.append(raw)
        return b"".join(found[:2])


class FakeLink:
    def __init__(self, cluster: FakeCluster, node: int) -> None:
        self.cluster = cluster
        self.node = node
        self.fetch_version: int | None = 11
        self.pending: list[asyncio.Future[bytes]] = []
        self.closed = False

    def request(
        self, template: FetchRequestTemplate, wait: tuple[int, int], offsets: Sequence[int]
    ) -> asyncio.Future[bytes]:
        if self.closed:
            raise KafkaConnectionError("closed")
        _, version, _, _, body = decode_request(template.encode(1, wait, offsets))
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        rows = []
        anything = False
        for topic, partitions in body.topics:
            for partition, _epoch, offset, _start, _max in partitions:
                key = (topic, partition)
                code = self.cluster.errors.pop(key, 0)
                if code == 0 and self.cluster.leaders[key] != self.node:
                    code = 6  # NOT_LEADER_OR_FOLLOWER
                fake = self.cluster.logs[key]
                if code == 0 and not fake.start <= offset <= fake.end:
                    code = 1
                records = fake.read(offset) if code == 0 else b""
                anything = anything or bool(records)
                rows.append(
                    (topic, (partition, code, fake.end, fake.end, fake.start, None, -1, records))
                )
        by_topic: dict[str, list[Any]] = {}
        for topic, row in rows:
            by_topic.setdefault(topic, []).append(row)
        frame = struct.pack(">i", 1) + RESPONSES[version](0, 0, 0, list(by_topic.items())).encode()
        self.cluster.requests.append(
            (
                self.node,
                dict(zip([(t, p[0]) for t, ps in body.topics for p in ps], offsets, strict=True)),
            )
        )
        self.cluster.waits.append(wait)
        delay = 0 if anything else wait[0] / 1000  # a broker holds an empty fetch
        asyncio.get_running_loop().call_later(delay, self._answer, future, frame)
        return future

    def _answer(self, future: asyncio.Future[bytes], frame: bytes) -> None:
        if not future.done():
            future.set_result(frame)
        if future in self.pending:
            self.pending.remove(future)

    def close(self) -> None:
        self.closed = True
        for future in self.pending:
            if not future.done():
                future.set_exception(KafkaConnectionError("closed"))
        self.pending.clear()


class FakeCluster:
    """Brokers as the fetch loop sees them: leaders per partition, links per node, and
    metadata that moves a partition only when refreshed (as a real client's does)."""

    def __init__(self, leaders: dict[tuple[str, int], int]) -> None:
        self.leaders = dict(leaders)
        self.known = dict(leaders)  # the metadata the loop has
        self.logs = {key: FakeLog() for key in leaders}
        self.links: dict[int, FakeLink] = {}
        self.errors: dict[tuple[str, int], int] = {}
        self.refreshes = 0
        self.connects: list[int] = []
        self.requests: list[tuple[int, dict[tuple[str, int], int]]] = []
        #: (max wait ms, min bytes) of each request, in the order of ``requests``
        self.waits: list[tuple[int, int]] = []

    def leader(self, topic: str, partition: int) -> int | None:
        return self.known[(topic, partition)]

    def link(self, node_id: int) -> FakeLink | None:
        link = self.links.get(node_id)
        return None if link is None or link.closed else link

    async def connect(self, node_id: int) -> bool:
        self.connects.append(node_id)
        await asyncio.sleep(0)
        self.links[node_id] = FakeLink(self, node_id)
        return True

    def refresh_metadata(self) -> None:
        self.refreshes += 1
        self.known = dict(self.leaders)

    async def latest_offset(self, topic: str, partition: int) -> int:
        return self.logs[(topic, partition)].end


PARTITIONS = [("s", 0), ("s", 1), ("s", 2), ("n", 0)]


def fetcher(cluster: FakeCluster, **options: Any) -> LeanFetcher:
    return LeanFetcher(
        cluster,
        [(t, p, 0) for t, p in PARTITIONS],
        client_id="test",
        request_timeout_seconds=5,
        max_wait_ms=2,
        **options,
    )


async def drain(
    loop_: LeanFetcher,
    cluster: FakeCluster,
    got: dict[tuple[str, int], list[int]],
    rounds: int = 400,
) -> None:
    """Rounds until every partition's records are in ``got`` (offsets in hand-out order)."""
    for _ in range(rounds):
        if all(len(got.get(k, [])) >= cluster.logs[k].end for k in cluster.logs):
            return
        for item in await loop_.next_round(0.05):
            while not item.reader.done:
                got.setdefault((item.topic, item.partition), []).extend(
                    r.offset for r in item.reader.take(3)
                )
    raise AssertionError(f"not everything arrived: {got}")


def fill(cluster: FakeCluster, batches_each: int, size: int = 3) -> None:
    for n in range(batches_each):
        for key, fake in cluster.logs.items():
            fake.append([b"%s-%d-%d" % (key[0].encode(), n, i) for i in range(size)])


def exactly_once(cluster: FakeCluster, got: dict[tuple[str, int], list[int]]) -> None:
    for key, fake in cluster.logs.items():
        assert got.get(key, []) == list(range(fake.start, fake.end)), key


async def test_partitions_on_two_brokers_arrive_once_and_in_order() -> None:
    cluster = FakeCluster({("s", 0): 1, ("s", 1): 2, ("s", 2): 1, ("n", 0): 2})
    fill(cluster, 5)
    lean = fetcher(cluster)
    got: dict[tuple[str, int], list[int]] = {}
    await drain(lean, cluster, got)
    exactly_once(cluster, got)
    assert sorted(set(cluster.connects)) == [1, 2]
    # one request per node at a time, each naming only the partitions that node leads
    for node, asked in cluster.requests:
        assert all(cluster.leaders[key] == node for key in asked)
    assert lean.bounds("s", 1) == (0, 15)
    await lean.close()


async def test_a_leader_move_is_followed_after_a_metadata_refresh() -> None:
    cluster = FakeCluster({("s", 0): 1, ("s", 1): 1, ("s", 2): 1, ("n", 0): 1})
    fill(cluster, 2)
    lean = fetcher(cluster)
    got: dict[tuple[str, int], list[int]] = {}
    await drain(lean, cluster, got)
    cluster.leaders[("s", 1)] = 2  # the loop still believes node 1 until it refreshes
    fill(cluster, 4)
    await drain(lean, cluster, got)
    exactly_once(cluster, got)
    assert cluster.refreshes >= 1
    assert any(node == 2 and ("s", 1) in asked for node, asked in cluster.requests)
    await lean.close()


async def test_a_dropped_connection_is_reopened_and_nothing_is_lost_or_repeated() -> None:
    cluster = FakeCluster({("s", 0): 1, ("s", 1): 2, ("s", 2): 1, ("n", 0): 2})
    fill(cluster, 2)
    lean = fetcher(cluster)
    got: dict[tuple[str, int], list[int]] = {}
    await drain(lean, cluster, got)
    fill(cluster, 3)
    lean.send_fetches()
    cluster.links[1].close()  # mid-request
    await drain(lean, cluster, got)
    exactly_once(cluster, got)
    assert cluster.connects.count(1) == 2
    await lean.close()


async def test_offset_out_of_range_moves_to_the_end_and_reports_it() -> None:
    cluster = FakeCluster({("s", 0): 1, ("s", 1): 1, ("s", 2): 1, ("n", 0): 1})
    fill(cluster, 2)
    resets: list[tuple[str, int, int, int]] = []
    lean = fetcher(cluster, on_reset=lambda *a: resets.append(a))
    got: dict[tuple[str, int], list[int]] = {}
    await drain(lean, cluster, got)
    # the broker lost the log of s[2] (a new leader with less): its end is now below us
    cluster.logs[("s", 2)] = FakeLog(batches=[batch(0, [b"x", b"y"])], end=2)
    for _ in range(50):
        if resets:
            break
        await lean.next_round(0.01)
    assert resets == [("s", 2, 6, 2)]
    assert lean.position("s", 2) == 2
    cluster.logs[("s", 2)].append([b"new"])
    got[("s", 2)] = [0, 1]  # from the new end on
    await drain(lean, cluster, got)
    assert got[("s", 2)] == [0, 1, 2]
    await lean.close()


async def test_an_answer_asked_at_an_old_position_is_dropped() -> None:
    cluster = FakeCluster({("s", 0): 1, ("s", 1): 1, ("s", 2): 1, ("n", 0): 1})
    fill(cluster, 1)
    lean = fetcher(cluster)
    got: dict[tuple[str, int], list[int]] = {}
    await drain(lean, cluster, got)
    fill(cluster, 3)
    lean.send_fetches()  # asks every partition at 3
    lean.seek("s", 0, 6)  # as if 3-5 had come another way: the answer from 3 is stale
    got[("s", 0)] += [3, 4, 5]
    await drain(lean, cluster, got)
    exactly_once(cluster, got)
    assert lean.counters.stale >= 1
    await lean.close()


async def test_a_partition_error_backs_off_that_partition_only() -> None:
    cluster = FakeCluster({("s", 0): 1, ("s", 1): 1, ("s", 2): 1, ("n", 0): 1})
    fill(cluster, 2)
    cluster.errors[("s", 0)] = 29  # TOPIC_AUTHORIZATION_FAILED, once
    lean = fetcher(cluster)
    got: dict[tuple[str, int], list[int]] = {}
    await drain(lean, cluster, got)
    exactly_once(cluster, got)
    assert lean.counters.by_error["TopicAuthorizationFailedError"] == 1
    await lean.close()


# -- the ingest's side of an offset reset -------------------------------------------------------
@dataclass(eq=False)
class Subscriber:
    partitions: tuple[tuple[str, int], ...]
    resyncs: list[tuple[str, int]] = field(default_factory=list)
    readers: Readers = NO_READERS

    @property
    def writer(self) -> Any:
        return lambda _frame: None

    def buffer(self, key: Any, record: Any) -> None:
        pass

    def on_resync(self, key: tuple[str, int]) -> None:
        self.resyncs.append(key)


def test_moving_past_lost_records_restarts_the_ring_and_resyncs_its_subscribers() -> None:
    hub = ChannelHub({ChannelKind.SCHEDULE: "s", ChannelKind.NOTIFICATIONS: "n"}, 16)
    hub.assign("s", 0, 0, 2)
    hub.assign("s", 1, 0, 2)
    hub.assign("n", 0, 0, 1)
    ingest = KafkaIngest(GatewayKafkaSettings(), ("s", "n"), hub, backfill=16)
    channel = Channel(ChannelKind.SCHEDULE, "i1")
    key = hub.partition_key(channel)
    other = (key[0], 1 - key[1])
    hub.ingest("s", key[1], [IngestRecord(n, b"x", b"{}", None, None, 0) for n in range(5)])
    subscriber = Subscriber((key,))
    bystander = Subscriber((other,))
    hub.attach(subscriber, [channel])
    hub.attach(bystander, [Channel(ChannelKind.SCHEDULE, "elsewhere")])
    ingest._moved_past_lost_records("s", key[1], 5, 2)
    assert hub.position(key) == 1  # the next record is at 2
    assert hub.ring_since(key, 0, {b"x"}) is None  # nothing before 2 is served from memory
    assert hub.ring_floor(key) == 2
    assert subscriber.resyncs == [key]
    assert bystander.resyncs == []
    assert ingest.offset_resets == 1


async def test_an_empty_answer_is_followed_by_the_next_fetch_at_once() -> None:
    """A silent log: the long-poll paces the rounds, not ``next_round``'s timeout."""
    cluster = FakeCluster({("s", 0): 1, ("s", 1): 1, ("s", 2): 1, ("n", 0): 1})
    lean = fetcher(cluster)  # the broker holds each empty fetch 2 ms
    assert await lean.next_round(0.3) == []
    assert len(cluster.requests) > 20
    await lean.close()


async def test_a_fetch_from_behind_the_reported_high_watermark_is_not_held() -> None:
    """At moderate rates the ingest asks the broker to hold fetches (``min_bytes``). A
    partition the broker reported records past its position for (an answer that carried
    only part of them) is fetched again without the hold: those records are there now,
    and a held fetch only delayed them (Tansu answered held fetches without them for
    several rounds). Caught up, the hold is asked again."""
    cluster = FakeCluster({("s", 0): 1, ("s", 1): 1, ("s", 2): 1, ("n", 0): 1})
    fill(cluster, 5)  # each answer carries two batches of a partition: three rounds
    lean = fetcher(cluster, min_bytes=1 << 20)
    got: dict[tuple[str, int], list[int]] = {}
    await drain(lean, cluster, got)
    exactly_once(cluster, got)
    await lean.next_round(0.01)  # the fetch after the last answer: caught up
    ends = {key: fake.end for key, fake in cluster.logs.items()}
    asked = [
        (min_bytes, any(offset < ends[key] for key, offset in offsets.items()))
        for (_, offsets), (_, min_bytes) in zip(cluster.requests, cluster.waits, strict=True)
    ]
    assert asked[0] == (1 << 20, True)  # nothing reported yet: held
    behind = [min_bytes for min_bytes, short in asked[1:] if short]
    caught_up = [min_bytes for min_bytes, short in asked[1:] if not short]
    assert behind
    assert set(behind) == {1}
    assert caught_up
    assert set(caught_up) == {1 << 20}
    assert lean.counters.unheld == len(behind)
    await lean.close()


# -- a hole in the log ----------------------------------------------------------------------
async def test_a_batch_the_broker_stores_after_a_later_one_is_waited_for() -> None:
    """Tansu gives a produce request its offsets, then stores its batch: a fetch in between
    found another producer's later batch already stored and answered it, one batch missing
    (bench/e2e_latency.py: one booking's frame never reached a gateway's 153 clients). A
    data topic's offsets have no holes (``cleanup.policy=delete``), so the hole is fetched
    again until the batch is there: every record once, in order."""
    cluster = FakeCluster({("s", 0): 1, ("s", 1): 1, ("s", 2): 1, ("n", 0): 1})
    fill(cluster, 4)
    cluster.logs[("s", 0)].late[3] = 3  # offsets 3-5: missing from the next three answers
    resets: list[tuple[str, int, int, int]] = []
    lean = fetcher(cluster, on_reset=lambda *a: resets.append(a))
    got: dict[tuple[str, int], list[int]] = {}
    await drain(lean, cluster, got)
    exactly_once(cluster, got)
    assert cluster.logs[("s", 0)].late[3] == 0
    assert lean.counters.holes == 1
    assert lean.counters.holes_skipped == 0
    assert resets == []
    await lean.close()


def one_partition_with_a_hole(
    hole_wait_seconds: float,
) -> tuple[LeanFetcher, list[tuple[str, int, int, int]]]:
    """A fetch loop over one partition whose offsets 2-3 were never stored (0-1 and 4-5
    were), and the offset resets it reports."""
    cluster = FakeCluster({("s", 0): 1})
    fake = cluster.logs[("s", 0)]
    fake.append([b"a", b"b"])
    fake.end += 2
    fake.append([b"e", b"f"])
    resets: list[tuple[str, int, int, int]] = []
    lean = LeanFetcher(
        cluster,
        [("s", 0, 0)],
        client_id="test",
        request_timeout_seconds=5,
        max_wait_ms=2,
        hole_wait_seconds=hole_wait_seconds,
        on_reset=lambda *a: resets.append(a),
    )
    return lean, resets


async def test_a_hole_that_stays_is_read_past_after_the_wait_and_reported() -> None:
    """Records a broker lost for good (its batch never stored): once the hole has lasted
    ``hole_wait_seconds`` the fetch goes on past it, and the ingest hears of it as of an
    offset reset (its subscribers start over with a ``resync``)."""
    lean, resets = one_partition_with_a_hole(hole_wait_seconds=0.1)
    got: list[int] = []
    started = asyncio.get_running_loop().time()
    skipped_after = None
    while len(got) < 4 and asyncio.get_running_loop().time() - started < 5:
        for item in await lean.next_round(0.05):
            while not item.reader.done:
                offsets = [r.offset for r in item.reader.take(10)]
                if 4 in offsets and skipped_after is None:
                    skipped_after = asyncio.get_running_loop().time() - started
                got.extend(offsets)
    assert got == [0, 1, 4, 5]
    assert skipped_after is not None
    assert skipped_after >= 0.1
    assert resets == [("s", 0, 2, 4)]
    assert lean.counters.holes == 1
    assert lean.counters.holes_skipped == 1
    await lean.close()


async def test_a_compacted_topics_holes_are_read_past_at_once() -> None:
    """The presence topic is compacted: holes there are records compaction removed, not a
    fault (``hole_wait_seconds=0``)."""
    lean, resets = one_partition_with_a_hole(hole_wait_seconds=0)
    got: list[int] = []
    for item in await lean.next_round(1.0):
        while not item.reader.done:
            got.extend(r.offset for r in item.reader.take(10))
    assert got == [0, 1, 4, 5]
    assert resets == []
    assert lean.counters.holes == 0
    await lean.close()


# -- a data topic the broker does not have yet -------------------------------------------------
class _MetadataClient:
    async def force_metadata_update(self) -> bool:
        await asyncio.sleep(0.01)
        return True


class _ConsumerWithout:
    """A consumer whose metadata has no partitions of the topic until ``after`` refreshes."""

    def __init__(self, after: int | None) -> None:
        self.after = after
        self.refreshes = 0
        self._client = _MetadataClient()

    def partitions_for_topic(self, _topic: str) -> set[int] | None:
        self.refreshes += 1
        return {1, 0} if self.after is not None and self.refreshes > self.after else None


async def test_a_gateway_waiting_for_a_missing_topic_says_so_and_gives_up_naming_it() -> None:
    """A gateway started before its topics exist waited 30 s in silence, then failed with
    "topic … has no partitions" at the end of a traceback: it says at once that it waits,
    finds the topic when it comes, and else names it and what to do."""
    consumer: Any = _ConsumerWithout(after=3)
    with structlog.testing.capture_logs() as logs:
        assert await partitions_of(consumer, "s", wait_seconds=5) == [0, 1]
    assert [e["event"] for e in logs] == ["topic not on the broker: waiting for it", "topic found"]
    never: Any = _ConsumerWithout(after=None)
    with pytest.raises(TopicMissing, match=r"topic s is not on the broker \(waited 0.1 s\)"):
        await partitions_of(never, "s", wait_seconds=0.1)
