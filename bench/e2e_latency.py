"""End-to-end latency a person feels: booking committed -> ``slot`` frame at SSE clients.

Starts the demo stack (scripts/devstack.py: Tansu, booking-api on memory, change-publisher,
two push-gateways, nginx edge reaching them over their Unix sockets as on one host, or over
TCP with ``--edge-upstream tcp``) on free ports, opens N SSE clients through the edge on the
seeded instructors' schedule channels, keeps a background delivery rate going (records
produced straight to the schedule topic on the same channels), then books slots one by one
through the edge (``POST /api/bookings``, a fresh student token each) and timestamps the
matching ``slot`` frame at every client of that instructor.

Per booking, the stages in between are timed too:

* commit → produced: the slot's ``updatedAt`` (written by the booking-api at commit) → the
  Kafka timestamp of its record (set by the change-publisher when it appends the record to
  a produce batch): the change feed long-poll, the publisher's read, map and encode;
* produced → frame: → the frame at a client: the produce request, Tansu, the gateway's
  fetch, ingest and fan-out, nginx, and the client's read (per client; the clients' p50
  and p99 per booking, and the p50 at the clients straight on a gateway: the edge's share).

The records' timestamps are read after each phase, from the offsets noted before it: a
consumer of this process's own reading the broker during the phase made Tansu, which
every hop shares the two cores with, serve a third reader (its share rose from ~0.27 to
~0.35 cores, and the p99 with it). Inside the gateways, the same records' produced →
fetched and produced → written come from their own metrics (``gateways`` in the JSON).

The SSE clients run in a process of their own (``--client-process``, started by this
script), lean (a byte search per read, no parsing), which reports its own CPU and how late
its 10 ms timer fired, so the load client's share of the two cores is measured rather than
hidden in the figure. A frame's time at a client is the kernel's receive stamp of the TCP
segment that brought it (on loopback taken inside the edge's write that sends the frame, on
a network when it reaches the client's machine): 900 browsers in one process on the stack's
two cores read it later, by that process's own queue (its timer fired up to 20-50 ms late
in loaded runs), which a browser does not have. The stamp is read per segment by a packet
socket on the loopback device (``slotstream_testkit.segment_tap``, only while a booking is
watched, needs ``CAP_NET_RAW``): the client socket's own stamp (``SO_TIMESTAMPNS``, the
fallback, counted as ``frames_stamped_at_the_socket``) is the last segment's of a read, and
the kernel merges a segment into an unread one before it, so a frame the process had not
read before the next one arrived got the next one's time. The time it was read is reported
beside it (``commit_to_read_ms``). Every process's CPU per phase (cores used) and the load
average before and after each phase are in the JSON.

Phases: ``shared`` (nothing pinned), ``broker-core`` (Tansu alone on core 0, everything
else on core 1), ``client-core`` (the load client alone on core 0, the stack on core 1).
Repetitions (``--repeat``, 5 by default): each runs every phase on a fresh stack (Tansu's
cost per fetch grows with its log, so runs on one stack would not be alike), and a phase's
p50/p99 are taken over the frames of all of them: one run's p99 rests on 30 bookings, and
one booking that meets a busy moment (3.3 % of its frames) sets it, so single runs minutes
apart ranged from 34 to 66 ms on this VM. Each run's own figures are kept under ``runs``.
Results: bench/results/e2e_latency.json (latest) and bench/results/history.jsonl.

    .venv/bin/python bench/e2e_latency.py                       # 900 clients, 40 k deliveries/s
    .venv/bin/python bench/e2e_latency.py --clients 300 --rate 3000 --bookings 60
    .venv/bin/python bench/e2e_latency.py --repeat 1 --phases shared --publisher-env \
        PYTHONPATH=/tmp/old/src                                  # one A/B run, ~17 s

All processes share this machine's cores with other work: figures are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from slotstream_contracts.topics import SCHEDULE_TOPIC
from slotstream_testkit.benchkit import (
    add_results_dir_option,
    arrivals_report,
    env_assignments,
    record_results,
)
from slotstream_testkit.kafka import topic_partitions
from slotstream_testkit.net import raise_open_file_limit
from slotstream_testkit.segment_tap import SO_TIMESTAMPNS, SegmentTap, received_at

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the stack and the fan-out tools
from bench.fanout import (  # noqa: E402
    _descendants,
    gateway_counter,
    gateway_timings,
    own_cpu_seconds,
    percentile,
    tree_cpu_seconds_by_name,
)
from scripts import devstack  # noqa: E402
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
#: how long reading a phase's records back after it may take
READ_BACK_SECONDS = 30.0
#: a client without the frame this long after the watch began counts as missed
FRAME_TIMEOUT_SECONDS = 5.0
#: bytes kept from the previous read, so an id split across two reads is found
ID_SPAN = 64
LAG_TICK_SECONDS = 0.01
BACKGROUND_HEADERS = [("ce_type", b"slot.updated"), ("content-type", b"application/json")]
PHASES = ("shared", "broker-core", "client-core")


class BenchStack(DevStack):
    """The demo stack with the per-address stream limits of the gateways lifted, and extra
    environment for the publisher and the gateways (A/B runs of other code or settings)."""

    publisher_env: dict[str, str] = {}  # noqa: RUF012 - set once per run, before start()
    gateway_env: dict[str, str] = {}  # noqa: RUF012

    def _base_env(self) -> dict[str, str]:
        return super()._base_env() | GATEWAY_ENV

    def _spawn(self, process: Any, timeout: float = 30.0) -> Any:
        if process.name == "change-publisher":
            process.env.update(self.publisher_env)
        elif process.name.startswith("push-gateway"):
            process.env.update(self.gateway_env)
        return super()._spawn(process, timeout)


def set_edge_workers(workers: str) -> None:
    """Run the edge with ``workers`` nginx worker processes (A/B runs of the setting)."""
    render = devstack._main_conf

    def main_conf(edge: Path) -> str:
        return re.sub(r"worker_processes \S+;", f"worker_processes {workers};", render(edge))

    devstack._main_conf = main_conf


# -- the load client: its own process --------------------------------------------------------
#: the segment tap's filter passes segments to the clients with at least this many bytes of
#: payload: a booking's slot frame is ~550 with its chunk's framing, one background frame
#: ~300 (segments of two or more pass too, and are searched in vain)
TAP_MIN_PAYLOAD = 400


class Audience:
    """The clients of one instructor and the slot id they are watching for."""

    __slots__ = ("members", "ports", "slot", "arrived", "read", "complete")

    def __init__(self) -> None:
        self.members: list[Watcher] = []
        #: the clients, by their connection's local port
        self.ports: dict[int, int] = {}
        self.slot: bytes | None = None
        #: per client, the kernel's receive stamp of the frame (taken on loopback inside the
        #: sender's write): the socket's, until the segment tap's replaces it
        self.arrived: dict[int, int] = {}
        #: per client, when this process read it (later by the process's own queue)
        self.read: dict[int, int] = {}
        self.complete = asyncio.Event()

    def watch(self, slot: bytes) -> None:
        """Watch for ``slot`` from now on, forgetting the arrivals of the previous one."""
        self.slot = slot
        self.arrived, self.read, self.complete = {}, {}, asyncio.Event()

    def stamp_per_segment(self, found: dict[int, int]) -> int:
        """Take the segment tap's stamps (``found``, by client) for the frames read; returns
        how many of those read through the edge keep their socket's stamp (none found)."""
        kept = 0
        for client in self.members:
            number = client.number
            if number not in self.arrived:
                continue
            if number in found:
                self.arrived[number] = min(self.arrived[number], found[number])
            elif not client.direct:
                kept += 1
        return kept


