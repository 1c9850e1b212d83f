"""End-to-end latency a person feels: booking committed -> ``slot`` frame at SSE clients.

Starts the demo stack (scripts/devstack.py: Tansu, booking-api on memory, change-publisher,
two push-gateways, nginx edge) on free ports, opens N SSE clients through the edge on the
seeded instructors' schedule channels (raw asyncio sockets), keeps a background delivery
rate going (records produced straight to the schedule topic on the same channels), then
books slots one by one through the edge (``POST /api/bookings``, a fresh student token each)
and timestamps the matching ``slot`` frame at every client. Per booking and client:
commit -> frame (the slot's ``updatedAt``, written by the booking-api at commit) and
201 -> frame. Two phases in one run: ``shared`` (no pinning) and ``broker-core`` (Tansu
alone on core 0, everything else — services, edge, clients — on core 1), so the broker's
share is visible. Results: bench/results/e2e_latency.json (latest) and
bench/results/history.jsonl.

    .venv/bin/python bench/e2e_latency.py                         # 300 clients, 3,000 deliveries/s
    .venv/bin/python bench/e2e_latency.py --clients 600 --rate 20000 --bookings 60

All processes share this machine's cores with other work: figures are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import uvloop
from aiokafka import AIOKafkaProducer

from slotstream_contracts.topics import SCHEDULE_TOPIC
from slotstream_testkit.benchkit import record_results
from slotstream_testkit.net import raise_open_file_limit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the stack and the fan-out tools
from bench.fanout import _descendants, percentile  # noqa: E402
from scripts.devstack import DevStack, Ports  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
#: the clients all come from 127.0.0.1: lift the edge's and the gateways' per-address limits
EDGE_ENV = {
    "EDGE_STREAMS_PER_IP": "20000",
    "EDGE_REQUESTS_PER_SECOND": "10000",
    "EDGE_REQUEST_BURST": "20000",
    "EDGE_WRITES_PER_SECOND": "1000",
    "EDGE_WRITE_BURST": "1000",
}
GATEWAY_ENV = {
    "GATEWAY_MAX_STREAMS_PER_IP": "20000",
    "GATEWAY_CONNECT_BURST_PER_IP": "20000",
    "GATEWAY_CONNECT_RATE_PER_IP": "100000",
}
#: a client without the frame this long after the 201 counts as missed
FRAME_TIMEOUT_SECONDS = 5.0
#: numbers the bookings of a whole run (the clients' ``seen`` keys)
BOOKING_NUMBERS = itertools.count()
#: bytes searched before each new chunk, so an id split across two chunks is found
ID_SPAN = 64
BACKGROUND_HEADERS = [("ce_type", b"slot.updated"), ("content-type", b"application/json")]


class BenchStack(DevStack):
    """The demo stack with the per-address stream limits of the gateways lifted."""

    def _base_env(self) -> dict[str, str]:
        return super()._base_env() | GATEWAY_ENV


class Watcher(asyncio.Protocol):
    """One SSE client: notes when a watched slot id first shows up in its stream."""

    __slots__ = ("transport", "instructor", "watched", "seen", "tail", "frames", "keep")

    def __init__(self, instructor: str, watched: dict[bytes, int], keep: bool) -> None:
        self.transport: asyncio.Transport | None = None
        self.instructor = instructor
        #: slot id → index of its booking (shared by all watchers)
        self.watched = watched
        #: booking index → (arrival time ns, the bytes around it when ``keep``)
        self.seen: dict[int, tuple[int, bytes]] = {}
        self.tail = b""
        self.frames = 0
        self.keep = keep

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        self.frames += data.count(b"\n\n")
        # only the new bytes and a boundary's worth before them: the tail still holds the
        # snapshot, which names every slot
        fresh = self.tail[-ID_SPAN:] + data
        for slot_id, index in self.watched.items():
            if index not in self.seen and slot_id in fresh:
                self.seen[index] = (now, self.tail + data if self.keep else b"")
        self.tail = (self.tail + data)[-4096:]


def slot_frame_data(raw: bytes, slot_id: bytes) -> dict[str, Any] | None:
    """The ``data:`` JSON of the frame that names ``slot_id`` (None when cut off)."""
    at = raw.rfind(slot_id)
    start = raw.rfind(b"data: ", 0, at)
    end = raw.find(b"\n", at)
    if start < 0 or end < 0:
        return None
    with contextlib.suppress(ValueError, TypeError, KeyError):
        found: dict[str, Any] = orjson.loads(raw[start + 6 : end])
        if found["data"]["id"] == slot_id.decode() and "updatedAt" in found["data"]:
            return found
    return None


@dataclass
class Phase:
    name: str
    commit_to_frame_ms: list[int] = field(default_factory=list)
    response_to_frame_ms: list[int] = field(default_factory=list)
    missed: int = 0
    booked: int = 0
    failed: int = 0


async def open_clients(port: int, instructors: list[str], count: int) -> list[Watcher]:
    loop = asyncio.get_running_loop()
    watched: dict[bytes, int] = {}
    clients: list[Watcher] = []
    for n in range(count):
        instructor = instructors[n % len(instructors)]
        client = Watcher(instructor, watched, keep=n < len(instructors))
        clients.append(client)
        await loop.create_connection(partial(_same, client), "127.0.0.1", port)
        assert client.transport is not None
        client.transport.write(
            f"GET /api/book-now/schedule-updates?instructorId={instructor} HTTP/1.1\r\n"
            f"Host: bench\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        if n % 100 == 99:
            await asyncio.sleep(0.05)  # browsers do not all arrive in one millisecond
    for _ in range(600):  # up to a minute for every snapshot
        if all(c.frames for c in clients):
            break
        await asyncio.sleep(0.1)
    return clients


def _same(client: Watcher) -> Watcher:
    return client


async def background(
    producer: AIOKafkaProducer, instructors: list[str], records_per_s: float, stop: asyncio.Event
) -> int:
    """Records on the clients' channels at a steady rate (each delivered to every client
    of its channel): the delivery load the bookings' frames travel through."""
    sent = 0
    if records_per_s <= 0:
        await stop.wait()
        return 0
    tick = 0.01
    start = time.monotonic()
    pad = "x" * 200
    while not stop.is_set():
        due = int((time.monotonic() - start) * records_per_s)
        while sent < due:
            instructor = instructors[sent % len(instructors)]
            value = orjson.dumps(
                {"id": f"bg-{sent}", "type": "slot.updated", "data": {"id": "bg", "pad": pad}}
            )
            headers = [*BACKGROUND_HEADERS, ("ce_id", f"bg-{uuid.uuid4().hex}".encode())]
            await producer.send(SCHEDULE_TOPIC, value, key=instructor.encode(), headers=headers)
            sent += 1
        await asyncio.sleep(tick)
    return sent


