"""Change events per second through the change-publisher into Kafka (Tansu), one process.

Starts its own Tansu broker, fills the fake change source (a ``MemoryDatabase``: slots
created, booked and tombstoned, bookings and notifications, across many instructors),
then runs the real ``Publisher`` with the real aiokafka producer adapter (acks=all, zstd,
batches sent as built, no linger) and checkpointing on (every second, memory store). Two phases:

1. throughput: a backlog of ``--events`` changes, from the first send to the
   acknowledgement of the last change; also CPU µs per event of this process;
2. latency: changes written at a steady ``--rate`` for ``--seconds``; p50/p99 of the time
   from writing a change to Kafka's acknowledgement of its record.

Prints the figures and writes ``bench/results/publisher.json``. Bounded: each phase stops
after a fixed time. The machine's other work (load average) is reported alongside.

    .venv/bin/python bench/publisher.py [--events 150000] [--rate 5000] [--seconds 3]
"""

import argparse
import asyncio
import gc
import logging
import os
import platform
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import uvloop

from change_publisher.adapters.kafka import KafkaEventProducer
from change_publisher.adapters.memory import (
    MemoryChangeSource,
    MemoryCheckpointStore,
    MemoryDatabase,
    MemoryLeaseStore,
)
from change_publisher.domain.mapping import event_id
from change_publisher.domain.records import OutgoingRecord, Router
from change_publisher.ports import Checkpoint, PendingBatch
from change_publisher.publisher import Publisher, PublisherOptions
from slotstream_contracts.changes import ChangeEvent
from slotstream_contracts.documents import (
    BOOKINGS,
    NOTIFICATIONS,
    SLOTS,
    BookingDocument,
    NotificationDocument,
    SlotDocument,
)
from slotstream_contracts.entities import BookingStatus, NotificationKind, SlotStatus
from slotstream_contracts.settings import KafkaSettings
from slotstream_contracts.topics import DEADLETTER_TOPIC, NOTIFICATIONS_TOPIC, SCHEDULE_TOPIC
from slotstream_testkit.benchkit import add_results_dir_option, record_results
from slotstream_testkit.kafka import TansuBroker, create_topics

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_PER_SECOND = 50_000
PHASE_LIMIT_SECONDS = 20.0
NOW = datetime.now(UTC).replace(microsecond=0)


class TimedProducer:
    """The real producer, noting when each record is acknowledged (by CloudEvent id)."""

    def __init__(self, inner: KafkaEventProducer) -> None:
        self.inner = inner
        self.acked_at: dict[bytes, float] = {}
        self.watch = False

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self, drain_seconds: float) -> None:
        await self.inner.stop(drain_seconds)

    async def partitions(self, topic: str) -> list[int]:
        return await self.inner.partitions(topic)

    async def probe(self) -> None:
        await self.inner.probe()

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[PendingBatch]:
        batches = await self.inner.send_many(records)
        if self.watch:
            for batch in batches:
                ids = [dict(records[i].headers)["ce_id"] for i in batch.indices]
                batch.future.add_done_callback(partial(self._acked, ids))
        return batches

    def _acked(self, ids: list[bytes], _future: "asyncio.Future[Any]") -> None:
        now = time.perf_counter()
        for eid in ids:
            self.acked_at.setdefault(eid, now)


def slot(n: int, instructor: str) -> dict[str, Any]:
    start = NOW + timedelta(hours=n % 500)
    return SlotDocument(
        id=f"s{n}",
        instructor_id=instructor,
        start=start,
        end=start + timedelta(hours=1),
        status=SlotStatus.AVAILABLE,
        version=1,
        created_at=NOW,
        updated_at=NOW,
    ).to_document()


def booking(n: int, instructor: str) -> dict[str, Any]:
    return BookingDocument(
        id=f"b{n}",
        slot_id=f"s{n}",
        instructor_id=instructor,
        student_id=f"u{n % 3000}",
        slot_start=NOW,
        slot_end=NOW + timedelta(hours=1),
        status=BookingStatus.ACTIVE,
        version=1,
        created_at=NOW,
    ).to_document()


def notification(n: int, instructor: str) -> dict[str, Any]:
    return NotificationDocument(
        id=f"n{n}",
        user_id=instructor,
        kind=NotificationKind.BOOKING_CREATED,
        message="New booking",
        booking_id=f"b{n}",
        slot_id=f"s{n}",
        version=1,
        created_at=NOW,
    ).to_document()


def write_changes(database: MemoryDatabase, start: int, count: int) -> list[ChangeEvent]:
    """``count`` changes in the mix of a busy schedule: per slot, created then booked (with
    a booking and a notification), or created then tombstoned."""
    changes: list[ChangeEvent] = []
    n = start
    while len(changes) < count:
        instructor = f"i{n % 500}"
        changes.append(database.insert(SLOTS, slot(n, instructor)))
        if n % 2 == 0:
            changes.append(
                database.update(SLOTS, f"s{n}", {"status": "booked", "bookingId": f"b{n}"})
            )
            changes.append(database.insert(BOOKINGS, booking(n, instructor)))
            changes.append(database.insert(NOTIFICATIONS, notification(n, instructor)))
        else:
            changes.append(database.update(SLOTS, f"s{n}", {"status": "deleted"}))
        n += 1
    return changes


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def wait_for(condition: Any, limit: float) -> bool:
    deadline = time.perf_counter() + limit
    while not condition():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(0.002)
    return True


