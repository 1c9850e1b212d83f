"""What a fetch hold costs in latency on Tansu: the gateway's own fetch loop, plain and held.

At moderate rates the gateway asks the broker to hold each fetch for the whole long-poll
bound (``min_bytes`` of 1 MiB, ``domain/fetch_wait.py``), so that a fetch round carries
more records for the same CPU. Apache Kafka answers such a fetch at the bound with every
record stored by then: a record waits up to one bound. Tansu 0.6 answers it at the bound
too, but, as measured here, without the records produced while it held it: those wait for
the next fetch, up to about two bounds (its fetch loop, ``tansu-storage/src/service/
fetch.rs``, reads the log, then sleeps the rest of the bound, then answers what it read).

This bench measures it: records at ``--rate``/s (300 bytes, 100 keys, ``linger_ms`` 5, as
the bench producers send) into a topic of ``--partitions`` partitions on a fresh Tansu, read
by the gateway's ``LeanFetcher`` with a bound of ``--bound`` ms, first plain (``min_bytes``
1: Tansu answers at once when it has records), then held, alternating ``--rounds`` times.
Reported per mode: produce → fetched p50/p99/max (the record's Kafka timestamp to the
moment its response was handed out, in this process) and fetch rounds per second.

    .venv/bin/python bench/broker_hold.py
    .venv/bin/python bench/broker_hold.py --bound 12 --rate 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Final

import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from push_gateway.adapters.fetch import LeanFetcher
from push_gateway.adapters.fetch_links import AiokafkaBrokers
from slotstream_testkit.benchkit import add_results_dir_option, record_results
from slotstream_testkit.kafka import TansuBroker, create_topics
from slotstream_testkit.net import free_port

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: what the gateway asks while it holds (``GATEWAY_KAFKA__FETCH_MODERATE_MIN_BYTES``)
HOLD_MIN_BYTES: Final = 1_048_576
MODES: Final = {"plain": 1, "held": HOLD_MIN_BYTES}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


async def one_run(bootstrap: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One mode on a fresh topic: ``args.seconds`` of records read as they come."""
    topic = f"hold.{mode}.{uuid.uuid4().hex[:8]}"
    await create_topics(bootstrap, {topic: args.partitions})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=5)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)  # metadata and connections
    await producer.start()
    await consumer.start()
    await consumer._client.set_topics([topic])  # noqa: SLF001 - as the gateway's ingest
    fetcher = LeanFetcher(
        AiokafkaBrokers(consumer),
        [(topic, p, 0) for p in range(args.partitions)],
        client_id="bench-broker-hold",
        request_timeout_seconds=5,
        max_wait_ms=args.bound,
        min_bytes=MODES[mode],
    )
    delays_ms: list[float] = []
    done = asyncio.Event()

    async def produce() -> None:
        sent, started = 0, time.monotonic()
        while not done.is_set():
            due = int((time.monotonic() - started) * args.rate)
            for n in range(sent, due):
                await producer.send(topic, b"x" * 300, key=b"k%d" % (n % 100))
            sent = max(sent, due)
            await asyncio.sleep(0.005)

    producing = asyncio.create_task(produce())
    until = time.monotonic() + args.seconds
    try:
        while time.monotonic() < until:
            for item in await fetcher.next_round(1.0):
                now_ms = time.time() * 1000
                while not item.reader.done:
                    delays_ms += [now_ms - r.timestamp for r in item.reader.take(500)]
            fetcher.send_fetches()
    finally:
        done.set()
        await producing
        await fetcher.close()
        await producer.stop()
        await consumer.stop()
    return {
        "mode": mode,
        "min_bytes": MODES[mode],
        "records": len(delays_ms),
        "produced_to_fetched_ms": {
            "p50": quantile(delays_ms, 0.5),
            "p99": quantile(delays_ms, 0.99),
            "max": round(max(delays_ms), 1),
        },
        "fetch_rounds_per_s": round(fetcher.counters.rounds / args.seconds, 1),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        broker = TansuBroker(port=port, log_path=Path(tmp) / "tansu.log")
        await asyncio.to_thread(broker.start)
        try:
            runs = [
                await one_run(f"127.0.0.1:{port}", mode, args)
                for _ in range(args.rounds)
                for mode in MODES
            ]
        finally:
            await asyncio.to_thread(broker.stop)
    summary = {
        mode: {
            "p50_ms_median": statistics.median(
                r["produced_to_fetched_ms"]["p50"] for r in runs if r["mode"] == mode
            ),
            "p99_ms_median": statistics.median(
                r["produced_to_fetched_ms"]["p99"] for r in runs if r["mode"] == mode
            ),
            "rounds_per_s_median": statistics.median(
                r["fetch_rounds_per_s"] for r in runs if r["mode"] == mode
            ),
        }
        for mode in MODES
    }
    return {
        "workload": {
            "rate": args.rate,
            "partitions": args.partitions,
            "bound_ms": args.bound,
            "seconds_each": args.seconds,
            "rounds": args.rounds,
        },
        "runs": runs,
        "summary": summary,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bound", type=int, default=20, help="long-poll bound, ms")
    parser.add_argument("--rate", type=int, default=1000, help="records/s")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0, help="per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each mode, alternating")
    add_results_dir_option(parser, RESULTS_DIR, "broker_hold")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    found = uvloop.run(main_async(args))
    for run in found["runs"]:
        delay = run["produced_to_fetched_ms"]
        print(
            f"{run['mode']:>5}: produced → fetched p50 {delay['p50']} / p99 {delay['p99']} / "
            f"max {delay['max']} ms, {run['fetch_rounds_per_s']} fetch rounds/s "
            f"({run['records']} records)"
        )
    written = record_results(args.results_dir, "broker_hold", found)
    print(f"written to {written} (and appended to history.jsonl)")


if __name__ == "__main__":
    main()