async def run_phase(
    stack: DevStack,
    phase: Phase,
    clients: list[Watcher],
    slots: list[tuple[str, str]],
    args: argparse.Namespace,
) -> None:
    watched = clients[0].watched
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as edge:
        for instructor, slot_id in slots:
            index = next(BOOKING_NUMBERS)
            watched[slot_id.encode()] = index
            token = stack.mint(f"bench-{uuid.uuid4().hex[:10]}", "student", "Bench Student")
            response = await edge.post(
                "/api/bookings",
                json={"slotId": slot_id},
                headers={"Authorization": f"Bearer {token}"},
            )
            answered = time.time_ns()
            if response.status_code != 201:
                phase.failed += 1
                del watched[slot_id.encode()]
                print(f"  booking {slot_id}: {response.status_code} {response.text[:200]}")
                continue
            phase.booked += 1
            audience = [c for c in clients if c.instructor == instructor]
            waited = 0.0
            while waited < args.interval or (
                waited < FRAME_TIMEOUT_SECONDS and any(index not in c.seen for c in audience)
            ):
                await asyncio.sleep(0.01)
                waited += 0.01
            committed: int | None = None
            for client in audience:
                found = client.seen.get(index)
                if found is None:
                    continue
                if committed is None and found[1]:
                    frame = slot_frame_data(found[1], slot_id.encode())
                    if frame is not None:
                        updated = datetime.fromisoformat(frame["data"]["updatedAt"])
                        committed = int(updated.timestamp() * 1e9)
            for client in audience:
                found = client.seen.get(index)
                if found is None:
                    phase.missed += 1
                    continue
                phase.response_to_frame_ms.append(found[0] - answered)
                if committed is not None:
                    phase.commit_to_frame_ms.append(found[0] - committed)
            del watched[slot_id.encode()]


