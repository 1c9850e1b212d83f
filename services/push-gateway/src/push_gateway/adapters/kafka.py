"""Kafka: the broadcast ingest consumer and read-back of older history for resumes.

Plain aiokafka, not FastStream, on the ingest path: FastStream's subscriber calls a handler
per message (~18 k msgs/s measured on Tansu), while the gateway must read *every* record of
the cluster. The ingest fetches with its own loop (``adapters/fetch.py``: one task, one
pre-encoded request in flight per leader, on aiokafka's connections and metadata) and hands
whole per-partition slices to the hub, which routes each record with one dict lookup; the
records are lean tuples decoded from the fetched bytes by a compiled decoder
(``adapters/_batches.pyx``), not aiokafka's ``ConsumerRecord`` objects.
``GATEWAY_KAFKA__FETCH_LOOP=aiokafka`` reads through aiokafka's consumer (``getmany``)
instead, as before.

Every gateway reads every partition (manual assignment, no consumer group): a browser may
land on any gateway, so each must see all events (broadcast, not work-sharing). Without a
group there are no rebalances and no committed offsets; a (re)started gateway starts a
ring-buffer's length behind the end of each partition, so resumes after a gateway restart
are still served from memory.
"""

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from push_gateway.adapters.fetch import Fetched, LeanFetcher, speaks_lean_fetch
from push_gateway.adapters.fetch_links import AiokafkaBrokers
from push_gateway.adapters.log_ends import CoalescingLogEnds
from push_gateway.adapters.records import (
    COMPILED,
    IngestRecord,
    _ListReader,
    install_lean_records,
    lean_keys,
)
from push_gateway.config import GatewayKafkaSettings
from push_gateway.domain.fetch_wait import FetchWait
from push_gateway.domain.hub import ChannelHub, Record
from push_gateway.domain.layout import LayoutChange, layout_changes
from push_gateway.timing import IngestTiming

log = structlog.get_logger(__name__)

#: Loop turns given to aiokafka's fetch task between taking a batch and fanning it out: its
#: wake-up (a future callback, then the task) and its send of the next fetch take three, so
#: the broker's long-poll for the next records runs while this batch is written out.
FETCH_HANDOVER_TURNS: Final = 3
#: records handed to the hub at a time (consecutive records of one partition) while they
#: are being delivered, and while nobody here subscribes to them
SLICE_RECORDS: Final = 16
SLICE_RECORDS_UNSUBSCRIBED: Final = 512
#: the longest the fan-out keeps the event loop before letting fetches, accepts and timers run
FANOUT_SLICE_SECONDS: Final = 0.002


def _consumer(settings: GatewayKafkaSettings, **extra: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **settings.client_options(),
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        **extra,
    )


