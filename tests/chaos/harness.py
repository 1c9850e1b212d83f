"""The chaos harness: a stack with a fault proxy before Kafka, a load driver, SSE clients
that record every frame, and the checks and figures of a scenario.

Everything runs on 127.0.0.1. Sizes come from environment variables so that ``make chaos``
runs the same scenarios longer and larger (see docs/reliability.md):

| variable | default | meaning |
|---|---|---|
| ``CHAOS_RATE`` | 200 | changes per second made by the load driver (2 per booking call) |
| ``CHAOS_MIN_RATE`` | 80 % of the rate | changes per second a scenario must have reached |
| ``CHAOS_CLIENTS`` | 200 | SSE clients per scenario |
| ``CHAOS_SECONDS`` | 20 | seconds of load per scenario |
| ``CHAOS_SOAK_SECONDS`` | ``CHAOS_SECONDS`` | seconds of load of the soak (no fault) |
| ``CHAOS_CHURN`` | 5000 | connects/disconnects of the churn scenario |
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import socket
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from scripts.devstack import DevStack, Process
from slotstream_contracts.topics import SCHEDULE_TOPIC
from slotstream_testkit.faultproxy import TcpFaultProxy
from slotstream_testkit.kafka import topic_partitions
from slotstream_testkit.net import free_port, raise_open_file_limit

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "test-output" / "chaos"


def knob(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


raise_open_file_limit()  # thousands of clients need thousands of descriptors
RATE = knob("CHAOS_RATE", 200)
CLIENTS = knob("CHAOS_CLIENTS", 200)
MIN_RATE = knob("CHAOS_MIN_RATE", RATE * 8 // 10)
SECONDS = knob("CHAOS_SECONDS", 20)
SOAK_SECONDS = knob("CHAOS_SOAK_SECONDS", SECONDS)
#: seconds of load before a scenario's fault
FAULT_AFTER = 5.0
CHURN = knob("CHAOS_CHURN", 5000)
PENDING_BYTES = 64 * 1024
#: frames a client counts on but does not keep (a soak would keep millions)
QUIET_EVENTS = frozenset({"heartbeat", "presence"})
#: TCP payload per segment on an Ethernet link (1500-byte MTU)
ETHERNET_MSS = 1460
UNLIMITED = "60000"  # nginx: a connection limit is below 65536
GATEWAY_PER_ADDRESS_LIMITS = (
    "GATEWAY_MAX_STREAMS_PER_IP",
    "GATEWAY_CONNECT_RATE_PER_IP",
    "GATEWAY_CONNECT_BURST_PER_IP",
)
EDGE_PER_ADDRESS_LIMITS = (
    "EDGE_STREAMS_PER_IP",
    "EDGE_REQUESTS_PER_SECOND",
    "EDGE_REQUEST_BURST",
    "EDGE_WRITES_PER_SECOND",
    "EDGE_WRITE_BURST",
)


# ---------------------------------------------------------------------- the stack


class ProxyThread:
    """A ``TcpFaultProxy`` on its own event loop thread: the stack starts synchronously
    (it would block the test's loop) and its services reach Kafka only through it."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._proxy = TcpFaultProxy(self.port, "127.0.0.1", target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._proxy.start(), self._loop).result(10)

    def cut(self) -> None:
        self._loop.call_soon_threadsafe(self._proxy.cut)

    def restore(self) -> None:
        self._loop.call_soon_threadsafe(self._proxy.restore)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._proxy.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class ChaosStack(DevStack):
    """The demo stack whose publisher and gateways reach Tansu through a fault proxy:
    Tansu listens on its own port and advertises the proxy's, so every connection a
    client opens after the metadata request goes through the proxy too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.proxy = ProxyThread(self.ports.kafka)
        # Processes die with the *thread* that started them (PR_SET_PDEATHSIG): restarts
        # run on this one thread, which lives as long as the stack, never on a pool
        # thread of a test's event loop (gone, with its children, when the test ends).
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chaos-spawn")

    def _spawn(self, process: Process, timeout: float = 30.0) -> Process:
        if process.name.startswith("push-gateway"):
            # A client is cut off once this much output waits for it: smaller than the
            # default (256 KiB) so that a stalled client is cut within seconds at test rates.
            process.env["GATEWAY_MAX_PENDING_BYTES"] = str(PENDING_BYTES)
            # Every client of the suite is 127.0.0.1: lift the per-address limits.
            process.env |= dict.fromkeys(GATEWAY_PER_ADDRESS_LIMITS, UNLIMITED)
        return super()._spawn(process, timeout)

    def edge_variables(self) -> dict[str, str]:
        """The edge's per-address limits lifted, as for the gateways."""
        return super().edge_variables() | dict.fromkeys(EDGE_PER_ADDRESS_LIMITS, UNLIMITED)

    async def in_spawner(self, action: Callable[[], object]) -> None:
        """Run a blocking start or restart without blocking the event loop."""
        await asyncio.get_running_loop().run_in_executor(self._spawner, action)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    def _start_kafka(self) -> None:
        self.proxy.start()  # Tansu listens on ports.kafka, advertises bootstrap_servers
        super()._start_kafka()

    def stop(self) -> None:
        super().stop()
        self._spawner.shutdown()
        with contextlib.suppress(Exception):
            self.proxy.stop()

    def pid(self, name: str) -> int | None:
        process = self.processes.get(name)
        if process is None or process.popen is None or process.popen.poll() is not None:
            return None
        return process.popen.pid

    def publisher_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.publisher}"