class Watcher:
    """One SSE client: counts frames and notes when the watched slot id shows up.

    A frame's arrival is the kernel's receive stamp of the segment that brought it, not the
    time this process read it: the load client holds 900 browsers in one process, on the
    two cores the stack uses, and a browser would not wait for 899 others' reads (nor for
    the stack's processes to leave it a core) before its socket had the frame. The socket's
    stamp is the last segment's of a read, and the kernel merges a segment into an unread
    one before it: a frame not read before the next arrived gets the next one's stamp.
    Where the segment tap runs (``CAP_NET_RAW``), its stamp of the frame's own segment
    replaces it (:meth:`Audience.stamp_per_segment`)."""

    __slots__ = ("sock", "audience", "number", "direct", "tail", "frames")

    def __init__(self, sock: socket.socket, audience: Audience, number: int, direct: bool):
        self.sock = sock
        self.audience = audience
        self.number = number
        #: connected straight to a gateway (not through the edge)
        self.direct = direct
        self.tail = b""
        self.frames = 0

    def readable(self) -> None:
        try:
            data, ancillary, _flags, _address = self.sock.recvmsg(65536, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        now = time.time_ns()
        if not data:
            self.close()
            return
        self.frames += data.count(b"\n\n")
        audience = self.audience
        slot = audience.slot
        if slot is not None and self.number not in audience.arrived and slot in self.tail + data:
            audience.arrived[self.number] = received_at(ancillary, now)
            audience.read[self.number] = now
            if len(audience.arrived) == len(audience.members):
                audience.complete.set()
        self.tail = data[-ID_SPAN:]

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()


async def open_stream(
    loop: asyncio.AbstractEventLoop,
    audience: Audience,
    number: int,
    direct: bool,
    port: int,
    instructor: str,
) -> Watcher:
    """One SSE client: a TCP connection with receive stamps on, the stream request sent."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(
        sock,
        f"GET /api/book-now/schedule-updates?instructorId={instructor} HTTP/1.1\r\n"
        f"Host: bench\r\nAccept: text/event-stream\r\n\r\n".encode(),
    )
    watcher = Watcher(sock, audience, number, direct)
    loop.add_reader(sock.fileno(), watcher.readable)
    return watcher


class LagMeter:
    """How late a 10 ms timer fires in this process: a bound on how late a timestamp taken
    in ``data_received`` may be (the loop was busy or the process not scheduled)."""

    def __init__(self) -> None:
        self.late_ns: list[int] = []
        self._loop = asyncio.get_running_loop()
        self._due = time.monotonic_ns() + int(LAG_TICK_SECONDS * 1e9)
        self._loop.call_later(LAG_TICK_SECONDS, self._tick)

    def _tick(self) -> None:
        now = time.monotonic_ns()
        self.late_ns.append(max(0, now - self._due))
        self._due = now + int(LAG_TICK_SECONDS * 1e9)
        self._loop.call_later(LAG_TICK_SECONDS, self._tick)

    def take(self) -> dict[str, float | None]:
        late, self.late_ns = self.late_ns, []
        return {
            "p50": percentile(late, 0.5),
            "p99": percentile(late, 0.99),
            "max": percentile(late, 1.0),
        }


async def client_process(
    port: int, count: int, instructors: list[str], gateway_ports: list[int], direct: int
) -> None:
    """Open the clients (``count`` through the edge, ``direct`` per instructor straight to
    the gateways, for the edge's share), then answer commands (JSON lines) on stdin:
    ``{"watch": slot, "instructor": id}`` → ``{"watching": slot}`` at once, then the
    arrival times at that instructor's clients; ``{"stats": 1}`` → frames so far, own CPU
    seconds, timer lateness since the last stats."""
    raise_open_file_limit()
    loop = asyncio.get_running_loop()
    audiences = {instructor: Audience() for instructor in instructors}
    clients: list[Watcher] = []
    direct_total = direct * len(instructors)
    for n in range(count + direct_total):
        instructor = instructors[n % len(instructors)]
        direct_n = n >= count
        target = gateway_ports[n % len(gateway_ports)] if direct_n else port
        client = await open_stream(loop, audiences[instructor], n, direct_n, target, instructor)
        audiences[instructor].members.append(client)
        clients.append(client)
        if n % 100 == 99:
            await asyncio.sleep(0.05)  # browsers do not all arrive in one millisecond
    for _ in range(600):  # up to a minute for every snapshot
        if all(c.frames for c in clients):
            break
        await asyncio.sleep(0.1)
    lag = LagMeter()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def answer(message: dict[str, Any]) -> None:
        sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
        sys.stdout.buffer.flush()

    for client in clients:
        client.audience.ports[client.sock.getsockname()[1]] = client.number
    # the edge's segments to anyone, the gateways' to the clients straight on them (not to
    # the edge); read only once a booking's frame is in: until then the kernel keeps each
    # segment with its stamp, and this process reads the clients' sockets as before
    direct_ports = [c.sock.getsockname()[1] for c in clients if c.direct]
    tap = SegmentTap.open(port, TAP_MIN_PAYLOAD, gateway_ports, direct_ports)
    answer(
        {
            "opened": sum(1 for c in clients if c.frames),
            "clients": len(clients),
            "segment_tap": tap is not None,
        }
    )
    while line := await reader.readline():
        command = orjson.loads(line)
        if "watch" in command:
            audience = audiences[command["instructor"]]
            slot = command["watch"].encode()
            audience.watch(slot)
            if tap is not None:
                tap.watch(slot, audience.ports)
            answer({"watching": command["watch"]})  # the booking is made only after this
            try:
                await asyncio.wait_for(audience.complete.wait(), FRAME_TIMEOUT_SECONDS)
            except TimeoutError:
                pass
            audience.slot = None
            found = tap.stop() if tap is not None else {}
            at_socket = audience.stamp_per_segment(found)
            members = [(c.number, c.direct) for c in audience.members]
            report = arrivals_report(members, audience.arrived, audience.read)
            answer(report | {"stamped_at_the_socket": at_socket})
        elif "stats" in command:
            answer(
                {
                    "frames": sum(c.frames for c in clients if not c.direct),
                    "cpu_seconds": own_cpu_seconds(),
                    "timer_late_ms": lag.take(),
                    "segment_tap_drops": tap.dropped() if tap is not None else 0,
                }
            )
    for client in clients:
        client.close()
    if tap is not None:
        tap.close()


class ClientProcess:
    """The main process's handle on the load client process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(
        cls, port: int, count: int, instructors: list[str], gateway_ports: list[int], direct: int
    ) -> ClientProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--client-process",
            str(port),
            str(count),
            ",".join(instructors),
            ",".join(map(str, gateway_ports)),
            str(direct),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        return cls(process)

    async def receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError("the load client process exited")
        found: dict[str, Any] = orjson.loads(line)
        return found

    async def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps(command) + b"\n")
        await self.process.stdin.drain()
        return await self.receive()

    async def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


