"""Cluster-wide subscriber counts through the compacted presence topic.

Each gateway publishes its own per-channel counts (key = instance id, so compaction keeps
one record per gateway) every few seconds, and reads the topic from the beginning to sum
everyone's latest counts. A gateway that stops publishing (crashed) drops out after a few
intervals; one that shuts down cleanly writes a tombstone.

Plain aiokafka rather than FastStream: the gateway already runs aiokafka clients for its
hot path, and this consumer needs the same manual assignment from the beginning of the
topic with no group, which is a few lines here. The topic is read with the ingest's lean
fetch loop (``adapters/fetch.py``; ``GATEWAY_KAFKA__FETCH_LOOP=aiokafka``: aiokafka's
consumer): Tansu answers a fetch at the long-poll deadline, so the reader makes rounds
all the time whatever arrives, and each aiokafka round is ~0.15 ms of Python.
"""

import asyncio
import contextlib
import time
from typing import Final, Protocol

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from push_gateway.adapters.fetch import LeanFetcher, speaks_lean_fetch
from push_gateway.adapters.fetch_links import AiokafkaBrokers
from push_gateway.adapters.kafka import TopicMissing, partitions_of
from push_gateway.config import GatewayKafkaSettings

log = structlog.get_logger(__name__)

#: the presence reader's longest fetch long-poll bound
PRESENCE_FETCH_WAIT_MAX_MS: Final = 500
#: how long a starting gateway waits for a presence topic the broker does not have yet (the
#: deployment creates it); with a start timeout, at most what is left of it
PRESENCE_TOPIC_WAIT_SECONDS: Final = 5.0


class PresenceBus(Protocol):
    async def publish(self, counts: dict[str, int]) -> None: ...
    def cluster_counts(self) -> dict[str, int]: ...


class PresenceTable:
    """Latest counts per gateway instance, with expiry of silent instances."""

    def __init__(self, ttl_seconds: float) -> None:
        self._ttl = ttl_seconds
        self._by_instance: dict[str, tuple[float, dict[str, int]]] = {}

    def update(
        self, instance: str, counts: dict[str, int] | None, now: float | None = None
    ) -> None:
        if counts is None:
            self._by_instance.pop(instance, None)
        else:
            self._by_instance[instance] = (time.monotonic() if now is None else now, counts)

    def totals(self, now: float | None = None) -> dict[str, int]:
        now = time.monotonic() if now is None else now
        totals: dict[str, int] = {}
        for seen, counts in self._by_instance.values():
            if now - seen > self._ttl:
                continue
            for channel, count in counts.items():
                totals[channel] = totals.get(channel, 0) + count
        return totals


class FakePresenceBus:
    """Gateways sharing one :class:`PresenceTable` in memory; records what was published."""

    def __init__(self, instance: str, table: PresenceTable) -> None:
        self.instance = instance
        self.table = table
        self.published: list[dict[str, int]] = []

    async def publish(self, counts: dict[str, int]) -> None:
        self.published.append(counts)
        self.table.update(self.instance, counts)

    def cluster_counts(self) -> dict[str, int]:
        return self.table.totals()


