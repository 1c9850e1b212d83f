"""``slotstream-events`` against Tansu: keys, headers and CloudEvents printed, key filter,
from the beginning (stopping at the end) and from the end (only new records)."""

import asyncio
import io
import uuid

import orjson
import pytest

from push_gateway.events_cli import main, parse_args, tail
from push_gateway.testing import slot_event
from slotstream_testkit.kafka import KafkaEndpoint, create_topics

from .test_gateways import producer, publish

pytestmark = pytest.mark.integration


@pytest.fixture
async def topic(kafka: KafkaEndpoint) -> str:
    name = f"test.{uuid.uuid4().hex[:8]}.events"
    await create_topics(kafka.bootstrap_servers, {name: 3})
    async with producer(kafka) as p:
        await publish(p, name, [slot_event(i, "s1", 1) for i in ("i1", "i2", "i3")])
        await publish(p, name, [slot_event("i1", "s1", 2)])
    return name


async def test_from_the_beginning_prints_every_record_then_stops(
    kafka: KafkaEndpoint, topic: str
) -> None:
    out = io.StringIO()
    args = parse_args([topic, "--bootstrap-servers", kafka.bootstrap_servers, "--exit", "--json"])
    assert await tail(args, out) == 4
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert sorted(line["key"] for line in lines) == ["i1", "i1", "i2", "i3"]
    first = next(line for line in lines if line["key"] == "i2")
    assert first["headers"]["ce_type"] == "slot.created"
    assert first["value"]["data"]["instructorId"] == "i2"
    assert {"partition", "offset", "timestamp"} <= first.keys()


async def test_key_filter_and_readable_text(kafka: KafkaEndpoint, topic: str) -> None:
    out = io.StringIO()
    args = parse_args(
        [topic, "--bootstrap-servers", kafka.bootstrap_servers, "--exit", "--key", "i1"]
    )
    assert await tail(args, out) == 2
    text = out.getvalue()
    assert text.count("key 'i1'") == 2
    assert "key 'i2'" not in text
    assert "ce_type=slot.updated" in text
    assert '"version": 2' in text  # the CloudEvent, pretty-printed


async def test_from_the_end_prints_only_new_records(kafka: KafkaEndpoint, topic: str) -> None:
    out = io.StringIO()
    args = parse_args(
        [topic, "--bootstrap-servers", kafka.bootstrap_servers, "--from", "end", "--count", "1"]
    )
    started = asyncio.Event()
    reading = asyncio.create_task(tail(args, out, started))
    await asyncio.wait_for(started.wait(), 10)
    async with producer(kafka) as p:
        await publish(p, topic, [slot_event("i9", "s9", 1)])
    assert await asyncio.wait_for(reading, 10) == 1
    assert "key 'i9'" in out.getvalue()


def test_an_unknown_topic_is_said_plainly(kafka: KafkaEndpoint) -> None:
    with pytest.raises(SystemExit, match="no topic"):
        main(["no.such.topic", "--bootstrap-servers", kafka.bootstrap_servers, "--exit"])
