"""``bench/e2e_latency.py`` times each booking's broker stage without a consumer of its own
reading the broker while bookings are timed: it notes the schedule topic's end offsets
before a phase and reads the booking records' Kafka timestamps after it. (A live consumer
in the bench was a third reader of the broker under test: Tansu's share rose from
~0.27 to ~0.35 cores and the phase's p99 with it; docs/scaling.md.)"""

from __future__ import annotations

import sys
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from slotstream_testkit.kafka import KafkaEndpoint

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the bench scripts are not a package
from bench.e2e_latency import booking_stages, booking_timestamps, end_offsets  # noqa: E402


async def test_booking_records_are_read_after_the_phase_from_the_offsets_noted_before_it(
    kafka: KafkaEndpoint, unique_topic: str
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(unique_topic, 2, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, linger_ms=0)
    await producer.start()
    try:
        # booked before the phase: not this phase's record, although its slot is watched
        await producer.send_and_wait(
            unique_topic, b'{"id":"slot-c","status":"booked"}', partition=0, timestamp_ms=1_000
        )
        since = await end_offsets(kafka.bootstrap_servers, unique_topic)
        for n, (partition, value, stamp) in enumerate(
            [
                (0, b'{"id":"bg-0","pad":"xx"}', 2_000),
                (1, b'{"id":"slot-b","status":"booked"}', 2_500),
                (0, b'{"id":"slot-a","status":"available"}', 3_000),
                (1, b'{"id":"bg-1","pad":"xx"}', 3_500),
            ]
        ):
            await producer.send_and_wait(
                unique_topic, value, key=b"i%d" % n, partition=partition, timestamp_ms=stamp
            )
    finally:
        await producer.stop()

    found = await booking_timestamps(
        kafka.bootstrap_servers, since, {b"slot-a", b"slot-b", b"slot-c", b"slot-d"}, unique_topic
    )

    assert found == {b"slot-a": 3_000, b"slot-b": 2_500}  # slot-d was never booked


def test_a_bookings_stages_are_measured_from_its_record_timestamp() -> None:
    """commit 10 ms before the record's timestamp; frames 5, 6 and 30 ms after it through
    the edge, 4 ms after it at the client straight on a gateway."""
    produced_ms = 1_000_000
    committed_ns = (produced_ms - 10) * 1_000_000
    at = produced_ms * 1_000_000
    arrivals = [at + 5_000_000, at + 6_000_000, at + 30_000_000]

    stages = booking_stages(committed_ns, produced_ms, arrivals, [at + 4_000_000])

    assert stages == (10.0, 6.0, 30.0, 4.0)
    assert booking_stages(committed_ns, produced_ms, arrivals, [])[3] is None
