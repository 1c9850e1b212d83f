"""``slotstream-events``: read a Slotstream topic like ``kcat -C``, with keys and headers.

The demo broker's own CLI (Tansu's ``cat consume``) reads one partition per call, prints a
non-JSON key as ``null`` and no headers. This prints, for every record of every partition:
partition, offset, timestamp, key, headers and the value (the CloudEvent, pretty-printed),
from the beginning or from the end, optionally only one key, following new records or
stopping at the end. Plain aiokafka with manual assignment (no consumer group: nothing is
committed, any number can run).

It lives in the push-gateway because that package already depends on aiokafka and the
contracts, and reading the event topics is what the gateway does; the contracts library
stays free of Kafka clients.

    slotstream-events schedule                      # everything so far, then follow
    slotstream-events notifications --from end      # only what comes from now on
    slotstream-events schedule --key i1 --exit      # one instructor's records, then stop
    slotstream-events slotstream.deadletter.v1 --json
"""

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from slotstream_contracts.topics import (
    DEADLETTER_TOPIC,
    NOTIFICATIONS_TOPIC,
    PRESENCE_TOPIC,
    SCHEDULE_TOPIC,
)

ALIASES: Final = {
    "schedule": SCHEDULE_TOPIC,
    "notifications": NOTIFICATIONS_TOPIC,
    "deadletter": DEADLETTER_TOPIC,
    "presence": PRESENCE_TOPIC,
}
#: the demo's broker (``make demo``); override with --bootstrap-servers or the variable
DEFAULT_BOOTSTRAP: Final = "127.0.0.1:19092"
BOOTSTRAP_ENV: Final = "SLOTSTREAM_EVENTS_BOOTSTRAP_SERVERS"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="slotstream-events",
        description="Print a topic's records: partition, offset, key, headers, CloudEvent.",
    )
    parser.add_argument(
        "topic",
        nargs="?",
        default="schedule",
        help=f"a topic name or one of {', '.join(ALIASES)} (default: schedule)",
    )
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get(BOOTSTRAP_ENV, DEFAULT_BOOTSTRAP),
        help=f"brokers (default: ${BOOTSTRAP_ENV} or {DEFAULT_BOOTSTRAP}, the demo's)",
    )
    parser.add_argument(
        "--from",
        dest="start",
        choices=("beginning", "end"),
        default="beginning",
        help="where to start in every partition (default: beginning)",
    )
    parser.add_argument("--key", action="append", help="only records with this key (repeatable)")
    parser.add_argument("--partition", type=int, action="append", help="only this partition")
    parser.add_argument(
        "--exit", action="store_true", help="stop at the end offsets seen at start (kcat -e)"
    )
    parser.add_argument("--count", type=int, help="stop after printing this many records")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser.parse_args(argv)


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "backslashreplace")


def _value(raw: bytes | None) -> Any:
    if raw is None:
        return None  # a tombstone
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _text(raw)


def render(record: "ConsumerRecord[bytes, bytes]", as_json: bool) -> str:
    """One record as text (a header line, headers, the indented value) or one JSON line."""
    headers = {name: _text(value) for name, value in record.headers}
    value = _value(record.value)
    if as_json:
        line = {
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp,
            "key": _text(record.key),
            "headers": headers,
            "value": value,
        }
        return orjson.dumps(line).decode()
    when = datetime.fromtimestamp(record.timestamp / 1000, UTC).isoformat(timespec="milliseconds")
    lines = [
        f"partition {record.partition}  offset {record.offset}  {when}  key {_text(record.key)!r}",
        "  headers: " + ("  ".join(f"{k}={v}" for k, v in headers.items()) or "(none)"),
    ]
    body = (
        "(tombstone)"
        if value is None
        else orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
        if not isinstance(value, str)
        else value
    )
    lines += ["  " + line for line in body.splitlines()]
    return "\n".join(lines)


async def tail(args: argparse.Namespace, out: TextIO, started: asyncio.Event | None = None) -> int:
    """Print records as ``args`` says; returns how many were printed."""
    topic = ALIASES.get(args.topic, args.topic)
    keys = {k.encode() for k in args.key} if args.key else None
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap_servers,
        enable_auto_commit=False,
        client_id="slotstream-events",
    )
    await consumer.start()
    printed = 0
    try:
        if topic not in await consumer.topics():  # also refreshes the metadata
            raise SystemExit(f"slotstream-events: no topic {topic!r} on {args.bootstrap_servers}")
        known = consumer.partitions_for_topic(topic) or set()
        if not known:
            raise SystemExit(f"slotstream-events: no topic {topic!r} on {args.bootstrap_servers}")
        chosen = sorted(p for p in known if args.partition is None or p in args.partition)
        partitions = [TopicPartition(topic, p) for p in chosen]
        consumer.assign(partitions)
        if args.start == "end":
            await consumer.seek_to_end(*partitions)
        else:
            await consumer.seek_to_beginning(*partitions)
        for partition in partitions:  # fix the positions before anything is produced
            await consumer.position(partition)
        stop_at = await consumer.end_offsets(partitions) if args.exit else None
        if started is not None:
            started.set()
        while True:
            if stop_at is not None and all(
                await asyncio.gather(*(_reached(consumer, p, stop_at[p]) for p in partitions))
            ):
                return printed
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    if keys is not None and record.key not in keys:
                        continue
                    print(render(record, args.json), file=out, flush=True)
                    printed += 1
                    if args.count is not None and printed >= args.count:
                        return printed
    finally:
        await consumer.stop()


async def _reached(consumer: AIOKafkaConsumer, partition: TopicPartition, end: int) -> bool:
    position: int = await consumer.position(partition)
    return position >= end


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        asyncio.run(tail(args, sys.stdout))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
