"""The ingest's own fetch loop: aiokafka's connections, metadata and protocol knowledge,
without its per-round Python.

aiokafka's consumer spends ~0.15 ms of CPU per fetch round whatever the round brings: its
fetcher task regroups every partition by leader, builds a ``FetchRequest`` through its
generic struct encoder, decodes the whole response into Python tuples, wraps each
partition in ``FetchResult`` objects, wakes the consumer's ``getmany`` through waiters and
an ``asyncio.wait`` over a fresh set of futures. Tansu answers a fetch only at its
long-poll deadline, so a gateway makes 10-200 such rounds a second even when no record for
its subscribers arrives: that was most of its fixed cost (docs/scaling.md, issue 14 item 1).

Here one task (the ingest's) drives every round:

* per leader node one fetch in flight; the request for a (node, partition set, version) is
  encoded once (:class:`FetchRequestTemplate`), each round only patches the correlation id,
  the long-poll bound, ``min_bytes`` and the fetch offsets in place;
* the broker is asked to hold a fetch (``min_bytes`` > 1, at moderate rates) only while
  every partition of it is at the high watermark the broker last reported: records it
  already has are asked for without a hold (a held fetch only delayed them — Tansu even
  answered held fetches without them, round after round: docs/scaling.md);
* the request goes out on aiokafka's own connection to that node (so SASL, TLS, the
  ApiVersions handshake and reconnects stay aiokafka's) and its response comes back as the
  raw frame, not decoded by aiokafka (``adapters/fetch_links.py``);
* the response's partition headers are read by the compiled decoder
  (``_batches.parse_fetch_response``) and each partition's record set becomes a
  ``BatchReader`` over the response bytes (no copy): the next fetch offset comes from the
  batch headers at once, so the next fetch is on its way while these records are decoded
  and fanned out; the records themselves are decoded a slice at a time as the hub takes
  them.

A hole in a data topic's offsets is a broker's fault, not the log (``cleanup.policy=delete``
has none): Tansu gives a produce request its offsets, then stores its batch, so a fetch in
between can find another producer's later batch stored and answer it without the one
before (a probe with three producers on one partition: 6 holes in 20 s; ``make bench``: a
booking's frame missing at one gateway's every client). The records before the hole are
handed out and the hole is fetched again until its batch is there; one that lasts
``hole_wait_seconds`` (records the broker lost) is read past and reported as an offset
reset (``on_reset``: the ingest's subscribers start over). ``hole_wait_seconds=0`` reads
past holes at once: a compacted topic's (presence) are the records compaction removed.

Correctness, as aiokafka's fetcher does it: a response for a partition counts only if it
was asked at the partition's current position (anything else is a stale answer and
dropped); ``OFFSET_OUT_OF_RANGE`` moves the partition to the end of the log (the ingest's
``auto_offset_reset="latest"``) and reports it (the hub restarts that partition's ring);
``NOT_LEADER_OR_FOLLOWER``, ``UNKNOWN_TOPIC_OR_PARTITION`` and the other leadership errors,
a lost connection or a request that outlives its deadline refresh the metadata and retry
that node or partition after a back-off (100 ms doubling to 5 s), logged with the node,
partitions and offsets.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, NamedTuple, Protocol

import structlog
from aiokafka.errors import KafkaConnectionError, for_code
from aiokafka.record.memory_records import MemoryRecords

from push_gateway.adapters.records import BatchReader, IngestRecord, _ListReader, decode

try:
    from push_gateway.adapters._batches import parse_fetch_response
except ImportError:  # no C compiler where the package was installed (see setup.py)
    from push_gateway.adapters.batches import parse_fetch_response

log = structlog.get_logger(__name__)

FETCH_API_KEY: Final = 1
#: the Fetch versions this loop encodes and reads, best first: the non-flexible ones with
#: record batches v2. Apache Kafka 4.x accepts Fetch v4-v17 (KIP-896 removed v0-v3);
#: aiokafka 0.14 itself goes up to v11.
FETCH_VERSIONS: Final = (11, 10, 9, 8, 7, 6, 5, 4)
READ_UNCOMMITTED: Final = 0

#: error codes (Kafka's protocol) this loop acts on
NONE: Final = 0
OFFSET_OUT_OF_RANGE: Final = 1
#: the partition's leader moved or is not known here yet: refresh metadata, retry
LEADERSHIP_ERRORS: Final = frozenset(
    {
        3,  # UNKNOWN_TOPIC_OR_PARTITION
        5,  # LEADER_NOT_AVAILABLE
        6,  # NOT_LEADER_OR_FOLLOWER
        9,  # REPLICA_NOT_AVAILABLE
        56,  # KAFKA_STORAGE_ERROR
        74,  # FENCED_LEADER_EPOCH
        75,  # UNKNOWN_LEADER_EPOCH
    }
)

BACKOFF_FIRST_SECONDS: Final = 0.1
BACKOFF_MAX_SECONDS: Final = 5.0
#: how long a hole in a data topic is fetched again before it is read past (Tansu stores a
#: batch microseconds to milliseconds after giving it its offsets)
HOLE_WAIT_SECONDS: Final = 1.0


class Fetched(NamedTuple):
    """One partition's records of one fetch response, to be taken a slice at a time."""

    topic: str
    partition: int
    reader: Any  # BatchReader (or a _ListReader for the old formats): take(n), done
    #: the fetch offset the records were asked from
    offset: int


