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

A broker that wants SASL (Compose's ``localhost:9094``, Strimzi) or TLS: ``--security-protocol``,
``--sasl-mechanism``, ``--sasl-username``, ``--sasl-password-file`` (or the password in
``$SLOTSTREAM_EVENTS_SASL_PASSWORD``, never on the command line), ``--ssl-cafile``; each
option also reads ``SLOTSTREAM_EVENTS_<OPTION>``.
"""

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import SecretStr, ValidationError

from slotstream_contracts.settings import KafkaSettings
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
#: the SASL password: from this variable or --sasl-password-file, never an argument (ps shows those)
PASSWORD_ENV: Final = "SLOTSTREAM_EVENTS_SASL_PASSWORD"


def _env(option: str) -> str | None:
    """``--sasl-username`` -> ``$SLOTSTREAM_EVENTS_SASL_USERNAME``."""
    return os.environ.get("SLOTSTREAM_EVENTS_" + option.upper().replace("-", "_"))


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
    security = parser.add_argument_group(
        "security",
        "a broker that wants SASL or TLS; each option also reads SLOTSTREAM_EVENTS_<OPTION>",
    )
    security.add_argument(
        "--security-protocol",
        choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        default=_env("security-protocol") or "PLAINTEXT",
        help="(default: PLAINTEXT; Compose's localhost:9094: SASL_PLAINTEXT)",
    )
    security.add_argument(
        "--sasl-mechanism",
        choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
        default=_env("sasl-mechanism"),
        help="(Compose and Strimzi: SCRAM-SHA-512)",
    )
    security.add_argument("--sasl-username", default=_env("sasl-username"))
    security.add_argument(
        "--sasl-password-file",
        type=Path,
        default=_env("sasl-password-file"),
        help=f"a file holding the password (or the password in ${PASSWORD_ENV})",
    )
    security.add_argument(
        "--ssl-cafile",
        type=Path,
        default=_env("ssl-cafile"),
        help="CA bundle for SSL / SASL_SSL (default: the system's)",
    )
    args = parser.parse_args(argv)
    from_env = os.environ.get(PASSWORD_ENV) if args.sasl_password_file is None else None
    password = SecretStr(from_env) if from_env else None
    try:
        args.kafka = KafkaSettings(
            bootstrap_servers=args.bootstrap_servers,
            client_id="slotstream-events",
            security_protocol=args.security_protocol,
            sasl_mechanism=args.sasl_mechanism,
            sasl_username=args.sasl_username,
            sasl_password=password,
            sasl_password_file=args.sasl_password_file,
            ssl_cafile=args.ssl_cafile,
        )
    except ValidationError as error:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())
        parser.error(
            f"{problems} (--sasl-mechanism, --sasl-username, "
            f"--sasl-password-file or ${PASSWORD_ENV})"
        )
    return args


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
    settings: KafkaSettings = args.kafka
    consumer = AIOKafkaConsumer(**settings.client_options(), enable_auto_commit=False)
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise SystemExit(
            f"slotstream-events: cannot reach the broker at {args.bootstrap_servers}: {exc}"
        ) from None
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
    # aiokafka logs each failed connect before it raises; the one line above says it
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        asyncio.run(tail(args, sys.stdout))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