def pin(pids: list[int], cores: str) -> None:
    for pid in pids:
        subprocess.run(
            ["taskset", "-a", "-p", "-c", cores, str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )


def stack_pids(stack: DevStack, name: str) -> list[int]:
    process = stack.processes[name]
    return _descendants(process.pid) if process.pid is not None else []


def summary(phase: Phase, seconds: float, delivered: int, clients: int) -> dict[str, Any]:
    def quantiles(values: list[int]) -> dict[str, float | None]:
        return {
            "p50": _round(percentile(values, 0.50)),
            "p99": _round(percentile(values, 0.99)),
            "max": _round(percentile(values, 1.0)),
        }

    return {
        "phase": phase.name,
        "bookings": phase.booked,
        "booking_failures": phase.failed,
        "frames_measured": len(phase.response_to_frame_ms),
        "frames_missed": phase.missed,
        "commit_to_frame_ms": quantiles(phase.commit_to_frame_ms),
        "response_to_frame_ms": quantiles(phase.response_to_frame_ms),
        "deliveries_per_s_measured": round(delivered / seconds) if seconds else None,
        "clients": clients,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def main_async(args: argparse.Namespace, stack: DevStack) -> dict[str, Any]:
    instructors = [str(i["id"]) for i in stack.instructors]
    async with httpx.AsyncClient(base_url=stack.booking_api_url, timeout=10) as api:
        free: list[tuple[str, str]] = []
        for instructor in instructors:
            schedule = (await api.get(f"/api/instructors/{instructor}/schedule")).json()
            free += [(instructor, s["id"]) for s in schedule["slots"] if s["status"] == "available"]
    random.Random(7).shuffle(free)
    per_phase = min(args.bookings, len(free) // len(args.phases))
    clients = await open_clients(stack.ports.edge, instructors, args.clients)
    opened = sum(1 for c in clients if c.frames)
    print(f"  {opened}/{len(clients)} clients got their snapshot", file=sys.stderr)
    producer = AIOKafkaProducer(
        bootstrap_servers=stack.bootstrap_servers, enable_idempotence=False, linger_ms=2
    )
    await producer.start()
    results: list[dict[str, Any]] = []
    records_per_s = args.rate / max(1, len(clients) / len(instructors))
    everything = [os.getpid()] + [
        pid for name in stack.processes if name != "tansu" for pid in stack_pids(stack, name)
    ]
    try:
        for number, name in enumerate(args.phases):
            if name == "broker-core":
                pin(stack_pids(stack, "tansu"), str(args.broker_core))
                pin(everything, str(args.other_core))
            else:
                pin(stack_pids(stack, "tansu") + everything, "0-1")
            stop = asyncio.Event()
            load = asyncio.create_task(background(producer, instructors, records_per_s, stop))
            await asyncio.sleep(1.0)
            frames_before = sum(c.frames for c in clients)
            started = time.monotonic()
            phase = Phase(name)
            chosen = free[number * per_phase : (number + 1) * per_phase]
            try:
                await run_phase(stack, phase, clients, chosen, args)
            finally:
                stop.set()
                sent = await load
            seconds = time.monotonic() - started
            delivered = sum(c.frames for c in clients) - frames_before
            run = summary(phase, seconds, delivered, len(clients))
            results.append(run | {"background_records_sent": sent})
            print(json.dumps(results[-1]))
    finally:
        pin(stack_pids(stack, "tansu") + everything, "0-1")
        await producer.stop()
        for client in clients:
            if client.transport is not None:
                client.transport.abort()
    return {
        "benchmark": "e2e_latency",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        "workload": {
            "clients": len(clients),
            "instructors": len(instructors),
            "offered_deliveries_per_s": args.rate,
            "background_records_per_s": round(records_per_s, 1),
            "bookings_per_phase": per_phase,
            "interval_s": args.interval,
        },
        "note": "Loaded shared 2-core machine. commit = the slot's updatedAt (booking-api "
        "clock, same host); broker-core: Tansu alone on one core, everything else on the "
        "other.",
        "phases": results,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument(
        "--rate", type=int, default=3000, help="background deliveries/s offered to the clients"
    )
    parser.add_argument("--bookings", type=int, default=30, help="bookings per phase")
    parser.add_argument("--interval", type=float, default=0.3, help="seconds between bookings")
    parser.add_argument(
        "--phases", nargs="+", default=["shared", "broker-core"], choices=["shared", "broker-core"]
    )
    parser.add_argument("--broker-core", type=int, default=0)
    parser.add_argument("--other-core", type=int, default=1)
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help="appends to history.jsonl there and writes e2e_latency.json (the latest)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    raise_open_file_limit()
    os.environ.update(EDGE_ENV)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory(prefix="e2e-") as tmp:
        stack = BenchStack(Path(tmp), Ports.free(), log_level="WARNING")
        stack.start()
        try:
            results = uvloop.run(main_async(args, stack))
        finally:
            stack.stop()
    for phase in results["phases"]:
        c2f = phase["commit_to_frame_ms"]
        print(
            f"{phase['phase']}: commit -> frame p50 {c2f['p50']} ms, p99 {c2f['p99']} ms over "
            f"{phase['frames_measured']} frames ({phase['frames_missed']} missed) at "
            f"{phase['deliveries_per_s_measured']} deliveries/s"
        )
    written = record_results(args.results_dir, "e2e_latency", results)
    print(f"written to {written} (and appended to history.jsonl)")


if __name__ == "__main__":
    main()