class BrokerLink(Protocol):
    """A connected broker: raw requests out, raw response frames back."""

    @property
    def fetch_version(self) -> int | None:
        """The best Fetch version of :data:`FETCH_VERSIONS` both sides speak (None: none)."""
        ...

    def request(
        self, template: FetchRequestTemplate, wait: tuple[int, int], offsets: Sequence[int]
    ) -> asyncio.Future[bytes]:
        """Send the request with ``wait`` = (max wait ms, min bytes) and these offsets; the
        future gets the response frame (correlation id first)."""
        ...

    def close(self) -> None:
        """Drop the connection (a request outlived its deadline): pending requests fail."""
        ...


class Brokers(Protocol):
    """The cluster as the fetch loop needs it (aiokafka's: :class:`AiokafkaBrokers`)."""

    def leader(self, topic: str, partition: int) -> int | None: ...

    def link(self, node_id: int) -> BrokerLink | None:
        """The node's connection if it is open, else None (then :meth:`connect`)."""
        ...

    async def connect(self, node_id: int) -> bool: ...

    def refresh_metadata(self) -> None: ...

    async def latest_offset(self, topic: str, partition: int) -> int: ...


@dataclass(slots=True, eq=False)
class PartitionState:
    topic: str
    partition: int
    #: the next offset to fetch
    position: int
    highwater: int = -1
    log_start: int = -1
    #: not fetched before this (monotonic seconds): back-off after an error
    paused_until: float = 0.0
    backoff: float = 0.0
    resetting: bool = False
    #: the first offset of a hole met at the position (-1: none), and since when
    hole_at: int = -1
    hole_since: float = 0.0


class FetchRequestTemplate:
    """A FetchRequest (size, header v1, body) for a fixed list of partitions, encoded once;
    :meth:`encode` patches the correlation id, the long-poll bound, the minimum bytes and
    each partition's fetch offset into the same bytes."""

    __slots__ = ("version", "partitions", "_buf", "_wait_at", "_offsets_at")

    def __init__(
        self,
        version: int,
        client_id: str,
        partitions: Sequence[PartitionState],
        min_bytes: int,
        max_bytes: int,
        partition_max_bytes: int,
    ) -> None:
        if version not in FETCH_VERSIONS:
            raise ValueError(f"Fetch v{version} is not encoded here")
        self.version = version
        self.partitions = tuple(partitions)
        client = client_id.encode()
        out = bytearray(b"\0\0\0\0")  # size, set below
        out += struct.pack(">hhih", FETCH_API_KEY, version, 0, len(client)) + client
        out += struct.pack(">iiii", -1, 0, min_bytes, max_bytes)  # replica id, wait, …
        self._wait_at = len(out) - 12
        out += struct.pack(">b", READ_UNCOMMITTED)
        if version >= 7:
            out += struct.pack(">ii", 0, -1)  # no fetch session: full fetches
        by_topic: dict[str, list[int]] = {}
        for index, state in enumerate(self.partitions):
            by_topic.setdefault(state.topic, []).append(index)
        offsets_at = [0] * len(self.partitions)
        out += struct.pack(">i", len(by_topic))
        for topic, indexes in by_topic.items():
            name = topic.encode()
            out += struct.pack(">h", len(name)) + name + struct.pack(">i", len(indexes))
            for index in indexes:
                out += struct.pack(">i", self.partitions[index].partition)
                if version >= 9:
                    out += struct.pack(">i", -1)  # current leader epoch: unknown
                offsets_at[index] = len(out)
                out += struct.pack(">q", 0)
                if version >= 5:
                    out += struct.pack(">q", -1)  # log start offset: a consumer's
                out += struct.pack(">i", partition_max_bytes)
        if version >= 7:
            out += struct.pack(">i", 0)  # forgotten topics
        if version >= 11:
            out += struct.pack(">h", 0)  # rack id ""
        struct.pack_into(">i", out, 0, len(out) - 4)
        self._buf = out
        self._offsets_at = tuple(offsets_at)

    def encode(self, correlation_id: int, wait: tuple[int, int], offsets: Sequence[int]) -> bytes:
        """The request's bytes with ``wait`` = (max wait ms, min bytes) and these fetch
        offsets (one per partition, in order)."""
        buf = self._buf
        pack = struct.pack_into
        pack(">i", buf, 8, correlation_id)
        pack(">ii", buf, self._wait_at, *wait)
        for at, offset in zip(self._offsets_at, offsets, strict=True):
            pack(">q", buf, at, offset)
        return bytes(buf)


