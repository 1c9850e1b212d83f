"""Lean ingest records from a real broker: for each compression codec a producer may use, the
ingest consumer's records (compiled batch decoder) equal aiokafka's own records of the same
topic, and both consumers end at the same positions."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from push_gateway.adapters.records import IngestRecord, install_lean_records, lean_keys
from push_gateway.testing import header_values
from slotstream_testkit.kafka import KafkaEndpoint, create_topics

pytestmark = pytest.mark.integration

PARTITIONS = 3
RECORDS = 400


def headers(n: int) -> list[tuple[str, bytes]]:
    found = [("ce_subject", f"instructors/i{n % 7}".encode())]
    if n % 5:
        found.append(("ce_type", b"slot.updated" if n % 2 else b"slot.created"))
    if n % 11:
        found.append(("ce_id", str(uuid.UUID(int=n)).encode()))
    found.append(("content-type", b"application/cloudevents+json"))
    return found


async def produce(kafka: KafkaEndpoint, topic: str, compression: str | None) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        enable_idempotence=False,
        linger_ms=20,
        compression_type=compression,
    )
    await producer.start()
    try:
        sent = [
            await producer.send(
                topic,
                None if n % 13 == 1 and n % 17 else b'{"n":%d,"pad":"%s"}' % (n, b"x" * (n % 300)),
                key=None if n % 17 == 0 else f"i{n % 7}".encode(),
                headers=headers(n),
            )
            for n in range(RECORDS)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def read_all(
    kafka: KafkaEndpoint, topic: str, **options: Any
) -> tuple[dict[int, list[Any]], dict[int, int]]:
    """Every record of the topic by partition, and the consumer's positions after them."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=20,
        max_partition_fetch_bytes=16_384,  # several fetches per partition, partial batches
        **options,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: dict[int, list[Any]] = {tp.partition: [] for tp in partitions}
        async with asyncio.timeout(60):
            while sum(map(len, found.values())) < RECORDS:
                batches = await consumer.getmany(timeout_ms=500)
                for tp, records in batches.items():
                    found[tp.partition].extend(records)
        return found, {tp.partition: await consumer.position(tp) for tp in partitions}
    finally:
        await consumer.stop()


@pytest.mark.parametrize("compression", [None, "gzip", "snappy", "lz4", "zstd"])
async def test_lean_records_equal_aiokafkas_records(
    kafka: KafkaEndpoint, compression: str | None
) -> None:
    topic = f"ingest-records.{compression}.{uuid.uuid4().hex[:8]}"
    await create_topics(kafka.bootstrap_servers, {topic: PARTITIONS})
    await produce(kafka, topic, compression)
    install_lean_records()
    stock, stock_positions = await read_all(kafka, topic)
    lean, lean_positions = await read_all(kafka, topic, key_deserializer=lean_keys)
    assert all(type(r) is IngestRecord for records in lean.values() for r in records)
    assert lean_positions == stock_positions
    assert sum(stock_positions.values()) == RECORDS

    def parts(records: list[Any]) -> list[tuple[Any, ...]]:
        return [(r.offset, r.key, r.value, r.timestamp) for r in records]

    assert {p: parts(r) for p, r in lean.items()} == {p: parts(r) for p, r in stock.items()}
    assert {p: [(r.ce_type, r.ce_id) for r in rs] for p, rs in lean.items()} == {
        p: [header_values(r.headers) for r in rs] for p, rs in stock.items()
    }
