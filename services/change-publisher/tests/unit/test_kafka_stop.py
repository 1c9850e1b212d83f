"""Stopping the producer while Kafka acknowledges nothing: with idempotence (the default)
aiokafka retries a batch forever and never fails it, and its own ``stop()`` first waits for
every pending batch. The adapter waits a bounded time, then gives the batches up.

No broker supports idempotence here (Tansu refuses it), so this runs aiokafka's real
producer, accumulator and ``stop()`` with its sender replaced by one that, like the real one
retrying a batch, never finishes on its own."""

import asyncio
import contextlib

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import TopicPartition

from change_publisher.adapters.kafka import KafkaEventProducer
from slotstream_contracts.settings import KafkaSettings

UNREACHABLE = "127.0.0.1:50999"


async def _retrying_forever() -> None:
    """aiokafka's sender routine while Kafka never answers: it ends when cancelled."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()


async def test_stop_gives_up_batches_kafka_never_acknowledges() -> None:
    inner = AIOKafkaProducer(bootstrap_servers=UNREACHABLE, enable_idempotence=True)
    inner._sender._sender_task = asyncio.create_task(_retrying_forever())
    builder = inner.create_batch()
    builder.append(key=b"i1", value=b"slot.created", timestamp=None)
    builder.close()
    pending = await inner._message_accumulator.add_batch(builder, TopicPartition("t", 0), 1)
    producer = KafkaEventProducer(
        KafkaSettings(bootstrap_servers=UNREACHABLE),
        enable_idempotence=True,
        compression="none",
        max_batch_size=16_384,
    )
    producer._producer = inner  # started, as far as the adapter knows

    stopping = asyncio.create_task(producer.stop(0.2))
    done, _ = await asyncio.wait({stopping}, timeout=3)
    if not done:  # clean up the hang before failing
        inner._message_accumulator.fail_all(KafkaTimeoutError("test over"))
        await stopping
    assert done, "stop() still waiting 3 s later"
    assert isinstance(pending.exception(), KafkaTimeoutError)  # the publisher sees it fail
    assert inner._sender.sender_task.done()  # nothing more is sent
