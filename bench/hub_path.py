"""The gateway's user-space cost between a decoded record and the kernel, in process.

A real ``ChannelHub`` with the ``bench/fanout.py`` sizes' shape (ten live subscribers per
busy channel, records with the bench's CloudEvents headers and a ~330-byte value, keys
round-robin over the channels) ingests records in slices of 16, as the ingest loop hands
them over. Each subscriber's writer is one of:

* ``null`` (default): a C builtin that takes the frame and does nothing with it — what is
  left is the hub's own Python (routing, header checks, dedup, framing, the writer loop);
* ``tcp`` / ``unix``: ``transport.write`` of a real uvloop connection over TCP on
  loopback (as the bench's clients) or a Unix socket pair, whose far end a second process
  drains: adds uvloop's write path and the kernel's ``write``.

Reported: CPU time of this process per record and per delivery (``time.process_time``).
For a count the machine's load does not change, run it under ``valgrind --tool=callgrind``
with two ``--records`` values and divide the difference in instructions by the difference
in records (start-up cancels out).

    .venv/bin/python bench/hub_path.py
    .venv/bin/python bench/hub_path.py --writer tcp --records 30000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import selectors
import signal
import socket
import time
from typing import Any

import uvloop

from push_gateway.adapters.records import IngestRecord
from push_gateway.domain.hub import NO_READERS, ChannelHub, Record, Writer
from push_gateway.domain.positions import PartitionKey
from slotstream_contracts.channels import Channel, ChannelKind

TOPIC = "schedule"
PARTITIONS = 4
SLICE = 16


class Subscriber:
    """One live connection as the hub sees it."""

    def __init__(self, partitions: tuple[PartitionKey, ...], writer: Writer) -> None:
        self.partitions = partitions
        self.writer = writer
        self.readers = NO_READERS

    def buffer(self, key: PartitionKey, record: Record) -> None:  # noqa: ARG002
        raise AssertionError("live subscribers are not buffered")

    def on_resync(self, key: PartitionKey) -> None:  # noqa: ARG002
        raise AssertionError("no resync in this workload")


def build_hub(channels: int, per_channel: int, writer_of: Any) -> tuple[ChannelHub, list[str]]:
    hub = ChannelHub({ChannelKind.SCHEDULE: TOPIC, ChannelKind.NOTIFICATIONS: "notes"}, 4096)
    for partition in range(PARTITIONS):
        hub.assign(TOPIC, partition, 0, PARTITIONS)
    hub.assign("notes", 0, 0, 1)
    names = [f"b{n}" for n in range(channels)]
    for name in names:
        channel = Channel.schedule(name)
        for _ in range(per_channel):
            subscriber = Subscriber((hub.partition_key(channel),), writer_of())
            hub.attach(subscriber, [channel])
            hub.go_live(subscriber)
    return hub, names


def records_by_partition(
    hub: ChannelHub, names: list[str], count: int, pad: int
) -> list[tuple[int, list[IngestRecord]]]:
    """Slices of up to 16 consecutive records of one partition, in publishing order."""
    offsets = [0] * PARTITIONS
    slices: list[tuple[int, list[IngestRecord]]] = []
    open_slice: dict[int, list[IngestRecord]] = {}
    partition_of = {name: hub.partition_key(Channel.schedule(name))[1] for name in names}
    for seq in range(count):
        name = names[seq % len(names)]
        partition = partition_of[name]
        value = b'{"seq":%d,"ch":"%s","ts":%d,"pad":"%s"}' % (
            seq,
            name.encode(),
            time.time_ns(),
            b"x" * pad,
        )
        record = IngestRecord(offsets[partition], name.encode(), value, b"slot.updated", None, 0)
        offsets[partition] += 1
        current = open_slice.setdefault(partition, [])
        current.append(record)
        if len(current) == SLICE:
            slices.append((partition, current))
            open_slice[partition] = []
    slices += [(p, found) for p, found in open_slice.items() if found]
    return slices


def run(hub: ChannelHub, slices: list[tuple[int, list[IngestRecord]]]) -> float:
    ingest = hub.ingest
    started = time.process_time()
    for partition, found in slices:
        ingest(TOPIC, partition, found)
    return time.process_time() - started


def socket_pairs(count: int, kind: str) -> list[tuple[socket.socket, socket.socket]]:
    """``count`` connected pairs: Unix socket pairs, or TCP over loopback (as the bench's
    clients connect)."""
    if kind == "unix":
        return [socket.socketpair() for _ in range(count)]
    pairs = []
    with socket.create_server(("127.0.0.1", 0), backlog=count) as server:
        for _ in range(count):
            client = socket.create_connection(server.getsockname())
            near, _ = server.accept()
            pairs.append((near, client))
    return pairs


def drain_far_ends(pairs: list[tuple[socket.socket, socket.socket]]) -> int:
    """Fork a process that reads every far end until the first one closes."""
    child = os.fork()
    if child == 0:
        selector = selectors.DefaultSelector()
        for near, far in pairs:
            near.close()
            far.setblocking(False)
            selector.register(far, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if not key.fileobj.recv(1 << 16):  # type: ignore[union-attr]
                    os._exit(0)
    for _, far in pairs:
        far.close()
    return child


async def main_async(
    args: argparse.Namespace, pairs: list[tuple[socket.socket, socket.socket]]
) -> dict[str, Any]:
    if pairs:
        loop = asyncio.get_running_loop()
        writers: list[Writer] = []
        for near, _ in pairs:
            transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, near)
            transport.set_write_buffer_limits(high=256 * 1024)
            writers.append(transport.write)
        made = iter(writers)
        hub, names = build_hub(args.channels, args.per_channel, lambda: next(made))
    else:
        hub, names = build_hub(args.channels, args.per_channel, lambda: len)
    slices = records_by_partition(hub, names, args.records, args.pad)
    run(hub, slices[: len(slices) // 10])  # warm up
    hub.stats.records = hub.stats.deliveries = 0
    seconds = run(hub, slices[len(slices) // 10 :])
    stats = hub.stats
    return {
        "writer": args.writer,
        "records": stats.records,
        "deliveries": stats.deliveries,
        "cpu_us_per_record": round(seconds / stats.records * 1e6, 3),
        "cpu_us_per_delivery": round(seconds / stats.deliveries * 1e6, 3),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--per-channel", type=int, default=10)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--pad", type=int, default=250, help="payload padding bytes")
    parser.add_argument("--writer", choices=["null", "unix", "tcp"], default="null")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    pairs = []
    child = 0
    if args.writer != "null":
        pairs = socket_pairs(args.channels * args.per_channel, args.writer)
        child = drain_far_ends(pairs)
    try:
        print(uvloop.run(main_async(args, pairs)))
    finally:
        if child:
            os.kill(child, signal.SIGTERM)
            os.waitpid(child, 0)


if __name__ == "__main__":
    main()