# -- the main process: bookings, background load, the records read back -----------------------
async def background(
    producer: AIOKafkaProducer, instructors: list[str], records_per_s: float, stop: asyncio.Event
) -> int:
    """Records on the clients' channels at a steady rate (each delivered to every client
    of its channel): the delivery load the bookings' frames travel through."""
    sent = 0
    if records_per_s <= 0:
        await stop.wait()
        return 0
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
        await asyncio.sleep(0.01)
    return sent


async def end_offsets(bootstrap: str, topic: str = SCHEDULE_TOPIC) -> dict[TopicPartition, int]:
    """The topic's end offsets now (one ListOffsets request, no fetch)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = topic_partitions(consumer, topic)
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def booking_timestamps(
    bootstrap: str,
    since: dict[TopicPartition, int],
    slots: set[bytes],
    topic: str = SCHEDULE_TOPIC,
) -> dict[bytes, int]:
    """The Kafka timestamp (ms, the producer's create time) of each slot's last record
    from ``since`` to the end of the topic, read once the phase is over."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: dict[bytes, int] = {}
    try:
        partitions = topic_partitions(consumer, topic)
        consumer.assign(partitions)
        for partition in partitions:
            consumer.seek(partition, since.get(partition, 0))
        end = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + READ_BACK_SECONDS
        while any([await consumer.position(p) < end[p] for p in partitions]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the phase's records were not read back: {end}")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    value = record.value or b""
                    if value.startswith(b'{"id":"bg-'):
                        continue
                    for slot in slots:
                        if slot in value:
                            found[slot] = record.timestamp
    finally:
        await consumer.stop()
    return found


def booking_stages(
    committed_ns: int, produced_ms: int, arrivals: list[int], direct: list[int]
) -> tuple[float, float, float, float | None]:
    """One booking's stages, ms: commit → produced, produced → frame p50 and p99 (through
    the edge), produced → frame p50 at the clients straight on a gateway."""
    produced_ns = produced_ms * 1_000_000
    after = [at - produced_ns for at in arrivals]
    return (
        (produced_ns - committed_ns) / 1e6,
        percentile(after, 0.5) or 0.0,
        percentile(after, 0.99) or 0.0,
        percentile([at - produced_ns for at in direct], 0.5),
    )


@dataclass
class BookingFrames:
    """What one booking's frames did, kept until its record's timestamp is read back."""

    slot: bytes
    committed_ns: int
    arrivals: list[int]
    direct: list[int]


@dataclass
class Phase:
    name: str
    commit_to_frame_ns: list[int] = field(default_factory=list)
    #: the same frames, to when the load client read them (its own queue included)
    commit_to_read_ns: list[int] = field(default_factory=list)
    response_to_frame_ns: list[int] = field(default_factory=list)
    #: the bookings whose commit time is known, for their stages once the phase is over
    frames: list[BookingFrames] = field(default_factory=list)
    #: per booking, ms: see :func:`booking_stages`
    stages: list[tuple[float, float, float, float | None]] = field(default_factory=list)
    missed: int = 0
    #: the bookings some client did not see within ``FRAME_TIMEOUT_SECONDS``: which, and
    #: how many clients (where to look when a run reports frames missed)
    missed_bookings: list[dict[str, Any]] = field(default_factory=list)
    #: frames through the edge whose segment the tap did not see: the socket's stamp stands
    stamped_at_the_socket: int = 0
    booked: int = 0
    failed: int = 0


async def slot_updated_at(api: httpx.AsyncClient, instructor: str, slot_id: str) -> int | None:
    """The slot's ``updatedAt`` (its commit time, ns) as the booking-api has it now."""
    schedule = (await api.get(f"/api/instructors/{instructor}/schedule")).json()
    for slot in schedule["slots"]:
        if slot["id"] == slot_id and "updatedAt" in slot:
            return int(datetime.fromisoformat(slot["updatedAt"]).timestamp() * 1e9)
    return None


async def run_phase(
    stack: DevStack,
    phase: Phase,
    clients: ClientProcess,
    edge: httpx.AsyncClient,
    api: httpx.AsyncClient,
    slots: list[tuple[str, str]],
    interval: float,
) -> None:
    """Book ``slots`` one by one through the edge (``edge``; ``api`` reads their commit time
    from the booking-api). Both are built before the background load starts: building an
    ``httpx.AsyncClient`` blocks the event loop that produces that load for 35-70 ms."""
    for instructor, slot_id in slots:
        began = time.monotonic()
        slot = slot_id.encode()
        # the clients watch before the booking is made: a frame that reached them first
        # (the ones straight on a gateway get it before the edge's) would go unseen
        await clients.ask({"watch": slot_id, "instructor": instructor})
        token = stack.mint(f"bench-{uuid.uuid4().hex[:10]}", "student", "Bench Student")
        response = await edge.post(
            "/api/bookings",
            json={"slotId": slot_id},
            headers={"Authorization": f"Bearer {token}"},
        )
        answered = time.time_ns()
        report = await clients.receive()
        if response.status_code != 201:
            phase.failed += 1
            print(f"  booking {slot_id}: {response.status_code} {response.text[:200]}")
            continue
        phase.booked += 1
        phase.missed += report["missed"]
        if report["missed"]:
            missed = {
                "slot": slot_id,
                "instructor": instructor,
                "clients": report["missed"],
                "straight_from_a_gateway": report["missed_straight_from_a_gateway"],
                "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            }
            phase.missed_bookings.append(missed)
            print(f"  frames missed: {missed}", file=sys.stderr)
        phase.stamped_at_the_socket += report["stamped_at_the_socket"]
        arrivals: list[int] = report["arrivals"]
        committed = await slot_updated_at(api, instructor, slot_id)
        phase.response_to_frame_ns += [at - answered for at in arrivals]
        if committed is not None:
            phase.commit_to_frame_ns += [at - committed for at in arrivals]
            phase.commit_to_read_ns += [at - committed for at in report["read"]]
            if arrivals:
                phase.frames.append(BookingFrames(slot, committed, arrivals, report["direct"]))
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))


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


def cpu_by_process(stack: DevStack, client_pid: int) -> dict[str, float]:
    """CPU seconds so far of each part: the stack's processes, the load client, this one."""
    roots = {name: p.pid for name, p in stack.processes.items() if p.pid is not None}
    found = tree_cpu_seconds_by_name(roots | {"load-client": client_pid})
    found["bench (bookings, background)"] = own_cpu_seconds()
    return found


async def gateway_metrics(stack: DevStack, http: httpx.AsyncClient) -> list[str]:
    return [(await http.get(f"{stack.gateway_url(n)}/metrics")).text for n in (1, 2)]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def stage_medians(stages: list[tuple[float, float, float, float | None]]) -> dict[str, Any]:
    """The median over the bookings of each stage, and the stages of the three worst."""
    names = (
        "commit_to_produced",
        "produced_to_frame_p50",
        "produced_to_frame_p99",
        "produced_to_direct_frame_p50",
    )
    out: dict[str, Any] = {}
    for i, name in enumerate(names):
        out[f"{name}_ms"] = _ms(_median([s[i] for s in stages]))
    # the worst bookings: what their stages were (the p99 of a run is close to its worst)
    worst = sorted(stages, key=lambda s: s[0] + s[2])[-3:]
    out["worst_bookings_ms"] = [[_ms(v) for v in s] for s in worst]
    return out


async def main_async(args: argparse.Namespace, stack: DevStack) -> Repetition:
    """The HTTP clients are built before anything runs: see :func:`run_phase`."""
    edge = httpx.AsyncClient(base_url=stack.base_url, timeout=10)
    api = httpx.AsyncClient(base_url=stack.booking_api_url, timeout=10)
    scrape = httpx.AsyncClient(timeout=10)
    try:
        return await measure(args, stack, edge, api, scrape)
    finally:
        for http in (edge, api, scrape):
            await http.aclose()


async def measure(
    args: argparse.Namespace,
    stack: DevStack,
    edge: httpx.AsyncClient,
    api: httpx.AsyncClient,
    scrape: httpx.AsyncClient,
) -> Repetition:
    instructors = [str(i["id"]) for i in stack.instructors]
    free: list[tuple[str, str]] = []
    for instructor in instructors:
        schedule = (await api.get(f"/api/instructors/{instructor}/schedule")).json()
        free += [(instructor, s["id"]) for s in schedule["slots"] if s["status"] == "available"]
    random.Random(7).shuffle(free)
    per_phase = min(args.bookings, len(free) // len(args.phases))
    gateway_ports = [stack.gateway_port(1), stack.gateway_port(2)]
    clients = await ClientProcess.start(
        stack.ports.edge, args.clients, instructors, gateway_ports, args.direct
    )
    opened = await clients.receive()
    print(f"  {opened['opened']}/{opened['clients']} clients got their snapshot", file=sys.stderr)
    if not opened["segment_tap"]:
        print(
            "  no segment tap (it needs CAP_NET_RAW): a frame read after the next one has "
            "that one's stamp",
            file=sys.stderr,
        )
    client_pid = clients.process.pid
    producer = AIOKafkaProducer(
        bootstrap_servers=stack.bootstrap_servers, enable_idempotence=False, linger_ms=0
    )
    await producer.start()
    ran: list[tuple[Phase, dict[str, Any]]] = []
    records_per_s = args.rate / max(1, args.clients / len(instructors))
    services = [os.getpid()] + [
        pid for name in stack.processes if name != "tansu" for pid in stack_pids(stack, name)
    ]
    tansu = stack_pids(stack, "tansu")
    try:
        for number, name in enumerate(args.phases):
            if name == "broker-core":
                pin(tansu, str(args.cores[0]))
                pin([*services, client_pid], str(args.cores[1]))
            elif name == "client-core":
                pin([client_pid], str(args.cores[0]))
                pin([*tansu, *services], str(args.cores[1]))
            else:
                pin([*tansu, *services, client_pid], f"{args.cores[0]},{args.cores[1]}")
            stop = asyncio.Event()
            load = asyncio.create_task(background(producer, instructors, records_per_s, stop))
            await asyncio.sleep(1.0)
            since = await end_offsets(stack.bootstrap_servers)  # before the CPU is counted
            load_before = os.getloadavg()
            stats_before = await clients.ask({"stats": 1})
            cpu_before = cpu_by_process(stack, client_pid)
            metrics_before = await gateway_metrics(stack, scrape)
            started = time.monotonic()
            phase = Phase(name)
            chosen = free[number * per_phase : (number + 1) * per_phase]
            try:
                await run_phase(stack, phase, clients, edge, api, chosen, args.interval)
            finally:
                stop.set()
                sent = await load
            seconds = time.monotonic() - started
            stats_after = await clients.ask({"stats": 1})
            cpu_after = cpu_by_process(stack, client_pid)
            metrics_after = await gateway_metrics(stack, scrape)
            produced = await booking_timestamps(
                stack.bootstrap_servers, since, {booking.slot for booking in phase.frames}
            )
            phase.stages = [
                booking_stages(b.committed_ns, produced[b.slot], b.arrivals, b.direct)
                for b in phase.frames
                if b.slot in produced
            ]
            delivered = stats_after["frames"] - stats_before["frames"]
            run = summary(phase, seconds, delivered, args.clients)
            run["load_average_before"] = [round(v, 2) for v in load_before]
            run["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
            run["cores_used"] = {
                part: round((cpu_after[part] - cpu_before.get(part, 0.0)) / seconds, 3)
                for part in cpu_after
            }
            run["load_client_timer_late_ms"] = stats_after["timer_late_ms"]
            run["segment_tap_drops"] = stats_after["segment_tap_drops"]
            run["gateways"] = [
                {
                    k: v
                    for k, v in gateway_timings(before, after).items()
                    if k.startswith(("fetch_delay", "write_delay", "loop_lag"))
                }
                | {
                    # holes in the broker's answers, fetched again / read past (Tansu)
                    name: gateway_counter(after, f"gateway_{name}")
                    - gateway_counter(before, f"gateway_{name}")
                    for name in ("fetch_holes", "fetch_holes_skipped")
                }
                for before, after in zip(metrics_before, metrics_after, strict=True)
            ]
            run["stages"] = stage_medians(phase.stages)
            ran.append((phase, run | {"background_records_sent": sent}))
            print(json.dumps(ran[-1][1]))
    finally:
        pin([*tansu, *services, client_pid], f"{args.cores[0]},{args.cores[1]}")
        await producer.stop()
        await clients.stop()
    return Repetition(
        workload={
            "clients": args.clients,
            "instructors": len(instructors),
            "offered_deliveries_per_s": args.rate,
            "background_records_per_s": round(records_per_s, 1),
            "bookings_per_phase": per_phase,
            "interval_s": args.interval,
            "publisher_env": args.publisher_env,
            "gateway_env": args.gateway_env,
            "edge_workers": args.edge_workers,
            "edge_upstream": args.edge_upstream,
            "segment_tap": opened["segment_tap"],
        },
        phases=ran,
    )


@dataclass
class Repetition:
    """One stack's run of every phase: each phase's frames and its figures."""

    workload: dict[str, Any]
    phases: list[tuple[Phase, dict[str, Any]]]


def combine(repetitions: list[Repetition]) -> dict[str, Any]:
    """The results over every repetition (each on a fresh stack): per phase, the latency of
    all their frames pooled (the p99 of 5 × 9,000 frames, not a median of five p99s), the
    stages of all their bookings, the medians of the per-run rates and CPU, and each run's
    own figures under ``runs``."""
    names = [phase.name for phase, _ in repetitions[0].phases]
    phases = []
    for index, name in enumerate(names):
        runs = [repetition.phases[index] for repetition in repetitions]
        phases.append(pooled_phase(name, runs))
    return {
        "benchmark": "e2e_latency",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "workload": repetitions[0].workload | {"repetitions": len(repetitions)},
        "note": "Loaded shared 2-core machine. commit = the slot's updatedAt (booking-api "
        "clock, same host); produced = the record's Kafka timestamp (read back after "
        "the phase); frame = the kernel's receive stamp of the segment that brought it to "
        "the lean load client (read = when that process read it). Each repetition runs every phase "
        "on a fresh stack; a phase's latency pools the frames of all repetitions. "
        "broker-core: Tansu alone on one core, everything else on the other; client-core: "
        "the load client alone on one core.",
        "phases": phases,
    }


def pooled_phase(name: str, runs: list[tuple[Phase, dict[str, Any]]]) -> dict[str, Any]:
    pool = Phase(name)
    for phase, _ in runs:
        pool.commit_to_frame_ns += phase.commit_to_frame_ns
        pool.commit_to_read_ns += phase.commit_to_read_ns
        pool.response_to_frame_ns += phase.response_to_frame_ns
        pool.stages += phase.stages
        pool.missed += phase.missed
        pool.missed_bookings += phase.missed_bookings
        pool.stamped_at_the_socket += phase.stamped_at_the_socket
        pool.booked += phase.booked
        pool.failed += phase.failed
    figures = [run for _, run in runs]
    out = summary(pool, 0.0, 0, figures[0]["clients"])
    rate = _median([r["deliveries_per_s_measured"] for r in figures])
    out["deliveries_per_s_measured"] = None if rate is None else round(rate)
    out["load_average_before"] = figures[0]["load_average_before"]
    out["load_average_after"] = figures[-1]["load_average_after"]
    out["cores_used"] = _medians([r["cores_used"] for r in figures], 3)
    out["gateways"] = [
        _medians([r["gateways"][n] for r in figures], 2) for n in range(len(figures[0]["gateways"]))
    ]
    out["stages"] = stage_medians(pool.stages)
    out["background_records_sent"] = sum(r["background_records_sent"] for r in figures)
    out["commit_to_frame_p99_ms_per_run"] = [r["commit_to_frame_ms"]["p99"] for r in figures]
    out["commit_to_read_p99_ms_per_run"] = [r["commit_to_read_ms"]["p99"] for r in figures]
    out["runs"] = figures
    return out


def _median(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _medians(parts: list[dict[str, Any]], digits: int) -> dict[str, Any]:
    """Per key, the median over the runs (keys of the first run)."""
    out = {}
    for key in parts[0]:
        value = _median([part.get(key) for part in parts])
        out[key] = None if value is None else round(value, digits)
    return out


def summary(phase: Phase, seconds: float, delivered: int, clients: int) -> dict[str, Any]:
    def quantiles(values: list[int]) -> dict[str, float | None]:
        return {
            "p50": _ms(percentile(values, 0.50)),
            "p99": _ms(percentile(values, 0.99)),
            "max": _ms(percentile(values, 1.0)),
        }

    return {
        "phase": phase.name,
        "bookings": phase.booked,
        "booking_failures": phase.failed,
        "frames_measured": len(phase.response_to_frame_ns),
        "frames_missed": phase.missed,
        "missed_bookings": phase.missed_bookings,
        "frames_stamped_at_the_socket": phase.stamped_at_the_socket,
        "commit_to_frame_ms": quantiles(phase.commit_to_frame_ns),
        "commit_to_read_ms": quantiles(phase.commit_to_read_ns),
        "response_to_frame_ms": quantiles(phase.response_to_frame_ns),
        "deliveries_per_s_measured": round(delivered / seconds) if seconds else None,
        "clients": clients,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=900)
    parser.add_argument(
        "--rate", type=int, default=40_000, help="background deliveries/s offered to the clients"
    )
    parser.add_argument(
        "--direct",
        type=int,
        default=4,
        help="clients per instructor straight on the gateways (the edge's share)",
    )
    parser.add_argument("--bookings", type=int, default=30, help="bookings per phase")
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="repetitions, each on a fresh stack; a phase's latency pools their frames",
    )
    parser.add_argument("--interval", type=float, default=0.3, help="seconds between bookings")
    parser.add_argument(
        "--phases", nargs="+", default=["shared", "broker-core"], choices=list(PHASES)
    )
    parser.add_argument(
        "--cores",
        type=int,
        nargs=2,
        default=[0, 1],
        metavar=("ALONE", "REST"),
        help="broker-core: Tansu on ALONE; client-core: the load client on ALONE",
    )
    parser.add_argument(
        "--publisher-env",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the change-publisher (e.g. PYTHONPATH of other code)",
    )
    parser.add_argument("--gateway-env", nargs="*", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--edge-workers",
        default="auto",
        help="nginx worker_processes of the edge: auto (one per core) as deploy/edge/nginx.conf "
        "in production; the demo stack runs 1",
    )
    parser.add_argument(
        "--edge-upstream",
        choices=("unix", "tcp"),
        default="unix",
        help="how the edge reaches the gateways: their Unix sockets, as make demo on one host "
        "(GATEWAY_UNIX_SOCKET), or their TCP ports, as across hosts",
    )
    add_results_dir_option(parser, RESULTS_DIR, "e2e_latency")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client-process"]:
        port, count, instructors, gateway_ports, direct = argv[1:6]
        uvloop.run(
            client_process(
                int(port),
                int(count),
                instructors.split(","),
                [int(p) for p in gateway_ports.split(",")],
                int(direct),
            )
        )
        return
    args = parse_args(argv)
    if args.repeat < 1:
        sys.exit("--repeat: at least 1")
    raise_open_file_limit()
    os.environ.update(EDGE_ENV)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    BenchStack.publisher_env = env_assignments(args.publisher_env)
    BenchStack.gateway_env = env_assignments(args.gateway_env)
    set_edge_workers(args.edge_workers)
    repetitions = []
    for number in range(args.repeat):
        print(f"repetition {number + 1} of {args.repeat}: a fresh stack", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="e2e-") as tmp:
            stack = BenchStack(
                Path(tmp), Ports.free(), log_level="WARNING", edge_upstream=args.edge_upstream
            )
            stack.start()
            try:
                repetitions.append(uvloop.run(main_async(args, stack)))
            finally:
                stack.stop()
    results = combine(repetitions)
    for phase in results["phases"]:
        c2f, stages = phase["commit_to_frame_ms"], phase["stages"]
        print(
            f"{phase['phase']}: commit -> frame p50 {c2f['p50']} ms, p99 {c2f['p99']} ms "
            f"(read by the load client p99 {phase['commit_to_read_ms']['p99']} ms) over "
            f"{phase['frames_measured']} frames ({phase['frames_missed']} missed, "
            f"{phase['frames_stamped_at_the_socket']} stamped at the socket) of "
            f"{len(phase['runs'])} run(s) (p99 per run "
            f"{', '.join(str(p) for p in phase['commit_to_frame_p99_ms_per_run'])}) at "
            f"{phase['deliveries_per_s_measured']} deliveries/s, load "
            f"{phase['load_average_before'][0]}→{phase['load_average_after'][0]}; stages "
            f"(median per booking) commit→produced {stages['commit_to_produced_ms']}, "
            f"produced→frame p50 {stages['produced_to_frame_p50_ms']} / p99 "
            f"{stages['produced_to_frame_p99_ms']} (straight from a gateway p50 "
            f"{stages['produced_to_direct_frame_p50_ms']}) ms; gateways' produced→fetched p50 "
            f"{', '.join(str(g.get('fetch_delay_ms_p50')) for g in phase['gateways'])} ms; "
            "load client "
            f"{phase['cores_used']['load-client']} cores"
        )
    written = record_results(args.results_dir, "e2e_latency", results)
    print(f"written to {written} (and appended to history.jsonl)")


if __name__ == "__main__":
    main()
