"""Real Kafka (Tansu) for the publisher: unique topics per test, a reader of everything."""

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from change_publisher.adapters.kafka import KafkaEventProducer
from change_publisher.domain.records import EPOCH_HEADER, Router
from slotstream_contracts.documents import BOOKINGS, NOTIFICATIONS, SLOTS
from slotstream_contracts.settings import KafkaSettings
from slotstream_testkit.kafka import KafkaEndpoint, create_topics

PARTITIONS = 4
#: aiokafka ships no type information: records are ``ConsumerRecord[bytes, bytes]``.
Record = Any


@dataclass(frozen=True)
class Topics:
    schedule: str
    notifications: str
    deadletter: str

    @property
    def router(self) -> Router:
        return Router(
            {SLOTS: self.schedule, BOOKINGS: self.schedule, NOTIFICATIONS: self.notifications},
            self.deadletter,
        )

    @property
    def all(self) -> tuple[str, str, str]:
        return (self.schedule, self.notifications, self.deadletter)


async def make_topics(bootstrap_servers: str) -> Topics:
    prefix = f"test.{uuid.uuid4().hex[:10]}"
    topics = Topics(f"{prefix}.schedule", f"{prefix}.notifications", f"{prefix}.deadletter")
    await create_topics(bootstrap_servers, dict.fromkeys(topics.all, PARTITIONS))
    return topics


@pytest.fixture
async def topics(kafka: KafkaEndpoint) -> Topics:
    return await make_topics(kafka.bootstrap_servers)


def kafka_producer(
    bootstrap_servers: str, idempotence: bool, request_timeout_ms: int = 5_000
) -> KafkaEventProducer:
    return KafkaEventProducer(
        KafkaSettings(bootstrap_servers=bootstrap_servers, request_timeout_ms=request_timeout_ms),
        enable_idempotence=idempotence,
        compression="zstd",
        max_batch_size=262_144,
    )


async def consume(
    bootstrap_servers: str,
    topics: tuple[str, ...],
    until: Callable[[list[Record]], bool],
    within: float = 20.0,
) -> list[Record]:
    """Every record of the topics from the beginning, once ``until`` holds (or time is up)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, fetch_max_wait_ms=20
    )
    await consumer.start()
    records: list[Record] = []
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = asyncio.get_running_loop().time() + within
        while not until(records) and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=100)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


def subject(record: Record) -> str:
    value: str = orjson.loads(record.value)["subject"]
    return value


def header(record: Record, name: str) -> bytes:
    value: bytes = dict(record.headers)[name]
    return value


def epoch(record: Record) -> int:
    return int(header(record, EPOCH_HEADER))


def by_partition(records: list[Record]) -> dict[tuple[str, int], list[Record]]:
    grouped: dict[tuple[str, int], list[Record]] = {}
    for record in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        grouped.setdefault((record.topic, record.partition), []).append(record)
    return grouped
