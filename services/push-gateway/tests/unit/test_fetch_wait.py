"""Adaptive fetch wait: the long-poll bound is long while the log is silent, short as soon
as records flow."""

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from push_gateway.adapters.kafka import KafkaIngest
from push_gateway.adapters.records import IngestRecord
from push_gateway.config import GatewayKafkaSettings
from push_gateway.domain.hub import ChannelHub
from slotstream_contracts.channels import ChannelKind


class FakeConsumer:
    def __init__(self, answers: list[dict[TopicPartition, list[IngestRecord]]]) -> None:
        self._answers = answers
        self._fetcher = SimpleNamespace(_fetch_max_wait_ms=5)
        self.waits: list[int] = []
        self.timeouts: set[int] = set()

    async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[IngestRecord]]:
        self.timeouts.add(timeout_ms)
        self.waits.append(self._fetcher._fetch_max_wait_ms)
        if not self._answers:
            await asyncio.Event().wait()
        return self._answers.pop(0)


async def test_fetch_wait_is_long_when_idle_and_short_under_load() -> None:
    hub = ChannelHub({ChannelKind.SCHEDULE: "s", ChannelKind.NOTIFICATIONS: "n"}, 16)
    hub.assign("s", 0, 0, 1)
    settings = GatewayKafkaSettings(fetch_max_wait_ms=5, fetch_idle_max_wait_ms=400)
    ingest = KafkaIngest(settings, ("s", "n"), hub, backfill=16)
    record = IngestRecord(0, b"k", b"{}", None, None, 0)
    consumer = FakeConsumer([{}, {}, {TopicPartition("s", 0): [record]}, {}])
    fake: Any = consumer
    ingest._consumer = fake
    task = asyncio.create_task(ingest._run())
    for _ in range(50):
        await asyncio.sleep(0)
    task.cancel()
    # silent → long; still silent → long; records → short; silent again → long
    assert consumer.waits == [5, 400, 400, 5, 400]
    assert hub.stats.records == 1
    assert consumer.timeouts == {1000}  # "idle" means a whole second without a record
