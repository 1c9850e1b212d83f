"""Ingest cost of the push-gateway for records nobody subscribes to, in process.

A backlog of records with CloudEvents headers (ce_type, ce_id, ce_subject, content-type)
is produced into Tansu; then the gateway's own ``KafkaIngest`` reads it from the beginning
into a real ``ChannelHub`` with no subscribers. Reported: CPU time of this process per
record (the steady figure on a shared machine: Tansu runs in its own process) and the wall
rate. ``--baseline`` (default) also times the same ``KafkaIngest`` with aiokafka's stock
``ConsumerRecord`` objects on the same backlog, interleaved round by round, so before and
after come from one run.

    .venv/bin/python bench/ingest.py
    .venv/bin/python bench/ingest.py --records 400000 --rounds 3 --baseline
    .venv/bin/python bench/ingest.py --profile      # cProfile of one decode round
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import uvloop

from push_gateway.adapters import kafka as kafka_adapter
from push_gateway.adapters.kafka import KafkaIngest
from push_gateway.app import GC_THRESHOLDS
from push_gateway.config import GatewayKafkaSettings
from push_gateway.domain.hub import ChannelHub
from slotstream_contracts.channels import ChannelKind
from slotstream_testkit.benchkit import backlog_producer, record_results
from slotstream_testkit.kafka import TansuBroker, create_topics

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PARTITIONS = 4
#: the name KafkaIngest passes as its consumer's key_deserializer to get lean records
LEAN_MARKER = "lean_keys"


def _headers(n: int) -> list[tuple[str, bytes]]:
    return [
        ("ce_type", b"slot.updated"),
        ("ce_id", f"{uuid.UUID(int=n)}".encode()),
        ("ce_subject", f"instructors/i{n % 997}/slots/s{n}".encode()),
        ("content-type", b"application/cloudevents+json"),
    ]


async def produce(bootstrap: str, topic: str, records: int, pad: int) -> None:
    producer = await backlog_producer(bootstrap)
    try:
        value = b'{"specversion":"1.0","data":{"pad":"' + b"x" * pad + b'"}}'
        futures = [
            await producer.send(topic, value, key=f"i{n % 997}".encode(), headers=_headers(n))
            for n in range(records)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _hub(topic: str, other: str) -> ChannelHub:
    return ChannelHub({ChannelKind.SCHEDULE: topic, ChannelKind.NOTIFICATIONS: other}, 4096)


async def gateway_round(
    settings: GatewayKafkaSettings, topic: str, other: str, n: int, *, stock: bool = False
) -> float:
    """CPU seconds of this process for the gateway's ingest to read ``n`` records; with
    ``stock``, the same ``KafkaIngest`` given aiokafka's own ``ConsumerRecord`` objects
    (its consumer then gets no ``lean_keys`` marker): the code before lean records."""
    hub = _hub(topic, other)
    ingest = KafkaIngest(settings, (topic, other), hub, backfill=n)
    marker = getattr(kafka_adapter, LEAN_MARKER)
    if stock:
        setattr(kafka_adapter, LEAN_MARKER, None)
    try:
        await ingest.start()
    finally:
        setattr(kafka_adapter, LEAN_MARKER, marker)
    try:
        started = time.process_time()
        while hub.stats.records < n:  # noqa: ASYNC110 - polls a counter
            await asyncio.sleep(0.005)
        return time.process_time() - started
    finally:
        await ingest.stop()


async def run(args: argparse.Namespace, bootstrap: str) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    topic, other = f"ingest.{tag}.schedule", f"ingest.{tag}.notifications"
    await create_topics(bootstrap, {topic: PARTITIONS, other: 1})
    await produce(bootstrap, topic, args.records, args.pad)
    settings = GatewayKafkaSettings(bootstrap_servers=bootstrap)
    # the collector as the gateway runs it (app.py): start-up objects frozen, rare full passes
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    gateway: list[float] = []
    baseline: list[float] = []
    walls: list[float] = []
    for _ in range(args.rounds):
        if args.baseline:
            baseline.append(await gateway_round(settings, topic, other, args.records, stock=True))
        wall = time.monotonic()
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
        gateway.append(await gateway_round(settings, topic, other, args.records))
        walls.append(time.monotonic() - wall)
        if args.profile:
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(15)

    def per_record(values: list[float]) -> float | None:
        return round(statistics.median(values) / args.records * 1e6, 3) if values else None

    return {
        "records": args.records,
        "rounds": args.rounds,
        "partitions": PARTITIONS,
        "headers_per_record": 4,
        "gateway_cpu_us_per_record": per_record(gateway),
        "gateway_cpu_us_per_record_all": [round(v / args.records * 1e6, 3) for v in gateway],
        "baseline_aiokafka_cpu_us_per_record": per_record(baseline),
        "baseline_cpu_us_per_record_all": [round(v / args.records * 1e6, 3) for v in baseline],
        "cpu_bound_records_per_s": round(args.records / statistics.median(gateway)),
        "wall_records_per_s": round(args.records / statistics.median(walls)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pad", type=int, default=200, help="value padding bytes")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with TansuBroker() as broker:
        result = uvloop.run(run(args, broker.bootstrap_servers))
    print(result)
    if not args.profile:
        record_results(RESULTS_DIR, "ingest", result)


if __name__ == "__main__":
    main()
