"""Ingest cost of the push-gateway for records nobody subscribes to, in process.

A backlog of records with CloudEvents headers (ce_type, ce_id, ce_subject, content-type)
is produced into Tansu (uncompressed, or ``--compression zstd`` as the change-publisher
sends them); then the gateway's own ``KafkaIngest`` reads it from the beginning into a real
``ChannelHub`` with no subscribers. Reported: CPU time of this process per record (the
steady figure on a shared machine: Tansu runs in its own process), the wall rate and the
load average before and after. Each round times, on the same backlog and one after the
other (so before and after see the same machine):

* ``gateway``: the gateway as it is — its own fetch loop (``adapters/fetch.py``) and the
  compiled record-batch decoder (``_batches.pyx``);
* ``--aiokafka-loop`` (default): the compiled decoder behind aiokafka's consumer
  (``GATEWAY_KAFKA__FETCH_LOOP=aiokafka``, the code before the lean fetch loop);
* ``--baseline`` (default): the same ``KafkaIngest`` with aiokafka's stock
  ``ConsumerRecord`` objects (the code before lean records);
* ``--previous`` (default): lean records built from aiokafka's ``DefaultRecord`` objects
  (the code before the compiled decoder);
* ``--python``: the pure-Python twin of the decoder (what runs where nothing could compile).

Every variant but ``gateway`` reads through aiokafka's consumer.

    .venv/bin/python bench/ingest.py
    .venv/bin/python bench/ingest.py --records 400000 --rounds 5 --compression zstd
    .venv/bin/python bench/ingest.py --profile      # cProfile of one decode round
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import pstats
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import uvloop

from push_gateway.adapters import batches
from push_gateway.adapters import kafka as kafka_adapter
from push_gateway.adapters import records as lean_records
from push_gateway.adapters.kafka import KafkaIngest
from push_gateway.app import GC_THRESHOLDS
from push_gateway.config import GatewayKafkaSettings
from push_gateway.domain.hub import ChannelHub
from slotstream_contracts.channels import ChannelKind
from slotstream_testkit.benchkit import add_results_dir_option, backlog_producer, record_results
from slotstream_testkit.kafka import TansuBroker, create_topics

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PARTITIONS = 4
#: the name KafkaIngest passes as its consumer's key_deserializer to get lean records
LEAN_MARKER = "lean_keys"


class AiokafkaBatches:
    """A reader that leaves every fetch to aiokafka's batch objects: the lean records as
    they were before the compiled decoder."""

    legacy = True

    def __init__(self, *_args: Any) -> None:
        pass


#: the name LeanPartitionRecords looks its batch reader up by
READER = "BatchReader"
#: variant → the batch reader its lean records use (None: aiokafka's own records)
READERS: dict[str, Any] = {
    "gateway": lean_records.BatchReader,
    "aiokafka_loop": lean_records.BatchReader,
    "previous": AiokafkaBatches,
    "python": batches.BatchReader,
    "baseline": None,
}


def _headers(n: int) -> list[tuple[str, bytes]]:
    return [
        ("ce_type", b"slot.updated"),
        ("ce_id", f"{uuid.UUID(int=n)}".encode()),
        ("ce_subject", f"instructors/i{n % 997}/slots/s{n}".encode()),
        ("content-type", b"application/cloudevents+json"),
    ]


async def produce(
    bootstrap: str, topic: str, records: int, pad: int, compression: str | None
) -> None:
    producer = await backlog_producer(bootstrap, compression)
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
    settings: GatewayKafkaSettings, topic: str, other: str, n: int, variant: str
) -> float:
    """CPU seconds of this process for the gateway's ingest to read ``n`` records with the
    ``variant``'s batch reader (``baseline``: aiokafka's own ``ConsumerRecord`` objects, its
    consumer then gets no ``lean_keys`` marker)."""
    hub = _hub(topic, other)
    if variant != "gateway":
        settings = settings.model_copy(update={"fetch_loop": "aiokafka"})
    ingest = KafkaIngest(settings, (topic, other), hub, backfill=n)
    marker = getattr(kafka_adapter, LEAN_MARKER)
    reader = READERS[variant]
    if reader is None:
        setattr(kafka_adapter, LEAN_MARKER, None)
    else:
        setattr(lean_records, READER, reader)
    try:
        await ingest.start()
        started = time.process_time()
        while hub.stats.records < n:  # noqa: ASYNC110 - polls a counter
            await asyncio.sleep(0.005)
        return time.process_time() - started
    finally:
        setattr(kafka_adapter, LEAN_MARKER, marker)
        setattr(lean_records, READER, READERS["gateway"])
        await ingest.stop()


async def run(args: argparse.Namespace, bootstrap: str) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    topic, other = f"ingest.{tag}.schedule", f"ingest.{tag}.notifications"
    await create_topics(bootstrap, {topic: PARTITIONS, other: 1})
    await produce(bootstrap, topic, args.records, args.pad, args.compression)
    settings = GatewayKafkaSettings(bootstrap_servers=bootstrap)
    # the collector as the gateway runs it (app.py): start-up objects frozen, rare full passes
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    variants = ["gateway"] + [
        v for v in ("aiokafka_loop", "previous", "python", "baseline") if getattr(args, v)
    ]
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    walls: list[float] = []
    load_before = [round(v, 2) for v in os.getloadavg()]
    for _ in range(args.rounds):
        for variant in variants:
            wall = time.monotonic()
            profile = cProfile.Profile() if args.profile and variant == "gateway" else None
            if profile is not None:
                profile.enable()
            cpu[variant].append(await gateway_round(settings, topic, other, args.records, variant))
            if profile is not None:
                profile.disable()
                pstats.Stats(profile).sort_stats("tottime").print_stats(15)
            if variant == "gateway":
                walls.append(time.monotonic() - wall)

    def per_record(values: list[float]) -> float | None:
        return round(statistics.median(values) / args.records * 1e6, 3) if values else None

    def every(values: list[float]) -> list[float]:
        return [round(v / args.records * 1e6, 3) for v in values]

    gateway = cpu["gateway"]
    return {
        "records": args.records,
        "rounds": args.rounds,
        "partitions": PARTITIONS,
        "headers_per_record": 4,
        "compression": args.compression or "none",
        "decoder": "compiled" if lean_records.COMPILED else "python",
        "load_average_before": load_before,
        "gateway_cpu_us_per_record": per_record(gateway),
        "gateway_cpu_us_per_record_all": every(gateway),
        "aiokafka_loop_cpu_us_per_record": per_record(cpu.get("aiokafka_loop", [])),
        "aiokafka_loop_cpu_us_per_record_all": every(cpu.get("aiokafka_loop", [])),
        "previous_lean_cpu_us_per_record": per_record(cpu.get("previous", [])),
        "previous_lean_cpu_us_per_record_all": every(cpu.get("previous", [])),
        "python_decoder_cpu_us_per_record": per_record(cpu.get("python", [])),
        "baseline_aiokafka_cpu_us_per_record": per_record(cpu.get("baseline", [])),
        "baseline_cpu_us_per_record_all": every(cpu.get("baseline", [])),
        "cpu_bound_records_per_s": round(args.records / statistics.median(gateway)),
        "wall_records_per_s": round(args.records / statistics.median(walls)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pad", type=int, default=200, help="value padding bytes")
    parser.add_argument("--compression", choices=["gzip", "snappy", "lz4", "zstd"])
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--aiokafka-loop", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--previous", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--python", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--profile", action="store_true")
    add_results_dir_option(parser, RESULTS_DIR, "ingest")
    args = parser.parse_args()
    with TansuBroker() as broker:
        result = uvloop.run(run(args, broker.bootstrap_servers))
    result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(result)
    if not args.profile:
        record_results(args.results_dir, "ingest", result)


if __name__ == "__main__":
    main()
