"""The producer adapter hands aiokafka complete batches: closed, so they go out with the
next produce request instead of lingering (a linger only delayed every change: nothing else
appends to these batches)."""

import asyncio
from typing import Any

import pytest
from aiokafka.producer.message_accumulator import BatchBuilder

from change_publisher.adapters import kafka as kafka_adapter
from change_publisher.domain.records import OutgoingRecord
from slotstream_contracts.settings import KafkaSettings


class BatchRecordingProducer:
    """Stands in for ``AIOKafkaProducer``: notes every batch submitted with ``send_batch``."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.submitted: list[tuple[str, int, BatchBuilder, bool]] = []

    async def start(self) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def partitions_for(self, _topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(4096, 0)

    async def send_batch(
        self, builder: BatchBuilder, topic: str, *, partition: int
    ) -> "asyncio.Future[None]":
        self.submitted.append((topic, partition, builder, builder.closed()))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def record(key: str, size: int = 100) -> OutgoingRecord:
    return OutgoingRecord("t", key.encode(), b"x" * size, [("ce_type", b"slot.updated")], "k")


async def test_every_batch_is_closed_when_submitted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_adapter, "AIOKafkaProducer", BatchRecordingProducer)
    producer = kafka_adapter.KafkaEventProducer(
        KafkaSettings(), enable_idempotence=False, compression="none", max_batch_size=16_384
    )
    await producer.start()
    fake = producer._require()
    assert isinstance(fake, BatchRecordingProducer)
    assert "linger_ms" not in fake.options

    # Several keys (several partitions), and one key with more than a batch holds.
    records = [record(f"instructor-{n}") for n in range(8)]
    records += [record("big", 1500) for _ in range(6)]
    pending = await producer.send_many(records)

    assert fake.submitted, "nothing was submitted"
    assert all(closed for _, _, _, closed in fake.submitted), [
        (topic, partition, closed) for topic, partition, _, closed in fake.submitted
    ]
    assert sum(b.record_count() for _, _, b, _ in fake.submitted) == len(records)
    assert sorted(i for batch in pending for i in batch.indices) == list(range(len(records)))
    await producer.stop(1.0)