async def run(
    bootstrap: str, events: int, rate: int, seconds: float, read_batch: int
) -> dict[str, Any]:
    await create_topics(bootstrap, {SCHEDULE_TOPIC: 8, NOTIFICATIONS_TOPIC: 8, DEADLETTER_TOPIC: 1})
    database = MemoryDatabase(retain=events + rate * int(seconds + 2) + 10_000)
    started = time.perf_counter()
    before_backlog = database.log.latest_token
    backlog = write_changes(database, 0, events)
    print(
        f"filled the fake change source with {len(backlog)} changes "
        f"in {time.perf_counter() - started:.1f} s"
    )
    # The backlog belongs to the fake source, not the publisher: keep the collector from
    # walking it over and over.
    gc.freeze()

    producer = TimedProducer(
        KafkaEventProducer(
            KafkaSettings(bootstrap_servers=bootstrap),
            enable_idempotence=False,
            compression="zstd",
            max_batch_size=262_144,
        )
    )
    checkpoints = MemoryCheckpointStore()
    publisher = Publisher(
        PublisherOptions(
            stream_name="bench",
            instance_id="bench",
            collections=(SLOTS, BOOKINGS, NOTIFICATIONS),
            start_mode="resume",
            checkpoint_interval=1.0,
        ),
        source=MemoryChangeSource(database, limit=read_batch, wait=0.05),
        checkpoints=checkpoints,
        leases=MemoryLeaseStore(),
        producer=producer,
        router=Router(
            {
                SLOTS: SCHEDULE_TOPIC,
                BOOKINGS: NOTIFICATIONS_TOPIC,
                NOTIFICATIONS: NOTIFICATIONS_TOPIC,
            },
            DEADLETTER_TOPIC,
        ),
    )
    # Resume from before the backlog, as after a restart with changes waiting.
    await checkpoints.save(
        "bench", Checkpoint(before_backlog, None, epoch=0, saved_at=datetime.now(UTC))
    )
    load_before = os.getloadavg()
    task = asyncio.create_task(publisher.run())
    last = backlog[-1].token
    await wait_for(lambda: publisher.streaming, 15)
    t0, cpu0 = time.perf_counter(), time.process_time()
    done = await wait_for(lambda: publisher.acknowledged_token == last, PHASE_LIMIT_SECONDS)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    acked = len(backlog) if done else _acked_count(publisher, backlog)
    throughput = acked / elapsed
    cpu_per_event = cpu / max(acked, 1)
    print(
        f"throughput: {throughput:,.0f} change events/s ({acked} in {elapsed:.2f} s, "
        f"{cpu_per_event * 1e6:.1f} µs CPU per event in this process)"
    )
    # The robust figure on a shared machine: other work stretches the wall clock, far
    # less the CPU this process spends per event.
    print(f"cpu-bound: {1 / cpu_per_event if cpu else 0:,.0f} events/s on one core to itself")

    # Latency at a steady rate: write → Kafka ack of the record.
    producer.watch = True
    written_at: dict[bytes, float] = {}
    interval = 0.01
    per_tick = max(1, int(rate * interval))
    next_n = events
    tick_end = time.perf_counter() + seconds
    while time.perf_counter() < tick_end:
        tick = time.perf_counter()
        for change in write_changes(database, next_n, per_tick):
            written_at[event_id(change).encode()] = time.perf_counter()
        next_n += per_tick
        await asyncio.sleep(max(0.0, interval - (time.perf_counter() - tick)))
    latest = database.log.latest_token
    await wait_for(lambda: publisher.acknowledged_token == latest, 10.0)
    latencies = [
        (producer.acked_at[eid] - at) * 1000
        for eid, at in written_at.items()
        if eid in producer.acked_at
    ]
    publisher.stop()
    await asyncio.wait_for(task, 30)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(
        f"latency at {rate}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms change→ack "
        f"({len(latencies)} events with records)"
    )
    load_after = os.getloadavg()
    print(
        f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        f"on {os.cpu_count()} cores (other work shares them)"
    )
    return {
        "benchmark": "publisher",
        "events": acked,
        "seconds": round(elapsed, 3),
        "events_per_second": round(throughput),
        "cpu_us_per_event": round(cpu / max(acked, 1) * 1e6, 2),
        # What one core would sustain if this process had it to itself (the machine's
        # other work takes a share of the cores; the broker runs beside it).
        "cpu_bound_events_per_second": round(max(acked, 1) / cpu) if cpu else None,
        "target_events_per_second": TARGET_PER_SECOND,
        "target_met": throughput >= TARGET_PER_SECOND,
        "latency": {
            "rate_per_second": rate,
            "seconds": seconds,
            "events": len(latencies),
            "p50_ms": round(p50, 2),
            "p99_ms": round(p99, 2),
            "mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
        },
        "read_batch": read_batch,
        "checkpoints_saved": len(checkpoints.saves),
        "producer": {"acks": "all", "compression": "zstd", "linger_ms": 0, "idempotence": False},
        "broker": "tansu (memory)",
        "event_loop": "uvloop",
        "loadavg_1m_before": round(load_before[0], 2),
        "loadavg_1m_after": round(load_after[0], 2),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _acked_count(publisher: Publisher, backlog: list[ChangeEvent]) -> int:
    token = publisher.acknowledged_token
    for index, change in enumerate(backlog):
        if change.token == token:
            return index + 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=150_000)
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--read-batch", type=int, default=1000, help="changes per source read (Mongo, feed: 1000)"
    )
    add_results_dir_option(parser, RESULTS_DIR, "publisher")
    args = parser.parse_args()
    logging.getLogger("change_publisher").setLevel(logging.WARNING)
    with TansuBroker() as broker:
        # uvloop, as in the service (uvicorn picks it when installed).
        result = uvloop.run(
            run(broker.bootstrap_servers, args.events, args.rate, args.seconds, args.read_batch)
        )
    print(f"wrote {record_results(args.results_dir, 'publisher', result)}")


if __name__ == "__main__":
    main()