@dataclass(slots=True, eq=False)
class _InFlight:
    node: int
    template: FetchRequestTemplate
    offsets: tuple[int, ...]
    future: asyncio.Future[bytes]
    deadline: float
    link: BrokerLink


@dataclass(slots=True)
class _Node:
    paused_until: float = 0.0
    backoff: float = 0.0
    connecting: asyncio.Task[bool] | None = None
    template: FetchRequestTemplate | None = None
    partitions: tuple[PartitionState, ...] = ()
    version: int = 0


@dataclass
class FetchCounters:
    rounds: int = 0
    errors: int = 0
    resets: int = 0
    stale: int = 0
    #: fetches sent without the hold (``min_bytes`` 1) because a partition was behind
    unheld: int = 0
    #: holes met in a partition's offsets (fetched again), and those read past after
    #: ``hole_wait_seconds``
    holes: int = 0
    holes_skipped: int = 0
    by_error: collections.Counter[str] = field(default_factory=collections.Counter)


def _next_backoff(current: float) -> float:
    return BACKOFF_FIRST_SECONDS if current <= 0 else min(BACKOFF_MAX_SECONDS, current * 2)


class LeanFetcher:
    """Fetches every given partition from its leader, one request in flight per node, in
    the caller's task (see the module docstring). :meth:`next_round` is the ``getmany``."""

    def __init__(
        self,
        brokers: Brokers,
        positions: Iterable[tuple[str, int, int]],
        *,
        client_id: str,
        request_timeout_seconds: float,
        max_wait_ms: int,
        min_bytes: int = 1,
        max_bytes: int = 52_428_800,
        partition_max_bytes: int = 1_048_576,
        check_crcs: bool = True,
        hole_wait_seconds: float = HOLE_WAIT_SECONDS,
        on_reset: Callable[[str, int, int, int], None] | None = None,
    ) -> None:
        self._brokers = brokers
        self._partitions = {(t, p): PartitionState(t, p, offset) for t, p, offset in positions}
        self._client_id = client_id
        self._request_timeout = request_timeout_seconds
        #: the long-poll bound and the bytes the broker waits for (up to the bound) of the
        #: next requests: set per round by the ingest (``domain/fetch_wait.py``)
        self.max_wait_ms = max_wait_ms
        self.min_bytes = min_bytes
        self._max_bytes = max_bytes
        self._partition_max_bytes = partition_max_bytes
        self._check_crcs = check_crcs
        self._hole_wait = hole_wait_seconds
        self._on_reset = on_reset
        self._nodes: dict[int, _Node] = {}
        self._in_flight: dict[int, _InFlight] = {}
        self._done: collections.deque[_InFlight] = collections.deque()
        self._wake: asyncio.Future[None] | None = None
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._no_leader_logged: set[tuple[str, int]] = set()
        self.counters = FetchCounters()

    # -- state -------------------------------------------------------------------------
    def position(self, topic: str, partition: int) -> int:
        return self._partitions[(topic, partition)].position

    def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        """``(log start, high watermark)`` from the latest fetch response (-1: not yet)."""
        state = self._partitions[(topic, partition)]
        return state.log_start, state.highwater

    def seek(self, topic: str, partition: int, offset: int, pause: bool = False) -> None:
        """Fetch the partition from ``offset`` next (after a batch that did not decode:
        ``pause``, after a back-off); an answer in flight for the old position is dropped
        when it comes."""
        state = self._partitions[(topic, partition)]
        state.position = offset
        if pause:
            self._pause(state, time.monotonic())

    def send_fetches(self) -> None:
        """Send a fetch to every node that has none in flight (before the records of the
        last round are fanned out, so the broker's long-poll runs meanwhile)."""
        self._send_fetches(time.monotonic())

    # -- the round -----------------------------------------------------------------------
    async def next_round(self, wait_seconds: float) -> list[Fetched]:
        """The partitions with records from the responses that came in, waiting up to
        ``wait_seconds`` for one (an empty list after that)."""
        loop = asyncio.get_running_loop()
        until = time.monotonic() + wait_seconds
        while True:
            found: list[Fetched] = []
            while self._done:
                self._handle(self._done.popleft(), found)
            if found:
                return found  # the caller sends the next fetches (send_fetches)
            now = time.monotonic()
            self._send_fetches(now)
            if now >= until:
                return found
            await self._sleep(loop, min(until, self._next_deadline(now)) - now)

    async def _sleep(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        if self._done:
            return
        wake = self._wake = loop.create_future()
        timer = loop.call_later(max(0.0, seconds), self._poke)
        try:
            await wake
        finally:
            timer.cancel()
            self._wake = None

    def _poke(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _next_deadline(self, now: float) -> float:
        """The next moment something is due: a request's deadline, a back-off's end."""
        due = now + 60.0
        for flight in self._in_flight.values():
            due = min(due, flight.deadline)
        for node in self._nodes.values():
            if node.paused_until > now:
                due = min(due, node.paused_until)
        for state in self._partitions.values():
            if state.paused_until > now:
                due = min(due, state.paused_until)
        return due

    def _send_fetches(self, now: float) -> None:
        for flight in list(self._in_flight.values()):
            if now >= flight.deadline and not flight.future.done():
                log.warning(
                    "fetch request timed out: dropping the connection",
                    node=flight.node,
                    partitions=_names(flight.template.partitions),
                )
                flight.link.close()
        by_node: dict[int, list[PartitionState]] = {}
        brokers = self._brokers
        for state in self._partitions.values():
            if state.resetting or state.paused_until > now:
                continue
            leader = brokers.leader(state.topic, state.partition)
            if leader is None or leader < 0:
                key = (state.topic, state.partition)
                if key not in self._no_leader_logged:
                    self._no_leader_logged.add(key)
                    log.warning("no leader known: refreshing metadata", partition=_name(state))
                brokers.refresh_metadata()
                self._pause(state, now)
                continue
            by_node.setdefault(leader, []).append(state)
        for node_id, states in by_node.items():
            if node_id in self._in_flight:
                continue
            node = self._nodes.get(node_id)
            if node is None:
                node = self._nodes[node_id] = _Node()
            if node.paused_until > now or node.connecting is not None:
                continue
            link = brokers.link(node_id)
            if link is None:
                node.connecting = task = asyncio.create_task(
                    brokers.connect(node_id), name=f"fetch-connect-{node_id}"
                )
                task.add_done_callback(partial(self._connected, node_id))
                continue
            self._send(node_id, node, link, tuple(states), now)

    def _send(
        self,
        node_id: int,
        node: _Node,
        link: BrokerLink,
        states: tuple[PartitionState, ...],
        now: float,
    ) -> None:
        version = link.fetch_version
        if version is None:
            error = RuntimeError(
                f"broker speaks none of Fetch v{FETCH_VERSIONS[-1]}-v{FETCH_VERSIONS[0]}"
            )
            self._node_failed(node_id, node, states, error, now)
            return
        template = node.template
        if template is None or node.partitions != states or node.version != version:
            template = node.template = FetchRequestTemplate(
                version,
                self._client_id,
                states,
                self.min_bytes,
                self._max_bytes,
                self._partition_max_bytes,
            )
            node.partitions = states
            node.version = version
        max_wait = self.max_wait_ms
        offsets = tuple(state.position for state in states)
        min_bytes = self.min_bytes
        if min_bytes > 1 and any(state.position < state.highwater for state in states):
            # the broker reported records past a position here: it has them now, a hold
            # would only delay them (and Tansu answered such held fetches without them,
            # round after round: records 100-500 ms late; docs/scaling.md)
            min_bytes = 1
            self.counters.unheld += 1
        try:
            future = link.request(template, (max_wait, min_bytes), offsets)
        except KafkaConnectionError as exc:
            self._node_failed(node_id, node, states, exc, now)
            return
        flight = _InFlight(
            node_id,
            template,
            offsets,
            future,
            now + max_wait / 1000 + self._request_timeout,
            link,
        )
        self._in_flight[node_id] = flight
        self.counters.rounds += 1
        future.add_done_callback(partial(self._arrived, flight))

    def _arrived(self, flight: _InFlight, _future: object) -> None:
        self._done.append(flight)
        self._poke()

    def _connected(self, node_id: int, task: asyncio.Task[bool]) -> None:
        node = self._nodes[node_id]
        node.connecting = None
        ok = not task.cancelled() and task.exception() is None and task.result()
        if not ok:
            error = None if task.cancelled() else task.exception()
            node.backoff = _next_backoff(node.backoff)
            node.paused_until = time.monotonic() + node.backoff
            self.counters.errors += 1
            log.warning(
                "fetch connection failed: retrying",
                node=node_id,
                retry_in=round(node.backoff, 2),
                error=repr(error) if error else None,
            )
            self._brokers.refresh_metadata()
        self._poke()

    def _node_failed(
        self,
        node_id: int,
        node: _Node,
        states: Sequence[PartitionState],
        error: BaseException,
        now: float,
    ) -> None:
        node.backoff = _next_backoff(node.backoff)
        node.paused_until = now + node.backoff
        self.counters.errors += 1
        self.counters.by_error[type(error).__name__] += 1
        log.warning(
            "fetch failed: refreshing metadata, retrying",
            node=node_id,
            partitions=_names(states),
            positions=[s.position for s in states],
            retry_in=round(node.backoff, 2),
            error=repr(error),
        )
        self._brokers.refresh_metadata()

    def _pause(self, state: PartitionState, now: float) -> None:
        state.backoff = _next_backoff(state.backoff)
        state.paused_until = now + state.backoff

    # -- a response ----------------------------------------------------------------------
    def _handle(self, flight: _InFlight, found: list[Fetched]) -> None:
        if self._in_flight.get(flight.node) is flight:
            del self._in_flight[flight.node]
        node = self._nodes[flight.node]
        now = time.monotonic()
        future = flight.future
        error = None if not future.done() or future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            self._node_failed(
                flight.node,
                node,
                flight.template.partitions,
                error or asyncio.CancelledError(),
                now,
            )
            return
        data = future.result()
        try:
            top_error, partitions = parse_fetch_response(data, 4, flight.template.version)
        except Exception as exc:  # noqa: BLE001 - a malformed response: as a broken fetch
            flight.link.close()
            self._node_failed(flight.node, node, flight.template.partitions, exc, now)
            return
        if top_error != NONE:
            self._node_failed(
                flight.node, node, flight.template.partitions, for_code(top_error)(), now
            )
            return
        node.backoff = 0.0
        asked = {
            (state.topic, state.partition): offset
            for state, offset in zip(flight.template.partitions, flight.offsets, strict=True)
        }
        for topic, partition, code, highwater, log_start, start, end in partitions:
            state = self._partitions.get((topic, partition))
            offset = asked.get((topic, partition))
            if state is None or offset is None:
                continue
            if state.position != offset or state.resetting:
                self.counters.stale += 1  # sought elsewhere meanwhile: not this answer
                continue
            if code != NONE:
                self._partition_error(flight.node, state, code, offset, highwater, now)
                continue
            state.backoff = 0.0
            if self._no_leader_logged:
                self._no_leader_logged.discard((topic, partition))
            if highwater >= 0:
                state.highwater = highwater
            if log_start >= 0:
                state.log_start = log_start
            if end <= start:
                continue
            reader: Any = BatchReader(
                data, offset, self._check_crcs, IngestRecord, start, end, self._hole_wait > 0
            )
            if reader.legacy:  # magic 0/1: aiokafka's batch objects, decoded at once
                try:
                    reader = _ListReader(
                        *decode(MemoryRecords(data[start:end]), offset, self._check_crcs)
                    )
                except Exception as exc:  # noqa: BLE001 - corrupt: fetched again, logged
                    self._pause(state, now)
                    log.warning(
                        "fetched batch did not decode", partition=_name(state), error=repr(exc)
                    )
                    continue
                state.position = max(offset, reader.next_offset)
            else:
                if reader.hole_end >= 0:
                    reader = self._at_hole(state, reader, offset, now, (data, start, end))
                elif state.hole_at >= 0:
                    state.hole_at = -1  # filled
                state.position = reader.scan_next
            if state.position == offset:
                if state.hole_at >= 0:
                    continue  # only the hole: fetched again at once
                log.warning(
                    "fetch brought no whole record batch",
                    partition=_name(state),
                    offset=offset,
                    bytes=end - start,
                    partition_max_bytes=self._partition_max_bytes,
                )
                continue
            found.append(Fetched(topic, partition, reader, offset))

    def _at_hole(
        self,
        state: PartitionState,
        reader: Any,
        offset: int,
        now: float,
        response: tuple[bytes, int, int],
    ) -> Any:
        """The reader of an answer with a hole (see the module docstring): itself (records
        up to the hole), or once the hole at the position has lasted ``hole_wait_seconds``
        one that reads past it, the ingest told as of an offset reset."""
        hole = reader.scan_next
        if state.hole_at != hole:
            state.hole_at, state.hole_since = hole, now
            self.counters.holes += 1
            log.info(
                "fetch answered past a batch the broker has not stored: fetching it again",
                partition=_name(state),
                missing_from=hole,
                next_stored=reader.hole_end,
            )
            return reader
        if hole != offset or now - state.hole_since < self._hole_wait:
            return reader
        data, start, end = response
        past = BatchReader(data, offset, self._check_crcs, IngestRecord, start, end)
        self.counters.holes_skipped += 1
        state.hole_at = -1
        log.warning(
            "records missing from the log: reading past them",
            partition=_name(state),
            missing_from=hole,
            next_stored=reader.hole_end,
            waited_seconds=round(now - state.hole_since, 3),
        )
        if self._on_reset is not None:
            self._on_reset(state.topic, state.partition, hole, reader.hole_end)
        return past

    def _partition_error(
        self,
        node_id: int,
        state: PartitionState,
        code: int,
        offset: int,
        highwater: int,
        now: float,
    ) -> None:
        error = for_code(code)
        self.counters.errors += 1
        self.counters.by_error[error.__name__] += 1
        if code == OFFSET_OUT_OF_RANGE:
            log.warning(
                "fetch offset out of range: moving to the end of the log",
                partition=_name(state),
                offset=offset,
                high_watermark=highwater,
                log_start=state.log_start,
            )
            self._reset_to_end(state)
            return
        self._pause(state, now)
        leadership = code in LEADERSHIP_ERRORS
        log.warning(
            "fetch: not the partition's leader: refreshing metadata, retrying"
            if leadership
            else "fetch failed for a partition: retrying",
            node=node_id,
            partition=_name(state),
            offset=offset,
            error=error.__name__,
            retry_in=round(state.backoff, 2),
        )
        if leadership:
            self._brokers.refresh_metadata()

    def _reset_to_end(self, state: PartitionState) -> None:
        state.resetting = True
        self.counters.resets += 1
        task = asyncio.create_task(self._reset(state), name=f"fetch-reset-{_name(state)}")
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _reset(self, state: PartitionState) -> None:
        backoff = 0.0
        while True:
            try:
                end = await self._brokers.latest_offset(state.topic, state.partition)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried: the partition waits for it
                backoff = _next_backoff(backoff)
                log.warning(
                    "end offset lookup failed: retrying",
                    partition=_name(state),
                    retry_in=round(backoff, 2),
                    error=repr(exc),
                )
                self._brokers.refresh_metadata()
                await asyncio.sleep(backoff)
        previous = state.position
        state.position = end
        state.resetting = False
        if self._on_reset is not None:
            self._on_reset(state.topic, state.partition, previous, end)
        self._poke()

    async def close(self) -> None:
        for task in list(self._side_tasks) + [
            n.connecting for n in self._nodes.values() if n.connecting is not None
        ]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for flight in self._in_flight.values():
            flight.future.cancel()
        self._in_flight.clear()


def _name(state: PartitionState) -> str:
    return f"{state.topic}[{state.partition}]"


def _names(states: Iterable[PartitionState]) -> list[str]:
    return [_name(s) for s in states]


async def speaks_lean_fetch(brokers: Brokers, topic: str, partition: int) -> bool:
    """Whether the partition's leader speaks a Fetch version this loop encodes (v4-v11);
    True when that cannot be known yet (the loop connects, and retries, by itself)."""
    leader = brokers.leader(topic, partition)
    if leader is None or leader < 0 or not await brokers.connect(leader):
        return True
    link = brokers.link(leader)
    if link is None or link.fetch_version is not None:
        return True
    log.warning(
        "broker speaks no Fetch version of the lean fetch loop: aiokafka's consumer reads",
        node=leader,
        topic=topic,
    )
    return False
