"""The Kafka producer: plain aiokafka, building produce batches itself.

FastStream's ``KafkaBroker`` publisher awaits each acknowledgement (about 3,400 records/s
here) and its batch publish targets one topic and key; aiokafka's own ``send()`` costs
~18 µs per record in Python (a future, a partitioner call and an accumulator append each).
The publisher needs ≥ 50,000 keyed records/s across topics with per-record headers and one
ordered stream of acknowledgements to checkpoint from, so this adapter partitions keys
itself (Kafka's murmur2 default partitioner, memoised per key), appends records to one
``BatchBuilder`` per partition (C-accelerated) and submits each batch with
``send_batch``: one future per batch. aiokafka keeps one batch in flight per partition, so
the order of records of one key is the order they were given in.

Each batch is closed before it is submitted, which tells aiokafka it is complete and goes
out with the next produce request instead of waiting out ``linger_ms``. Lingering could not
make it larger anyway: nothing else appends to a batch built here, and ``send_batch`` waits
for a partition's previous batch to leave before it queues the next, so a linger only
delayed every change (5 ms at the old default, on the path from a booking to the browser).
Batching under load comes from the source: a backlog is read up to ``read_batch`` changes
at a time, and aiokafka sends one request per broker at a time, so batches of several
reads queue behind a request in flight.
"""

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from change_publisher.domain.records import OutgoingRecord
from change_publisher.ports import PendingBatch
from slotstream_contracts.settings import KafkaSettings

#: How long a topic's partition list is trusted before asking the cluster again.
_PARTITIONS_TTL = 30.0
_KEY_CACHE_LIMIT = 200_000


class KafkaEventProducer:
    def __init__(
        self,
        settings: KafkaSettings,
        *,
        enable_idempotence: bool,
        compression: str,
        max_batch_size: int,
    ) -> None:
        self._settings = settings
        self._options: dict[str, Any] = {
            "enable_idempotence": enable_idempotence,
            "compression_type": None if compression == "none" else compression,
            "max_batch_size": max_batch_size,
        }
        self._producer: AIOKafkaProducer | None = None
        self._partitioner = DefaultPartitioner()
        self._topic_partitions: dict[str, tuple[float, list[int]]] = {}
        self._key_partition: dict[tuple[str, bytes], int] = {}

    async def start(self) -> None:
        producer = AIOKafkaProducer(
            **self._settings.client_options(),
            acks="all",
            **self._options,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def stop(self, drain_seconds: float) -> None:
        """Flush for at most ``drain_seconds``, then give up what is left. aiokafka's own
        ``stop()`` waits for every pending batch, and with idempotence it never expires
        one: a Kafka acknowledging nothing would hold it forever. aiokafka has no close
        without a flush, so the accumulator (private) fails the batches; its sender then
        stops at once, waiting only for requests already on the wire (request timeout)."""
        if self._producer is None:
            return
        producer, self._producer = self._producer, None
        try:
            await asyncio.wait_for(producer.flush(), drain_seconds)
        except TimeoutError:
            producer._message_accumulator.fail_all(
                KafkaTimeoutError(
                    f"not acknowledged within {drain_seconds} s of the stop: given up"
                )
            )
        await producer.stop()

    def _require(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("producer not started")
        return self._producer

    async def partitions(self, topic: str) -> list[int]:
        cached = self._topic_partitions.get(topic)
        now = time.monotonic()
        if cached is not None and now - cached[0] < _PARTITIONS_TTL:
            return cached[1]
        found = sorted(await self._require().partitions_for(topic))
        if cached is None or cached[1] != found:
            self._key_partition.clear()
        self._topic_partitions[topic] = (now, found)
        return found

    async def _partition_of(self, topic: str, key: bytes) -> int:
        """Kafka's default partition of a key, memoised (looked up before calling this)."""
        partitions = await self.partitions(topic)
        partition: int = self._partitioner(key, partitions, partitions)
        if len(self._key_partition) >= _KEY_CACHE_LIMIT:
            self._key_partition.clear()
        self._key_partition[topic, key] = partition
        return partition

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[PendingBatch]:
        producer = self._require()
        # One open batch per partition; ``routes`` finds it by (topic, key) with a single
        # lookup per record (the hot loop: keys repeat within a call).
        lanes: dict[tuple[str, int], _Lane] = {}
        routes: dict[tuple[str, bytes], _Lane] = {}
        pending: list[PendingBatch] = []
        known = self._key_partition
        for index, record in enumerate(records):
            topic, key, value, headers, _kind, partition = record
            if partition is None:
                lane = routes.get((topic, key))
                if lane is None:
                    partition = known.get((topic, key))
                    if partition is None:
                        partition = await self._partition_of(topic, key)
                    lane = routes[topic, key] = self._lane(lanes, topic, partition)
            else:
                lane = self._lane(lanes, topic, partition)
            if lane.builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                # Full (and closed by aiokafka): submit it, start the partition's next batch.
                future = await producer.send_batch(lane.builder, topic, partition=lane.partition)
                pending.append(PendingBatch(future, lane.indices))
                lane.builder, lane.indices = producer.create_batch(), []
                if (
                    lane.builder.append(key=key, value=value, timestamp=None, headers=headers)
                    is None
                ):
                    raise KafkaError(f"record of {len(value)} bytes exceeds a batch")
            lane.indices.append(index)
        for lane in lanes.values():
            lane.builder.close()  # complete: send it now, not after linger_ms
            future = await producer.send_batch(lane.builder, lane.topic, partition=lane.partition)
            pending.append(PendingBatch(future, lane.indices))
        return pending

    def _lane(self, lanes: dict[tuple[str, int], "_Lane"], topic: str, partition: int) -> "_Lane":
        lane = lanes.get((topic, partition))
        if lane is None:
            lane = lanes[topic, partition] = _Lane(
                topic, partition, self._require().create_batch(), []
            )
        return lane

    async def probe(self) -> None:
        await self._require().client.fetch_all_metadata()


class _Lane:
    """The open produce batch of one partition within a ``send_many`` call."""

    __slots__ = ("builder", "indices", "partition", "topic")

    def __init__(self, topic: str, partition: int, builder: BatchBuilder, indices: list[int]):
        self.topic = topic
        self.partition = partition
        self.builder = builder
        self.indices = indices