class KafkaIngest:
    """Feeds every partition of the data topics into the hub."""

    def __init__(
        self,
        settings: GatewayKafkaSettings,
        topics: Sequence[str],
        hub: ChannelHub,
        backfill: int,
    ) -> None:
        self._settings = settings
        self._topics = tuple(topics)
        self._hub = hub
        self._backfill = backfill
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._catch_up_to: dict[TopicPartition, int] = {}
        self._beginnings: dict[TopicPartition, int] = {}
        #: topic → the number of partitions read (fixed at start: see ``layout_changes``)
        self._assigned: dict[str, int] = {}
        self.caught_up = False
        self.lag = 0
        self._lag_checked = 0.0
        self.fetch_errors = 0
        self.fetch_wait = FetchWait(
            settings.fetch_max_wait_ms,
            settings.fetch_moderate_max_wait_ms,
            settings.fetch_idle_max_wait_ms,
            settings.fetch_hold_from_ms,
        )
        self._deliveries_seen = 0
        self.timing = IngestTiming()
        self._loop_watch: asyncio.Task[None] | None = None
        #: the lean fetch loop (None: aiokafka's consumer fetches, ``fetch_loop=aiokafka``)
        self.fetcher: LeanFetcher | None = None
        self.offset_resets = 0
        #: the broker's log ends, for resume points past this gateway's (``log_end``)
        self.log_ends = CoalescingLogEnds(
            self._latest_offset, timeout_seconds=settings.request_timeout_ms / 1000
        )

    async def start(self, deadline: float | None = None) -> None:
        """Read every partition from a ring buffer's length before its end. A start that
        fails (Kafka not reachable yet) closes what it opened and may be tried again: the
        hub is assigned only once every broker answer is in. ``deadline``
        (``time.monotonic()``) is when the gateway's start timeout ends, if it has one: a
        data topic the broker does not have is waited for until then, not for
        ``TOPIC_WAIT_SECONDS``."""
        try:
            await self._start(deadline)
        except BaseException:
            await self._close_clients()
            raise

    async def _start(self, deadline: float | None) -> None:
        install_lean_records()
        consumer = _consumer(
            self._settings,
            max_poll_records=self._settings.max_poll_records,
            auto_offset_reset="latest",
            key_deserializer=lean_keys,  # records as IngestRecord tuples (adapters/records.py)
            metadata_max_age_ms=self._settings.metadata_max_age_ms,
        )
        self._consumer = consumer
        await consumer.start()
        partitions: list[TopicPartition] = []
        for topic in self._topics:
            wait = TOPIC_WAIT_SECONDS if deadline is None else deadline - time.monotonic()
            found = await partitions_of(consumer, topic, max(0.0, wait))
            partitions.extend(TopicPartition(topic, p) for p in found)
        beginnings = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        counts = {t: sum(1 for tp in partitions if tp.topic == t) for t in self._topics}
        self._assigned = counts
        starts = {tp: max(beginnings[tp], ends[tp] - self._backfill) for tp in partitions}
        brokers = AiokafkaBrokers(consumer)
        lean = self._settings.fetch_loop == "lean" and (
            not partitions
            or await speaks_lean_fetch(brokers, partitions[0].topic, partitions[0].partition)
        )
        if lean:
            # the consumer stays unassigned (its own fetcher idles): it lends its client
            self.fetcher = LeanFetcher(
                brokers,
                [(tp.topic, tp.partition, starts[tp]) for tp in partitions],
                client_id=self._settings.client_id,
                request_timeout_seconds=self._settings.request_timeout_ms / 1000,
                max_wait_ms=self.fetch_wait.current,
                on_reset=self._moved_past_lost_records,
            )
        else:
            consumer.assign(partitions)
        for tp in partitions:
            if not lean:
                consumer.seek(tp, starts[tp])
            self._hub.assign(tp.topic, tp.partition, starts[tp], counts[tp.topic])
        self._catch_up_to = {tp: ends[tp] for tp in partitions}
        self._beginnings = dict(beginnings)
        self._check_caught_up()
        log.info(
            "ingest assigned",
            partitions=len(partitions),
            backfill=self._backfill,
            fetch_loop="lean" if lean else "aiokafka",
            decoder="compiled" if COMPILED else "python (no C compiler at install: ~10x CPU)",
        )
        self._task = asyncio.create_task(self._run(), name="kafka-ingest")
        self._loop_watch = asyncio.create_task(self.timing.watch_loop(), name="loop-lag")
        gc.callbacks.append(self.timing.on_gc)

    def _moved_past_lost_records(self, topic: str, partition: int, previous: int, now: int) -> None:
        """``OFFSET_OUT_OF_RANGE``: the records at the position are gone (retention) or the
        log was cut back (a broker lost them). Reading goes on at the end of the log, as
        aiokafka's ``auto_offset_reset="latest"`` did; the partition's ring starts again
        there, so no resume is served across the hole from memory (older positions are read
        back from Kafka or answered with a snapshot / ``resync``), and its live subscribers
        are told to start over (the ``resync`` of a control record)."""
        self.offset_resets += 1
        log.warning(
            "ingest moved past records it could not read",
            topic=topic,
            partition=partition,
            position=previous,
            now_at=now,
        )
        self._hub.restart(topic, partition, now)

    def layout_changes(self) -> list[LayoutChange]:
        """The data topics whose partition count in aiokafka's cluster metadata (refreshed
        every ``metadata_max_age_ms``, and after fetch errors) differs from the partitions
        this ingest reads. Two dict lookups: the server asks once a second, never per
        record."""
        consumer = self._consumer
        if consumer is None:
            return []
        found: dict[str, int | None] = {}
        for topic in self._assigned:
            partitions = consumer.partitions_for_topic(topic)
            found[topic] = len(partitions) if partitions else None
        return layout_changes(self._assigned, found)

    def _set_fetch_wait(self, records: int) -> None:
        """Adaptive long-poll (``domain/fetch_wait.py``): long while the log is silent, short
        under load, in between at moderate rates, where fewer rounds save the most CPU."""
        assert self._consumer is not None
        fetcher = self._consumer._fetcher  # noqa: SLF001 - no public setter
        deliveries = self._hub.stats.deliveries
        wait = self.fetch_wait.after_round(
            records, deliveries - self._deliveries_seen, time.monotonic()
        )
        self._deliveries_seen = deliveries
        if fetcher._fetch_max_wait_ms != wait:  # noqa: SLF001
            fetcher._fetch_max_wait_ms = wait  # noqa: SLF001

    async def _run(self) -> None:
        if self.fetcher is not None:
            await self._run_lean(self.fetcher)
            return
        assert self._consumer is not None
        consumer = self._consumer
        while True:
            try:
                batches: dict[TopicPartition, list[IngestRecord]] = await consumer.getmany(
                    timeout_ms=1000
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker hiccup: aiokafka reconnects, keep reading
                self.fetch_errors += 1
                log.warning("ingest fetch failed", error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            self._set_fetch_wait(sum(map(len, batches.values())))
            for _ in range(FETCH_HANDOVER_TURNS):
                await asyncio.sleep(0)
            await self._fan_out(
                [
                    Fetched(tp.topic, tp.partition, _ListReader(records, 0), -1)
                    for tp, records in batches.items()
                ]
            )
            if not self.caught_up:
                self._check_caught_up()

    async def _run_lean(self, fetcher: LeanFetcher) -> None:
        """Rounds of the lean fetch loop: like ``getmany``, a round returns as soon as a
        response brought records, or after a second without any (the adaptive wait's
        "silent"); the next fetches go out before this round's records are fanned out."""
        hub = self._hub
        while True:
            try:
                fetched = await fetcher.next_round(1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a defect, not a broker error (those are retried inside)
                self.fetch_errors += 1
                log.exception("ingest fetch round failed", error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            deliveries = hub.stats.deliveries
            wait = self.fetch_wait
            fetcher.max_wait_ms = wait.after_round(
                sum(f.reader.scan_records for f in fetched),
                deliveries - self._deliveries_seen,
                time.monotonic(),
            )
            self._deliveries_seen = deliveries
            # at low moderate rates the broker holds the fetch for the whole bound (else it
            # answers each produce batch); idle, busy or above the hold's rate: it answers
            # the first bytes. The fetcher drops the hold for a node with a partition
            # behind its high watermark
            hold = self._settings.fetch_moderate_min_bytes if wait.holds else 1
            fetcher.min_bytes = hold
            fetcher.send_fetches()
            await self._fan_out(fetched)
            if not self.caught_up:
                self._check_caught_up()

    def _undecodable(self, item: Fetched, last: int, exc: Exception) -> None:
        """A batch that does not decode (corrupt bytes): the records before it were handed
        out; the partition is fetched again from after the last of them."""
        self.fetch_errors += 1
        offset = item.offset if last < 0 else last + 1
        log.warning(
            "fetched batch did not decode: fetching it again",
            topic=item.topic,
            partition=item.partition,
            offset=offset,
            error=repr(exc),
        )
        if self.fetcher is not None:
            self.fetcher.seek(item.topic, item.partition, offset, pause=True)

    async def _fan_out(self, batches: list[Fetched]) -> None:
        """Hand the records to the hub in slices, giving the event loop back whenever one
        step has held it for ``FANOUT_SLICE_SECONDS``, so the fetch task, new connections,
        heartbeats and catch-ups never wait behind a whole batch (5,000 records with ten
        subscribers each held the loop for tens of ms; with a backlog, for seconds)."""
        ingest = self._hub.ingest
        stats = self._hub.stats
        timing = self.timing
        observe = self.caught_up
        fetched = time.time()
        step_started = time.perf_counter()
        step_cpu = time.thread_time()
        size = SLICE_RECORDS
        for item in batches:
            topic, partition, reader, _ = item
            last = -1
            while not reader.done:
                try:
                    chunk = reader.take(size)
                except Exception as exc:  # noqa: BLE001 - corrupt bytes: fetched again
                    self._undecodable(item, last, exc)
                    break
                if not chunk:
                    break
                last = chunk[-1].offset
                delivered = stats.deliveries
                ingest(topic, partition, chunk)
                # a record nobody here subscribes to costs the hub ~0.1 µs, one with ten
                # subscribers ~100 µs: slices grow only while nothing is being delivered
                if stats.deliveries != delivered:
                    size = SLICE_RECORDS
                else:
                    size = min(size * 4, SLICE_RECORDS_UNSUBSCRIBED)
                if observe and chunk[0].timestamp >= 0:  # -1: the producer set none
                    # per slice, by its oldest record: an upper bound per record
                    oldest = chunk[0].timestamp * 0.001
                    timing.fetch_delay.add(fetched - oldest, len(chunk))
                    timing.write_delay.add(time.time() - oldest, len(chunk))
                held = time.perf_counter() - step_started
                if held >= FANOUT_SLICE_SECONDS:
                    if observe:
                        timing.fanout.add(held)
                        timing.fanout_cpu.add(time.thread_time() - step_cpu)
                    await asyncio.sleep(0)
                    step_started = time.perf_counter()
                    step_cpu = time.thread_time()
        if observe and batches:
            timing.fanout.add(time.perf_counter() - step_started)
            timing.fanout_cpu.add(time.thread_time() - step_cpu)

    def _check_caught_up(self) -> None:
        hub_positions = self._hub.positions()
        letters = self._hub_letters()
        self.caught_up = all(
            hub_positions[(letters[tp.topic], tp.partition)] >= end - 1
            for tp, end in self._catch_up_to.items()
        )
        if self.caught_up:
            log.info("ingest caught up")

    def _hub_letters(self) -> dict[str, str]:
        return self._hub._letters  # noqa: SLF001 - same package, read-only

    def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        """``(log start, high watermark)``: the start as last asked (at start, then with the
        lag), the high watermark from the latest fetch response (no broker round trip)."""
        tp = TopicPartition(topic, partition)
        consumed = self._hub.position((self._hub.letter_of(topic), partition)) + 1
        known = self._catch_up_to.get(tp, 0)
        start = self._beginnings.get(tp, 0)
        if self.fetcher is not None:
            log_start, highwater = self.fetcher.bounds(topic, partition)
            if log_start >= 0:
                start = log_start
        else:
            highwater = (self._consumer.highwater(tp) if self._consumer is not None else None) or 0
        return start, max(consumed, known, highwater)

    async def log_end(self, topic: str, partition: int) -> int | None:
        """The high watermark as the broker has it now: a ListOffsets request, coalesced
        and spaced per partition (``CoalescingLogEnds``); ``None``: no answer in time."""
        return await self.log_ends.end(topic, partition)

    async def _latest_offset(self, topic: str, partition: int) -> int:
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("the ingest is not running")
        tp = TopicPartition(topic, partition)
        # on the ingest consumer's client (the lean fetcher borrows it too): no new connection
        found: dict[TopicPartition, int] = await consumer.end_offsets([tp])
        return found[tp]

    async def refresh_lag(self, max_age_seconds: float = 5.0) -> int:
        """Records between the hub's positions and the ends of the partitions (asks the
        broker at most every ``max_age_seconds``, however often metrics are scraped)."""
        if self.fetcher is not None:
            # every fetch response carries the high watermark: no broker round trip
            positions = self._hub.positions()
            letters = self._hub_letters()
            self.lag = sum(
                max(0, self.fetcher.bounds(tp.topic, tp.partition)[1] - 1 - positions[key])
                for tp in self._catch_up_to
                if (key := (letters[tp.topic], tp.partition)) in positions
            )
            return self.lag
        if self._consumer is None or time.monotonic() - self._lag_checked < max_age_seconds:
            return self.lag
        self._lag_checked = time.monotonic()
        assigned = list(self._consumer.assignment())
        ends = await self._consumer.end_offsets(assigned)
        self._beginnings = await self._consumer.beginning_offsets(assigned)
        letters = self._hub_letters()
        positions = self._hub.positions()
        self.lag = sum(
            max(0, end - 1 - positions[(letters[tp.topic], tp.partition)])
            for tp, end in ends.items()
        )
        return self.lag

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        if self.timing.on_gc in gc.callbacks:
            gc.callbacks.remove(self.timing.on_gc)
        for task in (self._task, self._loop_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.log_ends.close()
        await self._close_clients()

    async def _close_clients(self) -> None:
        fetcher, self.fetcher = self.fetcher, None
        consumer, self._consumer = self._consumer, None
        if fetcher is not None:
            await fetcher.close()
        if consumer is not None:
            await consumer.stop()


class HistoryGone(LookupError):
    """The requested offsets were deleted from Kafka (retention or compaction)."""


class HistoryBusy(HistoryGone):
    """Every history read slot stayed taken for the whole wait: answered like history that
    is gone (a snapshot or a ``resync``), never by holding the stream open."""


class History(Protocol):
    async def read(
        self, topic: str, partition: int, first: int, stop: int, keys: set[bytes]
    ) -> list[Record]:
        """Records with ``first <= offset < stop`` whose key is in ``keys``."""
        ...


class LogBounds(Protocol):
    def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        """``(log start offset, high watermark)`` of a partition as last seen: a resume
        position is valid from ``start - 1`` to ``high watermark - 1``."""
        ...

    async def log_end(self, topic: str, partition: int) -> int | None:
        """The high watermark as the broker has it now (a round trip, bounded and shared by
        the callers; ``None``: not known), which may be past the one last seen."""
        ...


#: how long a gateway starting without a start timeout waits for a data topic the broker
#: does not have yet (with one, it waits what is left of it)
TOPIC_WAIT_SECONDS: Final = 30.0


class TopicMissing(RuntimeError):
    """A data topic the broker still did not have after the topic wait."""


async def partitions_of(
    consumer: AIOKafkaConsumer, topic: str, wait_seconds: float = TOPIC_WAIT_SECONDS
) -> list[int]:
    """The topic's partitions from the consumer's metadata, refreshed until the broker has
    the topic (it may be created a moment after the gateway starts); said in the log at
    once, and :class:`TopicMissing` naming it after ``wait_seconds``."""
    deadline = time.monotonic() + wait_seconds
    logged = False
    while True:
        found = consumer.partitions_for_topic(topic)
        if found:
            if logged:
                log.info("topic found", topic=topic, partitions=len(found))
            return sorted(found)
        if not logged:
            logged = True
            log.warning(
                "topic not on the broker: waiting for it",
                topic=topic,
                seconds=round(wait_seconds, 1),
            )
        await consumer._client.force_metadata_update()  # noqa: SLF001 - no public refresh
        if time.monotonic() > deadline:
            raise TopicMissing(
                f"topic {topic} is not on the broker (waited {wait_seconds:.3g} s): create the "
                "data topics before the gateways start (docs/deploy.md)"
            )
        await asyncio.sleep(0.2)


class KafkaHistory:
    """The gateway's one history reader: reads ranges of a partition back from Kafka with a
    small pool of long-lived consumers, at most ``max_reads`` at a time.

    A resume older than the ring buffer needs one; an anonymous client can ask for any
    position, so the reads are bounded here (concurrency, wait, records per read) rather
    than trusted to the clients: a request that finds no free slot within
    ``wait_seconds`` gets :class:`HistoryBusy`. Consumers are started on first use and
    reused (starting one costs a metadata round trip and a connection).
    """

    def __init__(
        self,
        settings: GatewayKafkaSettings,
        max_reads: int = 4,
        wait_seconds: float = 2.0,
        max_records: int = 200_000,
    ) -> None:
        self._settings = settings
        self._max_records = max_records
        self._wait_seconds = wait_seconds
        self._slots = asyncio.Semaphore(max_reads)
        self._idle: list[AIOKafkaConsumer] = []
        self.reads = 0
        self.consumers_started = 0
        self.busy = 0

    async def read(
        self, topic: str, partition: int, first: int, stop: int, keys: set[bytes]
    ) -> list[Record]:
        if stop - first > self._max_records:
            raise HistoryGone(f"{stop - first} records to read back exceeds the bound")
        try:
            async with asyncio.timeout(self._wait_seconds):
                await self._slots.acquire()
        except TimeoutError:
            self.busy += 1
            raise HistoryBusy(f"no history read free within {self._wait_seconds}s") from None
        try:
            self.reads += 1
            consumer = self._idle.pop() if self._idle else await self._start_consumer()
            reusable = False
            try:
                found = await self._read(
                    consumer, TopicPartition(topic, partition), first, stop, keys
                )
                reusable = True
                return found
            except HistoryGone:
                reusable = True
                raise
            finally:
                if reusable:
                    consumer.unsubscribe()  # no background fetching while idle
                    self._idle.append(consumer)
                else:
                    await consumer.stop()
        finally:
            self._slots.release()

    async def _start_consumer(self) -> AIOKafkaConsumer:
        install_lean_records()
        consumer = _consumer(
            self._settings,
            auto_offset_reset="earliest",
            key_deserializer=lean_keys,  # IngestRecord tuples, as the ingest reads them
        )
        await consumer.start()
        self.consumers_started += 1
        return consumer

    @staticmethod
    async def _read(
        consumer: AIOKafkaConsumer, tp: TopicPartition, first: int, stop: int, keys: set[bytes]
    ) -> list[Record]:
        consumer.assign([tp])
        beginning = (await consumer.beginning_offsets([tp]))[tp]
        if beginning > first:
            raise HistoryGone(f"{tp.topic}[{tp.partition}] starts at {beginning}, need {first}")
        consumer.seek(tp, first)
        found: list[Record] = []
        position = first
        while position < stop:
            batches = await consumer.getmany(tp, timeout_ms=2000)
            records = batches.get(tp, [])
            if not records:
                raise HistoryGone(f"{tp.topic}[{tp.partition}] returned nothing at {position}")
            for record in records:
                if record.offset >= stop:
                    break
                if record.key in keys:
                    found.append(record)
            position = records[-1].offset + 1
        return found

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().stop()


class FakeHistory:
    """History from a dict ``(topic, partition) → records``; records every read."""

    def __init__(self, log_: dict[tuple[str, int], list[Record]] | None = None) -> None:
        self.log = log_ or {}
        self.reads: list[tuple[str, int, int, int]] = []
        self.beginning: Callable[[str, int], int] = lambda _t, _p: 0

    async def read(
        self, topic: str, partition: int, first: int, stop: int, keys: set[bytes]
    ) -> list[Record]:
        self.reads.append((topic, partition, first, stop))
        if self.beginning(topic, partition) > first:
            raise HistoryGone(f"{topic}[{partition}] no longer has {first}")
        return [
            r
            for r in self.log.get((topic, partition), [])
            if first <= r.offset < stop and r.key in keys
        ]


class FakeLogBounds:
    """Log bounds as the hub sees them (the log starts at 0 and ends where the hub has
    read), unless a test sets ``starts`` / ``ends`` for a ``(topic, partition)``; the
    broker's end is that too unless it sets ``log_ends``. Records every ``log_end`` asked;
    while a test holds ``held`` (an unset event) the answers wait for it to be set."""

    def __init__(self, hub: ChannelHub) -> None:
        self._hub = hub
        self.starts: dict[tuple[str, int], int] = {}
        self.ends: dict[tuple[str, int], int] = {}
        self.log_ends: dict[tuple[str, int], int | None] = {}
        self.lookups: list[tuple[str, int]] = []
        self.held: asyncio.Event | None = None

    async def log_end(self, topic: str, partition: int) -> int | None:
        self.lookups.append((topic, partition))
        if self.held is not None:
            await self.held.wait()
        if (topic, partition) in self.log_ends:
            return self.log_ends[(topic, partition)]
        return self.bounds(topic, partition)[1]

    def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        end = self.ends.get((topic, partition))
        if end is None:
            end = self._hub.position((self._hub.letter_of(topic), partition)) + 1
        return self.starts.get((topic, partition), 0), end