async def answers(url: str, within: float) -> float:
    """Seconds until ``url`` answers 200 (raises after ``within``)."""
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.monotonic() - started < within:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return time.monotonic() - started
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not answer 200 within {within}s")


async def crash_and_recover(stack: ChaosStack, name: str, health_url: str) -> float:
    """kill -9 ``name`` and wait until the stack's supervisor restarted it and it answers
    again; returns the seconds it was gone."""
    old = stack.kill(name)
    killed = time.monotonic()
    await asyncio.to_thread(stack.wait_restarted, name, old, 60.0)
    await answers(health_url, 30.0)
    return time.monotonic() - killed


# ---------------------------------------------------------------------- load


@dataclass
class TrackedSlot:
    id: str
    instructor: str
    status: str
    version: int
    booking: str | None
    student: str | None = None
    unknown: bool = False


class HttpConnection:
    """One keep-alive HTTP/1.1 connection that sends prepared request bytes and reads one
    response (``Content-Length`` or chunked). The driver used httpx: at 100 calls per
    second its per-request work (a pool that polls every pooled connection, the async
    library detection on each call) took most of the test process's CPU, which the 200
    SSE clients of the same event loop need, and the driver stalled near 150 changes/s."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.reusable = True

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.reusable = False  # until the whole response was read
        self._writer.write(raw)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        chunked, keep_alive = False, True
        for line in head.lower().split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                keep_alive = b"close" not in value
        if chunked:
            body = b"".join([chunk async for chunk in _body(self._reader, chunked=True)])
            await self._reader.readuntil(b"\r\n")  # the empty trailer
        else:
            body = await self._reader.readexactly(length) if length else b""
        self.reusable = keep_alive
        return status, body

    def close(self) -> None:
        self._writer.transport.abort()


class HttpPool:
    """Up to ``size`` keep-alive connections to one address; a connection that failed or
    was not read to its end is dropped, the next request opens a new one."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self._host = host
        self._port = port
        self._idle: list[HttpConnection] = []
        self._slots = asyncio.Semaphore(size)

    async def request(
        self, method: str, path: str, token: str, body: bytes = b""
    ) -> tuple[int, bytes]:
        raw = (
            f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        async with self._slots:
            connection = (
                self._idle.pop()
                if self._idle
                else await HttpConnection.open(self._host, self._port)
            )
            try:
                return await asyncio.wait_for(connection.request(raw), 10.0)
            finally:
                if connection.reusable:
                    self._idle.append(connection)
                else:
                    connection.close()

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()


class LoadDriver:
    """Books and cancels tracked slots through the edge at ``rate`` changes per second
    (a booking or a cancellation changes the slot and the booking: two changes). One call
    per slot at a time, so each slot's versions follow the calls and the time a version
    was written is known (for delivery latency). Calls are started on a schedule (so many
    by now, since the start), not one per timer tick: a tick the busy event loop served
    late does not lose its call, the next one makes up for it."""

    def __init__(
        self,
        stack: ChaosStack,
        slots: list[TrackedSlot],
        rate: int,
        students: list[str],
        instructors: dict[str, str],
    ) -> None:
        self._stack = stack
        self.slots = slots
        self._rate = rate
        self._students = students
        #: instructor id -> token: cancels the bookings left by an earlier scenario
        self._instructors = instructors
        #: (slot id, version) → monotonic time the API answered the call that wrote it
        self.written: dict[tuple[str, int], float] = {}
        #: (slot id, version) → monotonic time that call was sent
        self.sent: dict[tuple[str, int], float] = {}
        self.calls = 0
        self.changes = 0
        self.failures: list[str] = []
        #: seconds the load ran; calls due then but not started (no slot was free)
        self.seconds = 0.0
        self.behind = 0
        self._free = collections.deque(slots)

    @property
    def achieved_rate(self) -> float:
        """Changes per second made by the calls started while the load ran."""
        return self.changes / self.seconds if self.seconds else 0.0

    async def run(self, seconds: float) -> None:
        calls_per_second = self._rate / 2
        in_flight = max(64, int(calls_per_second))  # the API answers within a second
        pool = HttpPool("127.0.0.1", self._stack.ports.edge, in_flight)
        tasks: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        launched = 0
        try:
            while (now := time.monotonic()) < started + seconds:
                due = int((now - started) * calls_per_second) - launched
                while due > 0 and self._free and len(tasks) < in_flight:
                    task = asyncio.create_task(self._change(pool, self._free.popleft()))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    launched += 1
                    due -= 1
                await asyncio.sleep(0.005)
            self.seconds = seconds
            self.behind = int(seconds * calls_per_second) - launched
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            pool.close()

    async def _change(self, pool: HttpPool, slot: TrackedSlot) -> None:
        sent = time.monotonic()
        student = slot.student or random.choice(self._students)
        try:
            if slot.status == "booked" and slot.booking is not None:
                token = slot.student or self._instructors[slot.instructor]
                status, body = await pool.request("DELETE", f"/api/bookings/{slot.booking}", token)
                ok = status == 200
                if ok:
                    slot.status, slot.booking, slot.student = "available", None, None
            else:
                request = orjson.dumps({"slotId": slot.id})
                status, body = await pool.request("POST", "/api/bookings", student, request)
                ok = status == 201
                if ok:
                    slot.status, slot.booking = "booked", orjson.loads(body)["id"]
                    slot.student = student
            self.calls += 1
            if ok:
                slot.version += 1
                self.changes += 2
                self.written[(slot.id, slot.version)] = time.monotonic()
                self.sent[(slot.id, slot.version)] = sent
            else:
                slot.unknown = True
                self.failures.append(f"{status} {body[:200]!r}")
        except (OSError, EOFError, ValueError, TimeoutError) as exc:
            slot.unknown = True  # applied or not: the final state check reads the API
            self.failures.append(repr(exc))
        finally:
            if not slot.unknown:
                self._free.append(slot)


async def schedule(stack: ChaosStack, instructor: str) -> dict[str, tuple[str, int, str | None]]:
    """The API's current schedule of an instructor: slot id → (status, version, booking)."""
    async with httpx.AsyncClient(base_url=stack.booking_api_url, timeout=10.0) as api:
        response = await api.get(f"/api/instructors/{instructor}/schedule")
        response.raise_for_status()
    return {
        s["id"]: (s["status"], s["version"], s.get("bookingId")) for s in response.json()["slots"]
    }


async def tracked_slots(stack: ChaosStack) -> list[TrackedSlot]:
    """Every slot of the schedules, free or booked (an earlier scenario's bookings are
    cancelled by the instructor): the more slots, the more calls in flight (one per slot),
    the less the rate depends on each call's latency."""
    return [
        TrackedSlot(sid, instructor, status, version, booking)
        for instructor in instructor_ids(stack)
        for sid, (status, version, booking) in (await schedule(stack, instructor)).items()
        if status == "available" or (status == "booked" and booking is not None)
    ]


def instructor_ids(stack: ChaosStack) -> list[str]:
    return [i["id"] for i in stack.instructors] or [
        u.id for u in stack.users if u.role == "instructor"
    ]


# ---------------------------------------------------------------------- SSE clients


@dataclass
class Frame:
    at: float
    event: str
    id: str | None
    data: bytes


@dataclass
class Endpoint:
    host: str
    port: int
    path: str


class SseClient:
    """One EventSource-like client over a raw socket: reads every frame, follows
    ``Last-Event-ID`` on reconnect, and moves to its next endpoint when one fails (a
    client of a dead gateway reconnects to the other). ``read_delay`` slows its reads;
    ``stall`` stops them until ``unstall()``.

    A client that keeps a ``view`` folds each ``slot`` event into it as it arrives (what
    it holds, the CloudEvent ids it saw, when each version arrived when ``timed``) and
    keeps no slot frame: a 10-minute soak of 2,000 clients receives tens of millions of
    them, too many to keep. ``frames`` then holds the other frames (snapshots, byes),
    ``recent`` the last few of any kind."""

    def __init__(
        self, name: str, channel: str, endpoints: list[Endpoint], *, view: bool = True
    ) -> None:
        self.name = name
        self.channel = channel
        self.endpoints = endpoints
        self.frames: list[Frame] = []
        self.recent: collections.deque[Frame] = collections.deque(maxlen=3)
        self.keeps_view = view
        #: record (slot id, version, arrival) of every slot event (delivery latency)
        self.timed = True
        self.timings: list[tuple[str, int, float]] = []
        self.held: dict[str, tuple[str, int]] = {}
        self.baseline: dict[str, int] | None = None
        self.seen: set[str] = set()
        self.duplicates = self.regressions = self.snapshots = 0
        self.last_id: str | None = None
        self.connects = 0
        #: set when the server ended a response (its end of the stream read, not a reset)
        self.ended_by_server = asyncio.Event()
        self.read_delay = 0.0
        self.receive_buffer: int | None = None
        self._stalled = asyncio.Event()
        self._stalled.set()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        #: where the client is: connecting, waiting for the response head, streaming, idle
        self.state = "idle"
        self.errors: list[str] = []

    @property
    def running(self) -> str:
        """ "yes", or how the client's task ended (a bug of the harness, not of the stack)."""
        if self._task is None or not self._task.done():
            return "yes"
        if self._task.cancelled():
            return "cancelled"
        return repr(self._task.exception())

    def stall(self) -> None:
        self._stalled.clear()

    def unstall(self) -> None:
        self._stalled.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            endpoint = self.endpoints[index % len(self.endpoints)]
            healthy = False
            try:
                healthy = await self._session(endpoint)
            except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as exc:
                self.errors.append(repr(exc)[:200])
            if not healthy:
                index += 1
            await asyncio.sleep(0.5 + random.random() * 0.5)  # about the retry hint

    async def _open(self, endpoint: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
            # An Ethernet-sized segment, as a client across a network has. With loopback's
            # 64 KiB segments the server's kernel send buffer grew to hold a stalled
            # client's backlog for more than 14 s at 200 changes/s before any of it
            # counted against the gateway's own bound (tcp_wmem allows up to 4 MiB).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, ETHERNET_MSS)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (endpoint.host, endpoint.port))
        except OSError:
            sock.close()
            raise
        # The reader buffers up to twice its limit before it stops reading the socket: a
        # client with a small window must have a small limit too, or it never pushes back.
        limit = 1 << 20 if self.receive_buffer is None else 16 * 1024
        return await asyncio.open_connection(sock=sock, limit=limit)

    async def _session(self, endpoint: Endpoint) -> bool:
        """One connection; True when it delivered a response (a clean end)."""
        self.state = f"connecting to {endpoint.port}"
        reader, writer = await self._open(endpoint)
        try:
            self.state = f"waiting for the head from {endpoint.port}"
            resume = f"Last-Event-ID: {self.last_id}\r\n" if self.last_id else ""
            writer.write(
                f"GET {endpoint.path} HTTP/1.1\r\nHost: {endpoint.host}\r\n"
                f"Accept: text/event-stream\r\n{resume}\r\n".encode()
            )
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if status != 200:
                body = await asyncio.wait_for(reader.read(300), 1.0)
                self.errors.append(f"{endpoint.port} answered {status}: {body[:300]!r}")
                return False
            self.connects += 1
            self.state = f"streaming from {endpoint.port}"
            chunked = b"transfer-encoding: chunked" in head.lower()
            buffer = b""
            async for chunk in _body(reader, chunked):
                if not self._stalled.is_set():
                    await self._stalled.wait()
                if self.read_delay:
                    await asyncio.sleep(self.read_delay)
                buffer += chunk
                *frames, buffer = buffer.split(b"\n\n")
                now = time.monotonic()
                for raw in frames:
                    self._frame(now, raw)
            self.ended_by_server.set()
            return True
        finally:
            self.state = "idle"
            writer.transport.abort()

    def _frame(self, now: float, raw: bytes) -> None:
        event, ident, data = "message", None, []
        for line in raw.split(b"\n"):
            if line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            if name == b"event":
                event = value.decode()
            elif name == b"id":
                ident = value.decode()
            elif name == b"data":
                data.append(value)
        if not data and event == "message":
            return
        if ident:
            self.last_id = ident
        frame = Frame(now, event, ident, b"\n".join(data))
        self.recent.append(frame)
        if not self.keeps_view:
            self.frames.append(frame)
        elif event == "slot":
            self._slot_event(frame)
        elif event == "snapshot":
            self.frames.append(frame)
            self._snapshot(frame)
        elif event not in QUIET_EVENTS:
            self.frames.append(frame)

    # ------------------------------------------------------------------ the client's view

    def _snapshot(self, frame: Frame) -> None:
        slots = orjson.loads(frame.data)["schedule"]["slots"]
        self.snapshots += 1
        if self.baseline is None:
            self.baseline = {s["id"]: s["version"] for s in slots}
        for slot in slots:
            self._hold(sys.intern(slot["id"]), slot["status"], slot["version"])

    def _slot_event(self, frame: Frame) -> None:
        event = orjson.loads(frame.data)
        # One string per id and slot, shared by every client's sets (memory of a soak).
        event_id = sys.intern(event["id"])
        if event_id in self.seen:
            self.duplicates += 1
            return
        self.seen.add(event_id)
        data = event["data"]
        slot_id = sys.intern(data["id"])
        self._hold(slot_id, data["status"], data["version"])
        if self.timed:
            self.timings.append((slot_id, data["version"], frame.at))

    def _hold(self, slot_id: str, status: str, version: int) -> None:
        """A slot changes only to a newer version; an older one is a regression."""
        current = self.held.get(slot_id)
        if current is not None and version < current[1]:
            self.regressions += 1
        if current is None or version > current[1]:
            self.held[slot_id] = (sys.intern(status), version)

    def view(self) -> tuple[dict[str, tuple[str, int]], dict[str, Any]]:
        """Slot id → (status, version) as the client holds it, and what was seen on the
        way."""
        return self.held, {
            "baseline": self.baseline or {},
            "seen": self.seen,
            "duplicates": self.duplicates,
            "regressions": self.regressions,
            "snapshots": self.snapshots,
        }


async def _body(reader: asyncio.StreamReader, chunked: bool) -> Any:
    """The response body as it arrives (chunked transfer encoding undone)."""
    while True:
        if chunked:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                return
            chunk = await reader.readexactly(size + 2)
            yield chunk[:-2]
        else:
            chunk = await reader.read(65536)
            if not chunk:
                return
            yield chunk


async def counter(url: str, name: str) -> float:
    """A counter's value from a Prometheus text page (0 when absent)."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        text = (await client.get(url)).text
    for line in text.splitlines():
        if line.startswith((f"{name} ", f"{name}_total ")):
            return float(line.split()[-1])
    return 0.0


def endpoints_for(stack: ChaosStack, instructor: str, kind: str) -> list[Endpoint]:
    channel = f"instructors/{instructor}/schedule"
    paths = {
        "book-now": f"/api/book-now/schedule-updates?instructorId={quote(instructor)}",
        "events": f"/v1/events?channel={quote(channel, safe='')}",
    }
    edge = Endpoint("127.0.0.1", stack.ports.edge, "")
    gw1 = Endpoint("127.0.0.1", stack.ports.gateway_1, "")
    gw2 = Endpoint("127.0.0.1", stack.ports.gateway_2, "")
    endpoint_kind, path_kind = kind.split(":")
    order = {"edge": [edge], "gw1": [gw1, gw2], "gw2": [gw2, gw1]}[endpoint_kind]
    return [Endpoint(e.host, e.port, paths[path_kind]) for e in order]


KINDS = (
    "edge:book-now",
    "edge:events",
    "gw1:book-now",
    "gw1:events",
    "gw2:book-now",
    "gw2:events",
)


#: clients whose every delivery is timed (p99): all of the default 200, a sample of more
TIMED_CLIENTS = 200


def make_clients(stack: ChaosStack, count: int) -> list[SseClient]:
    """``count`` clients over every kind in turn; of each run of ``len(KINDS)`` (one of
    every kind), one in ``count // TIMED_CLIENTS`` is timed."""
    instructors = instructor_ids(stack)
    every = max(1, count // TIMED_CLIENTS)
    clients = []
    for n in range(count):
        instructor = instructors[n % len(instructors)]
        kind = KINDS[n % len(KINDS)]
        client = SseClient(
            f"{kind}#{n}",
            f"instructors/{instructor}/schedule",
            endpoints_for(stack, instructor, kind),
        )
        client.timed = (n // len(KINDS)) % every == 0
        clients.append(client)
    return clients


async def connected(clients: Iterable[SseClient], within: float = 30.0) -> None:
    """Wait until every client got its first snapshot."""
    deadline = time.monotonic() + within
    pending = list(clients)
    while pending:
        pending = [c for c in pending if c.snapshots == 0]
        if pending and time.monotonic() > deadline:
            raise AssertionError(f"{len(pending)} clients got no snapshot, e.g. {pending[0].name}")
        await asyncio.sleep(0.2)


# ---------------------------------------------------------------------- Kafka


async def end_offsets(bootstrap: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = topic_partitions(consumer, SCHEDULE_TOPIC)
        ends = await consumer.end_offsets(partitions)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


@dataclass
class Produced:
    records: int
    #: CloudEvent id → (instructor, slot id, version) of the slot events
    slot_events: dict[str, tuple[str, str, int]]


async def produced_since(bootstrap: str, start: dict[int, int]) -> Produced:
    """The slot events written to the schedule topic after ``start`` offsets."""
    end = await end_offsets(bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    records = 0
    events: dict[str, tuple[str, str, int]] = {}
    try:
        partitions = [TopicPartition(SCHEDULE_TOPIC, p) for p in end]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, start.get(tp.partition, 0))
        remaining = {tp for tp in partitions if end[tp.partition] > start.get(tp.partition, 0)}
        deadline = time.monotonic() + 60
        while remaining:
            if time.monotonic() > deadline:
                positions = {tp.partition: await consumer.position(tp) for tp in remaining}
                raise AssertionError(f"Kafka read stopped at {positions}, end {end}")
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, batch_records in batch.items():
                for record in batch_records:
                    if record.offset >= end[tp.partition]:
                        continue
                    records += 1
                    value = orjson.loads(record.value)
                    if str(value.get("type", "")).startswith("slot."):
                        data = value["data"]
                        events[value["id"]] = (
                            data["instructorId"],
                            data["id"],
                            data["version"],
                        )
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp.partition]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return Produced(records, events)


# ---------------------------------------------------------------------- checks and figures


class Marks:
    """When a fault began and ended (monotonic): a crash is a moment, a cut lasts."""

    def __init__(self) -> None:
        self.start_at: float | None = None
        self.end_at: float | None = None

    def start(self) -> None:
        self.start_at = time.monotonic()

    def end(self) -> None:
        self.end_at = time.monotonic()
        if self.start_at is None:
            self.start_at = self.end_at


@dataclass
class Result:
    scenario: str
    size: str
    changes: int
    events_produced: int
    delivered: int
    duplicated: int
    lost: int
    regressions: int
    mismatched_views: int
    resync_snapshots: int
    p99_before_ms: float | None
    p99_during_ms: float | None
    recovery_s: float | None
    seconds: float
    #: changes per second the API completed while the load ran (0: no load)
    rate: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f}"

        recovery = "-" if self.recovery_s is None else f"{self.recovery_s:.1f}"
        return (
            f"{self.scenario:<22} {self.rate:>6.0f} {self.changes:>7} {self.events_produced:>7} "
            f"{self.delivered:>9} {self.duplicated:>6} {self.lost:>4} "
            f"{ms(self.p99_before_ms):>7} {ms(self.p99_during_ms):>7} {recovery:>7}"
        )


HEADER = (
    f"{'scenario':<22} {'rate/s':>6} {'changes':>7} {'events':>7} {'delivered':>9} "
    f"{'dup':>6} {'lost':>4} {'p99 pre':>7} {'p99 dur':>7} {'recov s':>7}"
)


def percentile(values: list[float], q: float) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def settle(
    stack: ChaosStack, clients: list[SseClient], within: float = 30.0
) -> dict[str, dict[str, tuple[str, int, str | None]]]:
    """Wait until every client's view equals the API's final state (or ``within``
    passed); returns the final state by instructor."""
    final = {i: await schedule(stack, i) for i in instructor_ids(stack)}
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if all(_mismatches(c, final) == 0 for c in clients):
            break
        await asyncio.sleep(1.0)
    return final


def _mismatches(client: SseClient, final: dict[str, dict[str, tuple[str, int, str | None]]]) -> int:
    instructor = client.channel.split("/")[1]
    held, _ = client.view()
    return sum(
        1
        for sid, (status, version, _booking) in final[instructor].items()
        if held.get(sid) != (status, version)
    )


async def evaluate(
    name: str,
    stack: ChaosStack,
    clients: list[SseClient],
    driver: LoadDriver,
    start_offsets: dict[int, int],
    marks: Marks,
    started: float,
    extra: dict[str, Any] | None = None,
) -> Result:
    """Compare every client with the API and with what Kafka holds; the figures."""
    final = await settle(stack, clients)
    produced = await produced_since(stack.bootstrap_servers, start_offsets)
    lost = delivered = duplicated = regressions = mismatched = resyncs = 0
    before: list[float] = []
    during: list[float] = []
    backlog_done: list[float] = []
    by_kind: dict[str, int] = {}
    wrong_example: dict[str, Any] = {}
    lost_by_route = {"edge": 0, "direct": 0}
    fault_at = marks.start_at
    lost_examples: list[str] = []
    for client in clients:
        instructor = client.channel.split("/")[1]
        held, seen = client.view()
        kind = client.name.split("#")[0]
        wrong = _mismatches(client, final)
        mismatched += wrong
        if wrong:
            by_kind[kind] = by_kind.get(kind, 0) + 1
            if not wrong_example:
                now = time.monotonic()
                wrong_example = {
                    "client": client.name,
                    "slots_wrong": wrong,
                    "connects": client.connects,
                    "slot_events": len(client.seen),
                    "last_frame_age_s": round(now - client.recent[-1].at, 1),
                    "last_events": [(f.event, f.id) for f in client.recent],
                    "state": client.state,
                    "errors": client.errors[-3:],
                    "running": client.running,
                }
        delivered += len(seen["seen"])
        duplicated += seen["duplicates"]
        regressions += seen["regressions"]
        resyncs += max(0, seen["snapshots"] - 1)
        baseline: dict[str, int] = seen["baseline"]
        for event_id, (owner, slot_id, version) in produced.slot_events.items():
            if owner != instructor or version <= baseline.get(slot_id, 0):
                continue
            if event_id not in seen["seen"]:
                lost += 1
                route = "edge" if client.name.startswith("edge") else "direct"
                lost_by_route[route] += 1
                if len(lost_examples) < 5:
                    lost_examples.append(f"{client.name}: {slot_id} v{version}")
        for slot_id, version, at in client.timings:
            written = driver.written.get((slot_id, version))
            if written is None:
                continue
            latency = (at - written) * 1000
            if fault_at is None or written < fault_at:
                before.append(latency)
            else:
                during.append(latency)
                sent = driver.sent[(slot_id, version)]
                if marks.end_at is not None and marks.end_at <= sent <= marks.end_at + 1.0:
                    backlog_done.append(at - marks.end_at)
    info = {
        "lost_examples": lost_examples,
        "load_failures": driver.failures[:10],
        "load_failure_count": len(driver.failures),
        "load_calls_behind": driver.behind,
        "kafka_records": produced.records,
        "clients": len(clients),
        "reconnects": sum(max(0, c.connects - 1) for c in clients),
        "clients_with_wrong_view_by_kind": by_kind,
        "lost_by_route": lost_by_route,
        "wrong_view_example": wrong_example,
    }
    result = Result(
        scenario=name,
        size=f"{len(clients)} clients, {RATE} changes/s, {driver.seconds:.0f}s",
        changes=driver.changes,
        events_produced=len(produced.slot_events),
        delivered=delivered,
        duplicated=duplicated,
        lost=lost,
        regressions=regressions,
        mismatched_views=mismatched,
        resync_snapshots=resyncs,
        p99_before_ms=percentile(before, 99),
        p99_during_ms=percentile(during, 99),
        recovery_s=max(backlog_done) if backlog_done else None,
        seconds=round(time.monotonic() - started, 1),
        rate=round(driver.achieved_rate, 1),
        extra=info | (extra or {}),
    )
    report(result)
    return result


def report(result: Result) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / f"{result.scenario}.json").write_text(json.dumps(asdict(result), indent=2))
    print(f"\n{HEADER}\n{result.row()}\n{json.dumps(result.extra)[:2000]}")  # noqa: T201


def process_figures(pid: int) -> dict[str, int]:
    """Open file descriptors, threads and resident memory (KiB) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    if "VmRSS" not in status:
        raise AssertionError(f"process {pid} is gone: {status.splitlines()[:3]}")
    values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(values["Threads"].strip()),
        "rss_kib": int(values["VmRSS"].split()[0]),
    }


async def run_scenario(
    name: str,
    stack: ChaosStack,
    fault: Callable[[Marks], Awaitable[dict[str, Any] | None]],
    *,
    clients: list[SseClient] | None = None,
    fault_after: float = FAULT_AFTER,
    seconds: float = SECONDS,
) -> Result:
    """Clients connect, load runs ``seconds``, ``fault`` is injected ``fault_after``
    seconds in (it marks when it began and ended, and returns extra figures); then the
    checks. Recovery: from the fault's end until every client had every change requested
    in the second after it (None when the load had ended by then)."""
    started = time.monotonic()
    start_offsets = await end_offsets(stack.bootstrap_servers)
    clients = clients if clients is not None else make_clients(stack, CLIENTS)
    for client in clients:
        client.start()
    try:
        await connected(clients)
        slots = await tracked_slots(stack)
        # A student holds at most 20 active bookings: enough students for every slot, new
        # ones for each scenario (the bookings of the previous scenario's stay active).
        students = [
            stack.mint(f"chaos-{name}-student-{n}", "student") for n in range(1 + len(slots) // 5)
        ]
        instructors = {i: stack.mint(i, "instructor") for i in instructor_ids(stack)}
        driver = LoadDriver(stack, slots, RATE, students, instructors)
        load = asyncio.create_task(driver.run(seconds))
        await asyncio.sleep(fault_after)
        marks = Marks()
        extra = await fault(marks)
        if marks.end_at is None:
            marks.end()
        await load
        return await evaluate(name, stack, clients, driver, start_offsets, marks, started, extra)
    finally:
        await asyncio.gather(*(c.stop() for c in clients))