class KafkaPresenceBus:
    def __init__(
        self,
        settings: GatewayKafkaSettings,
        topic: str,
        instance: str,
        ttl_seconds: float,
        interval_seconds: float = 2.0,
    ) -> None:
        self._settings = settings
        #: a fetch round costs ~0.15 ms of CPU (Tansu answers at the deadline): a quarter of
        #: the publish interval is fresh enough for counts published once per interval,
        #: and at the default 2 s costs 2 rounds/s instead of 10
        self._fetch_wait_ms = max(100, min(PRESENCE_FETCH_WAIT_MAX_MS, int(interval_seconds * 250)))
        self._topic = topic
        self._instance = instance
        self._table = PresenceTable(ttl_seconds)
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._fetcher: LeanFetcher | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, deadline: float | None = None) -> None:
        """Start the writer and the reader; a start that fails (Kafka not reachable yet)
        closes both and may be tried again. ``deadline`` (``time.monotonic()``) is when the
        gateway's start timeout ends, if it has one: a missing topic is not waited for past
        it."""
        try:
            await self._start(deadline)
        except BaseException:
            await self._close_clients()
            raise

    async def _close_clients(self) -> None:
        producer, self._producer = self._producer, None
        consumer, self._consumer = self._consumer, None
        fetcher, self._fetcher = self._fetcher, None
        if fetcher is not None:
            await fetcher.close()
        if producer is not None:
            await producer.stop()
        if consumer is not None:
            await consumer.stop()

    async def _start(self, deadline: float | None) -> None:
        common = self._settings.client_options() | {
            "client_id": f"{self._settings.client_id}-presence"
        }
        self._producer = AIOKafkaProducer(**common, enable_idempotence=False, acks=1)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            **common,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self._fetch_wait_ms,
        )
        await self._consumer.start()
        wait = PRESENCE_TOPIC_WAIT_SECONDS
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
        try:
            parts = await partitions_of(self._consumer, self._topic, max(0.0, wait))
        except TopicMissing:  # not fatal: presence counts only this gateway's until it is
            log.warning("presence topic not on the broker: reading partition 0", topic=self._topic)
            parts = [0]
        partitions = [TopicPartition(self._topic, p) for p in parts]
        brokers = AiokafkaBrokers(self._consumer)
        if self._settings.fetch_loop == "lean" and await speaks_lean_fetch(
            brokers, self._topic, partitions[0].partition
        ):
            beginnings = await self._consumer.beginning_offsets(partitions)
            self._fetcher = LeanFetcher(
                brokers,
                [(tp.topic, tp.partition, beginnings[tp]) for tp in partitions],
                client_id=common["client_id"],
                request_timeout_seconds=self._settings.request_timeout_ms / 1000,
                max_wait_ms=self._fetch_wait_ms,
                hole_wait_seconds=0,  # compacted: holes are records compaction removed
            )
            self._task = asyncio.create_task(self._read_lean(self._fetcher), name="presence-reader")
            return
        self._consumer.assign(partitions)
        self._task = asyncio.create_task(self._read(), name="presence-reader")

    async def _read_lean(self, fetcher: LeanFetcher) -> None:
        while True:
            try:
                fetched = await fetcher.next_round(1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a defect: broker errors are retried inside
                log.warning("presence read failed", error=repr(exc))
                await asyncio.sleep(1)
                continue
            for item in fetched:
                reader = item.reader
                while not reader.done:
                    try:
                        records = reader.take(500)
                    except Exception as exc:  # noqa: BLE001 - corrupt bytes: read again
                        log.warning("presence batch did not decode", error=repr(exc))
                        fetcher.seek(item.topic, item.partition, item.offset, pause=True)
                        break
                    if not records:
                        break
                    for record in records:
                        self._apply(record.key, record.value)

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("presence read failed", error=repr(exc))
                await asyncio.sleep(1)
                continue
            for records in batches.values():
                for record in records:
                    self._apply(record.key, record.value)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        instance = key.decode("utf-8", "replace")
        if value is None:
            self._table.update(instance, None)
            return
        try:
            counts = orjson.loads(value).get("counts", {})
            self._table.update(instance, {str(k): int(v) for k, v in counts.items()})
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            log.warning("presence record ignored", instance=instance)

    async def publish(self, counts: dict[str, int]) -> None:
        if self._producer is None:
            return
        payload = orjson.dumps({"instance": self._instance, "counts": counts})
        await self._producer.send_and_wait(self._topic, payload, key=self._instance.encode())
        # our own counts count at once, not only when they come back from the topic
        self._table.update(self._instance, counts)

    def cluster_counts(self) -> dict[str, int]:
        return self._table.totals()

    async def stop(self) -> None:
        """Stop reading, write this gateway's tombstone, close."""
        await self._stop_reader()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.send_and_wait(self._topic, None, key=self._instance.encode())
        await self._close_clients()

    async def close(self) -> None:
        """Stop reading and close without a tombstone: the gateway's other Kafka clients
        did not start, so it never published (``startup.py`` tries them all again)."""
        await self._stop_reader()
        await self._close_clients()

    async def _stop_reader(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
