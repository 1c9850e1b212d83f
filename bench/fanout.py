"""SSE fan-out benchmark: the push-gateway against Nchan and Pushpin, same workload; also
the push-gateway over WebSocket (``gateway-ws``: ``/v1/ws``, one subscribe op each).

N SSE connections spread over C channels (plus idle connections up to --idle-connections),
events offered at R deliveries/s for D seconds. The server runs pinned to one core, this
process (load client, publisher, Tansu, fake origins) to the other. Per server: deliveries/s,
latency p50/p99 (publish -> client, from a timestamp inside each event), loss, RSS per
connection, server CPU per delivery (from /proc/<pid>/stat of the server's process tree),
and this process's own CPU, so a saturated client is not mistaken for a slow server.
For the gateway, where its latency goes: its own histograms from /metrics (Kafka timestamp
-> fetched / written, fan-out steps, event-loop lag, GC pauses; before/after the publishing
window), the publish -> broker-ack time, and a bare Kafka consumer on the server core beside
it (--probe-consumer, on by default): what any consumer gets from the broker in that run.
Also: the gateway's ingest rate for events nobody subscribes to (a backlog drained from
Tansu). Results: bench/results/fanout.json (latest) and bench/results/history.jsonl.

    .venv/bin/python bench/fanout.py                       # default, a few minutes
    .venv/bin/python bench/fanout.py --servers gateway --connections 2000 --rate 20000
    .venv/bin/python bench/fanout.py --servers gateway nchan --rate 40000 --duration 6
    .venv/bin/python bench/fanout.py --gateway-env GATEWAY_KAFKA__FETCH_MAX_WAIT_MS=2
    .venv/bin/python bench/fanout.py --fixed-cost --connections 1000 --channels 100

``--fixed-cost``: the gateway's CPU per wall second with N idle streams, first with no
records at all, then with records at ``--unsubscribed-rate``/s to a key nobody subscribes
to (what a gateway pays before it writes a single frame), recorded as ``fanout_fixed_cost``.

Figures are noisy when other work shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from slotstream_testkit.benchkit import (
    StreamCount,
    add_results_dir_option,
    backlog_producer,
    env_assignments,
    latency_cdf_ms,
    record_results,
    sizes_summary,
    tally,
)
from slotstream_testkit.kafka import TansuBroker, create_topics, topic_partitions
from slotstream_testkit.net import free_port, raise_open_file_limit, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
NCHAN_MODULE = Path("/usr/share/nginx/modules/ngx_nchan_module.so")
IN_FLIGHT_OPENS = 500
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# -- process accounting ------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    """Every process's children, from one walk of ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _descendants(root: int, children: dict[int, list[int]] | None = None) -> list[int]:
    children = _children() if children is None else children
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def tree_cpu_seconds(root: int, children: dict[int, list[int]] | None = None) -> float:
    total = 0
    for pid in _descendants(root, children):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def tree_cpu_seconds_by_name(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process tree, from one walk of ``/proc`` (a walk
    per tree blocked the caller's event loop ~3 ms each on a busy machine)."""
    children = _children()
    return {name: tree_cpu_seconds(pid, children) for name, pid in roots.items()}


def tree_rss_bytes(root: int) -> int:
    total = 0
    for pid in _descendants(root):
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    return total


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def spawn(
    command: list[str], core: str, log: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a server pinned to ``core`` (a CPU list: "0", "0,1") in its own session
    (stopped by PID later)."""
    output = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        ["taskset", "-c", core, *command],
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


# -- the load client ------------------------------------------------------------------------
class SseClient(asyncio.Protocol):
    """Counts the events of one stream by unique ``(channel, seq)`` inside each payload
    (duplicates apart); sampled connections also turn the publish timestamps into
    latencies. Kept lean: the client must not be the bottleneck."""

    __slots__ = ("transport", "channel", "counted", "sample", "opened", "latencies", "waiter")

    def __init__(self, channel: bytes, sample: bool, latencies: list[int]) -> None:
        self.transport: asyncio.Transport | None = None
        self.channel = channel
        self.counted = StreamCount()
        self.sample = sample
        self.opened = False
        self.latencies = latencies
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.opened:
            self.opened = b" 200 " in data[:20]
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)
        if self.sample:
            self.counted.feed(data, time.time_ns(), self.latencies)
        else:
            self.counted.feed(data)


WS_HANDSHAKE = (
    b"GET /v1/ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def ws_client_frame(payload: bytes) -> bytes:
    """A masked client text frame (mask key 0: valid, and the payload stays readable)."""
    assert len(payload) < 126
    return bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload


class WsClient(SseClient):
    """The same counting over the gateway's WebSocket: handshake, then one subscribe op;
    "open" once the snapshot arrived (as an SSE stream's 200 comes with its snapshot).
    Server frames are parsed (unmasked, RFC 6455) and each text message is counted as an
    SSE frame is; pings are answered as a browser does (else an idle socket is closed)."""

    __slots__ = ("instructor", "upgraded", "pending")

    def __init__(self, channel: bytes, sample: bool, latencies: list[int], instructor: str):
        super().__init__(channel, sample, latencies)
        self.instructor = instructor
        self.upgraded = False
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            if b" 101 " in data[:20] and self.transport is not None:
                self.upgraded = True
                op = (
                    b'{"op":"subscribe","channel":"instructors/'
                    + self.instructor.encode()
                    + b'/schedule"}'
                )
                self.transport.write(ws_client_frame(op))
            return
        messages, self.pending = ws_messages(self.pending + data)
        for opcode, _ in messages:
            if opcode == WS_PING and self.transport is not None:
                self.transport.write(b"\x8a\x80\0\0\0\0")
        texts = [body for opcode, body in messages if opcode == WS_TEXT]
        if not texts:
            return
        if not self.opened and any(b'"snapshot"' in text for text in texts):
            self.opened = True
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)
        joined = b"\n\n".join(texts) + b"\n\n"
        if self.sample:
            self.counted.feed(joined, time.time_ns(), self.latencies)
        else:
            self.counted.feed(joined)


WS_TEXT = 0x1
WS_PING = 0x9


def ws_messages(buffer: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Complete server frames ``(opcode, payload)`` in ``buffer``, and the unparsed rest."""
    found: list[tuple[int, bytes]] = []
    position = 0
    while len(buffer) - position >= 2:
        length, head = buffer[position + 1] & 0x7F, 2
        if length == 126:
            length, head = int.from_bytes(buffer[position + 2 : position + 4], "big"), 4
        elif length == 127:
            length, head = int.from_bytes(buffer[position + 2 : position + 10], "big"), 10
        if len(buffer) - position < head + length:
            break
        start = position + head
        found.append((buffer[position] & 0x0F, buffer[start : start + length]))
        position = start + length
    return found, buffer[position:]


@dataclass
class Load:
    clients: list[SseClient] = field(default_factory=list)
    latencies: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def received(self) -> int:
        return sum(len(c.counted.seen) for c in self.clients)

    def reset_counts(self) -> None:
        for client in self.clients:
            client.counted = StreamCount()

    def close(self) -> None:
        for client in self.clients:
            if client.transport is not None:
                client.transport.abort()


async def open_streams(
    port: int,
    paths: list[tuple[bytes, str]],
    latencies: list[int],
    sample_every: int,
    load: Load,
    websocket: bool = False,
) -> int:
    """Open one SSE request per path (or, ``websocket``, one WebSocket subscribed to the
    channel named by the path); returns how many got a 200 (or their snapshot)."""
    loop = asyncio.get_running_loop()
    # at most this many requests waiting for their response: browsers arrive over time,
    # and a burst beyond the listen backlog would measure SYN retries, not the server
    semaphore = asyncio.Semaphore(IN_FLIGHT_OPENS)

    async def one(index: int, channel: bytes, path: str) -> None:
        async with semaphore:
            sample = sample_every > 0 and index % sample_every == 0
            client = (
                WsClient(channel, sample, latencies, path)
                if websocket
                else SseClient(channel, sample, latencies)
            )
            client.waiter = loop.create_future()
            try:
                await loop.create_connection(lambda: client, "127.0.0.1", port)
            except OSError as exc:
                load.errors[type(exc).__name__] = load.errors.get(type(exc).__name__, 0) + 1
                return
            load.clients.append(client)
            assert client.transport is not None
            sse_request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
            client.transport.write(WS_HANDSHAKE if websocket else sse_request.encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.waiter, 30)

    t0 = time.monotonic()
    await asyncio.gather(*(one(i, c, p) for i, (c, p) in enumerate(paths)))
    print(f"  {len(load.clients)} connected in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    deadline = time.monotonic() + 60
    last_report = time.monotonic()
    while time.monotonic() < deadline:
        opened = sum(1 for c in load.clients if c.opened)
        if opened >= len(paths):
            break
        if time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            print(f"  {opened}/{len(paths)} streams open", file=sys.stderr)
        await asyncio.sleep(0.1)
    return sum(1 for c in load.clients if c.opened)


def payload(seq: int, channel: str, pad: str) -> bytes:
    return f'{{"ts":{time.time_ns()},"seq":{seq},"ch":"{channel}","pad":"{pad}"}}'.encode()


# -- servers under test ---------------------------------------------------------------------
class Server:
    name = ""
    port = 0
    websocket = False
    process: subprocess.Popen[bytes] | None = None

    def sub_path(self, channel: str) -> str:
        raise NotImplementedError

    async def start(self, tmp: Path, core: str) -> None:
        raise NotImplementedError

    async def publish(self, events: list[tuple[str, bytes]]) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, 10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.process = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


class FakeBookingApi:
    """Answers every schedule request with an empty snapshot (keep-alive HTTP/1.1)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                path = head.split(b" ", 2)[1].decode()
                instructor = path.split("/")[3]
                body = json.dumps(
                    {
                        "instructorId": instructor,
                        "from": "2026-11-22T00:00:00Z",
                        "to": "2026-12-21T00:00:00Z",
                        "slots": [],
                        "version": 0,
                        "generatedAt": "2026-11-23T00:00:00Z",
                    }
                ).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


class GatewayServer(Server):
    name = "push-gateway"

    def __init__(self, bootstrap: str, topics: dict[str, str], booking: FakeBookingApi) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.booking = booking
        self.producer: AIOKafkaProducer | None = None
        self.extra_env: dict[str, str] = {}
        #: publish -> broker ack (ns) of every event: the broker's and publisher's share
        self.acks: list[int] = []
        #: one HTTP client for every scrape of /metrics, built on the first
        self._scrape: httpx.AsyncClient | None = None

    def sub_path(self, channel: str) -> str:
        return f"/api/book-now/schedule-updates?instructorId={channel}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(self.port),
            "GATEWAY_INSTANCE_ID": f"bench-{uuid.uuid4().hex[:6]}",
            "GATEWAY_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "GATEWAY_TOPICS__SCHEDULE": self.topics["schedule"],
            "GATEWAY_TOPICS__NOTIFICATIONS": self.topics["notifications"],
            "GATEWAY_TOPICS__PRESENCE": self.topics["presence"],
            "GATEWAY_BOOKING_API_URL": f"http://127.0.0.1:{self.booking.port}",
            "GATEWAY_PRESENCE_EVENTS": "false",
            "GATEWAY_MAX_CONNECTIONS": "19000",
            # every load connection comes from one address: lift the per-IP limits
            "GATEWAY_MAX_STREAMS_PER_IP": "19000",
            "GATEWAY_CONNECT_BURST_PER_IP": "19000",
            "GATEWAY_CONNECT_RATE_PER_IP": "100000",
            "GATEWAY_WS_SUBSCRIBE_BURST_PER_IP": "19000",
            "GATEWAY_WS_SUBSCRIBE_RATE_PER_IP": "100000",
            "GATEWAY_LOG__LEVEL": "WARNING",
            # the gateway refuses to start without a key (public streams only here)
            "GATEWAY_JWT__SECRET": secrets.token_hex(32),
            **self.extra_env,
        }

    async def start(self, tmp: Path, core: str) -> None:
        self.port = free_port()
        self.process = spawn(
            [sys.executable, "-m", "push_gateway"],
            core,
            log=tmp / f"gateway-{self.port}.log",
            env=self.env(),
        )
        await wait_ready(f"http://127.0.0.1:{self.port}/readyz", self.process)
        # with GATEWAY_WORKERS each probe reaches any one worker: wait for a run of answers
        async with httpx.AsyncClient() as client:
            ready = 0
            while ready < 20:
                answer = await client.get(f"http://127.0.0.1:{self.port}/readyz")
                ready = ready + 1 if answer.status_code == 200 else 0
                await asyncio.sleep(0.05)
        if self.producer is None:
            self.producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                enable_idempotence=False,
                linger_ms=2,
                max_batch_size=256 * 1024,
                acks=1,
            )
            await self.producer.start()

    async def publish(self, events: list[tuple[str, bytes]]) -> None:
        """A ``send`` per record (aiokafka's accumulator batches them per partition; its
        ``send_batch`` waits for the partition's batch in flight, which held the offered
        rate at 65 k/s); the tick's publish → ack time is taken once, from its last record
        (one produce request carries the tick), not with a callback per record."""
        producer = self.producer
        assert producer is not None
        if not events:
            return
        topic = self.topics["schedule"]
        sent_at = time.time_ns()
        send = producer.send
        for channel, value in events:
            future = await send(topic, value, key=channel.encode(), headers=HEADERS)
        acks, count = self.acks, len(events)
        future.add_done_callback(lambda _: acks.extend([time.time_ns() - sent_at] * count))

    async def metrics_text(self) -> str:
        """The gateway's /metrics. One client serves every scrape: building an
        ``httpx.AsyncClient`` blocks this loop for 35-70 ms (its TLS context), which would
        make each poll of the ingest drain late by that much. (The drain's wall figure is
        still only as fine as its 0.1 s polls; the CPU per record is the measure.)"""
        if self._scrape is None:
            self._scrape = httpx.AsyncClient(timeout=10)
        return (await self._scrape.get(f"http://127.0.0.1:{self.port}/metrics")).text

    async def stop(self) -> None:
        if self._scrape is not None:
            await self._scrape.aclose()
            self._scrape = None
        await super().stop()

    async def records_ingested(self) -> int:
        for line in (await self.metrics_text()).splitlines():
            if line.startswith("gateway_records_total "):
                return int(float(line.split()[1]))
        return 0

    async def close_producer(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None


HEADERS = [("ce_type", b"slot.updated"), ("content-type", b"application/cloudevents+json")]


class GatewayWsServer(GatewayServer):
    """The same gateway, subscribed to over WebSocket (``sub_path`` is the instructor id)."""

    name = "push-gateway-ws"
    websocket = True

    def sub_path(self, channel: str) -> str:
        return channel


class NchanServer(Server):
    name = "nchan"

    def __init__(self) -> None:
        self._publishers: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._drain_tasks: list[asyncio.Task[None]] = []
        self._next = 0

    def sub_path(self, channel: str) -> str:
        return f"/sub/{channel}"

    async def start(self, tmp: Path, core: str) -> None:
        self.port = free_port()
        home = tmp / "nchan"
        home.mkdir(exist_ok=True)
        conf = home / "nginx.conf"
        conf.write_text(
            f"""
load_module {NCHAN_MODULE};
worker_processes 1;
worker_rlimit_nofile 19500;
pid {home}/nginx.pid;
error_log {home}/error.log warn;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  client_body_temp_path {home}/body;
  proxy_temp_path {home}/proxy;
  fastcgi_temp_path {home}/fastcgi;
  uwsgi_temp_path {home}/uwsgi;
  scgi_temp_path {home}/scgi;
  keepalive_requests 100000000;
  server {{
    listen 127.0.0.1:{self.port};
    location ~ ^/sub/(\\w+)$ {{ nchan_subscriber eventsource; nchan_channel_id $1; }}
    location ~ ^/pub/(\\w+)$ {{
      nchan_publisher; nchan_channel_id $1;
      nchan_message_buffer_length 64; nchan_message_timeout 60s;
    }}
  }}
}}
"""
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.process = spawn(
            [nginx, "-c", str(conf), "-p", str(home), "-g", "daemon off;"], core, home / "out.log"
        )
        await asyncio.to_thread(wait_for_port, "127.0.0.1", self.port, 10)
        for _ in range(4):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self._publishers.append((reader, writer))
            self._drain_tasks.append(asyncio.create_task(_discard(reader)))

    async def publish(self, events: list[tuple[str, bytes]]) -> None:
        # pipelined keep-alive POSTs over a few connections: one message per request
        for channel, value in events:
            _, writer = self._publishers[self._next % len(self._publishers)]
            self._next += 1
            writer.write(
                b"POST /pub/" + channel.encode() + b" HTTP/1.1\r\nHost: b\r\n"
                b"Content-Type: text/plain\r\nContent-Length: "
                + str(len(value)).encode()
                + b"\r\n\r\n"
                + value
            )

    async def stop(self) -> None:
        for task in self._drain_tasks:
            task.cancel()
        for _, writer in self._publishers:
            writer.close()
        self._publishers.clear()
        await super().stop()


async def _discard(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while await reader.read(1 << 16):
            pass


class PushpinServer(Server):
    """Pushpin in front of a GRIP origin (in this process) that holds every stream."""

    name = "pushpin"

    def __init__(self) -> None:
        self.origin_port = free_port()
        self.publish_port = 0
        self._origin: asyncio.Server | None = None
        self._client: httpx.AsyncClient | None = None

    def sub_path(self, channel: str) -> str:
        return f"/sub/{channel}"

    async def _grip(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                channel = head.split(b" ", 2)[1].rsplit(b"/", 1)[1]
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Grip-Hold: stream\r\nGrip-Channel: " + channel + b"\r\n"
                    b"Content-Length: 5\r\n\r\n:ok\n\n"
                )
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def start(self, tmp: Path, core: str) -> None:
        self._origin = await asyncio.start_server(self._grip, "127.0.0.1", self.origin_port)
        self.port = free_port()
        self.publish_port = free_port()
        home = tmp / "pushpin"
        for sub in ("run", "log"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        (home / "routes").write_text(f"* 127.0.0.1:{self.origin_port}\n")
        conf = write_pushpin_conf(home, self.port, self.publish_port)
        self.process = spawn(["pushpin", "--config", str(conf)], core, home / "log" / "out.log")
        await asyncio.to_thread(wait_for_port, "127.0.0.1", self.port, 20)
        await asyncio.to_thread(wait_for_port, "127.0.0.1", self.publish_port, 20)
        self._client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.publish_port}")

    async def publish(self, events: list[tuple[str, bytes]]) -> None:
        # one control request per tick carrying every item (Pushpin's batch form)
        assert self._client is not None
        items = [
            {
                "channel": channel,
                "formats": {
                    "http-stream": {"content": "event: slot\ndata: " + value.decode() + "\n\n"}
                },
            }
            for channel, value in events
        ]
        await self._client.post("/publish/", json={"items": items})

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._origin is not None:
            self._origin.close()
        await super().stop()


def write_pushpin_conf(home: Path, port: int, publish_port: int) -> Path:
    """Debian's pushpin.conf with this run's ports and directories."""
    template = Path("/etc/pushpin/pushpin.conf").read_text()
    replacements = {
        "rundir=": f"rundir={home}/run",
        "http_port=": f"http_port=127.0.0.1:{port}",
        "logdir=": f"logdir={home}/log",
        "routesfile=": f"routesfile={home}/routes",
        "push_in_spec=": f"push_in_spec=tcp://127.0.0.1:{free_port()}",
        "push_in_sub_specs=": f"push_in_sub_specs=tcp://127.0.0.1:{free_port()}",
        "push_in_http_port=": f"push_in_http_port={publish_port}",
        "command_spec=tcp": f"command_spec=tcp://127.0.0.1:{free_port()}",
        # defaults throttle publishing to 2,500 messages/s; lift it for a fair run
        "message_rate=": "message_rate=1000000",
        "message_hwm=": "message_hwm=1000000",
        "client_maxconn=": "client_maxconn=19000",
        "stats_report_interval=": "stats_report_interval=600",
        # the origin is reached through zurl (Debian's default list omits it)
        "services=": "services=condure,zurl,pushpin-proxy,pushpin-handler",
    }
    lines = []
    for line in template.splitlines():
        for prefix, new in replacements.items():
            if line.startswith(prefix):
                line = new
        lines.append(line)
        if line.strip() == "[proxy]":
            # talk to the zurl the runner starts (internal.conf points at a system one)
            lines += [
                "zurl_out_specs=ipc://{rundir}/{ipc_prefix}zurl-in",
                "zurl_out_stream_specs=ipc://{rundir}/{ipc_prefix}zurl-in-stream",
                "zurl_in_specs=ipc://{rundir}/{ipc_prefix}zurl-out",
            ]
    conf = home / "pushpin.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


async def wait_ready(url: str, process: subprocess.Popen[bytes], within: float = 60) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url, timeout=1)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise TimeoutError(url)


# -- the gateway's own latency figures (its /metrics histograms) -----------------------------
GATEWAY_HISTOGRAMS = (
    "gateway_fetch_delay_seconds",
    "gateway_write_delay_seconds",
    "gateway_fanout_seconds",
    "gateway_fanout_cpu_seconds",
    "gateway_loop_lag_seconds",
    "gateway_gc_pause_seconds",
)


def histogram_buckets(text: str) -> dict[str, list[tuple[float, float]]]:
    """``name → [(upper bound, cumulative count)]`` of the gateway's timing histograms."""
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in GATEWAY_HISTOGRAMS}
    for line in text.splitlines():
        name, _, rest = line.partition("_bucket{le=")
        if name in found:
            bound, value = rest.split("} ")
            found[name].append((float(bound.strip('"')), float(value)))
    return found


def histogram_quantile(
    before: list[tuple[float, float]], after: list[tuple[float, float]], fraction: float
) -> float | None:
    """Milliseconds below which ``fraction`` of the observations between two scrapes lie
    (linear within a bucket, as Prometheus' ``histogram_quantile``)."""
    counts = [(bound, a - b) for (bound, a), (_, b) in zip(after, before, strict=True)]
    if not counts or counts[-1][1] <= 0:
        return None
    wanted = fraction * counts[-1][1]
    lower, below = 0.0, 0.0
    for bound, cumulative in counts:
        if cumulative >= wanted:
            if bound == float("inf"):
                return lower * 1e3
            share = (wanted - below) / (cumulative - below) if cumulative > below else 1.0
            return round((lower + (bound - lower) * share) * 1e3, 2)
        lower, below = bound, cumulative
    return None


def gateway_timings(before: str, after: str) -> dict[str, float | None]:
    first, second = histogram_buckets(before), histogram_buckets(after)
    out: dict[str, float | None] = {}
    for name in GATEWAY_HISTOGRAMS:
        short = name.removeprefix("gateway_").removesuffix("_seconds")
        for label, fraction in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
            out[f"{short}_ms_{label}"] = histogram_quantile(first[name], second[name], fraction)
    return out


def gateway_counter(text: str, name: str) -> float:
    """A counter's value in a ``/metrics`` scrape (0 when the gateway has none)."""
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    return 0.0


# -- a bare Kafka consumer beside the gateway: the broker's share of the latency ------------
async def probe_consumer(bootstrap: str, topic: str, seconds: float, ready: Path) -> dict[str, Any]:
    """Read ``topic`` like the gateway does (all partitions, no group, 5 ms long-poll) and do
    nothing else: its record timestamp -> getmany delays are what any consumer on the
    server's core gets from this broker, the floor under the gateway's own figures."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=5,
        max_poll_records=500,
        auto_offset_reset="latest",
    )
    await consumer.start()
    try:
        partitions = topic_partitions(consumer, topic)
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        ready.touch()  # noqa: ASYNC240 - once, before the measurement
        delays: list[int] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            now_ms = time.time() * 1e3
            delays += [int((now_ms - r.timestamp) * 1e6) for rs in batches.values() for r in rs]
        return {
            "probe_records": len(delays),
            "probe_fetch_delay_ms_p50": percentile(delays, 0.50),
            "probe_fetch_delay_ms_p99": percentile(delays, 0.99),
            "probe_fetch_delay_ms_p999": percentile(delays, 0.999),
        }
    finally:
        await consumer.stop()


async def start_probe(
    bootstrap: str, topic: str, seconds: float, core: str, tmp: Path
) -> tuple[subprocess.Popen[bytes], Path]:
    out = tmp / f"probe-{uuid.uuid4().hex[:6]}.json"
    process = spawn(
        [sys.executable, __file__, "--probe", bootstrap, topic, str(seconds), str(out)],
        core,
        log=tmp / "probe.log",
    )
    async with asyncio.timeout(30):
        while not Path(f"{out}.ready").exists():  # noqa: ASYNC240 - a stat every 50 ms
            if process.poll() is not None:
                raise RuntimeError("probe consumer exited")
            await asyncio.sleep(0.05)
    return process, out


# -- one run ------------------------------------------------------------------------------------
def percentile(values: list[int], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] / 1e6


async def run_fanout(
    server: Server, args: argparse.Namespace, tmp: Path, broker_pid: int | None = None
) -> dict[str, Any]:
    await server.start(tmp, args.server_core)
    try:
        await asyncio.sleep(0.5)
        rss_base = tree_rss_bytes(server.pid)
        channels = [f"b{n}" for n in range(args.channels)]
        load = Load()
        subscribed = [channels[i % len(channels)] for i in range(args.connections)]
        idle = max(0, args.idle_connections - args.connections)
        subscribed += [f"idle{i % 50}" for i in range(idle)]
        paths = [(channel.encode(), server.sub_path(channel)) for channel in subscribed]
        t_connect = time.monotonic()
        opened = await open_streams(
            server.port, paths, load.latencies, args.sample_every, load, server.websocket
        )
        connect_seconds = time.monotonic() - t_connect
        await asyncio.sleep(1.0)
        rss_connected = tree_rss_bytes(server.pid)
        per_channel = args.connections // len(channels)
        events_per_second = args.rate / per_channel
        ticks_per_second = 100
        per_tick = events_per_second / ticks_per_second
        pad = "x" * args.pad
        load.latencies.clear()
        load.reset_counts()
        published: dict[bytes, set[int]] = {}
        cpu_before = tree_cpu_seconds(server.pid)
        own_before = own_cpu_seconds()
        broker_before = tree_cpu_seconds(broker_pid) if broker_pid else 0.0
        gateway = server if isinstance(server, GatewayServer) else None
        timings_before = await gateway.metrics_text() if gateway else ""
        probe: tuple[subprocess.Popen[bytes], Path] | None = None
        if gateway:
            gateway.acks.clear()
            if args.probe_consumer:
                probe = await start_probe(
                    gateway.bootstrap,
                    gateway.topics["schedule"],
                    args.duration + args.drain,
                    args.server_core,
                    tmp,
                )
        profiler = start_profiler(server.pid, args.profile) if gateway and args.profile else None
        tick_lateness: list[int] = []
        started = time.monotonic()
        sent = 0
        owed = 0.0
        seq = 0
        tick = 1 / ticks_per_second
        next_tick = started
        while time.monotonic() - started < args.duration:
            owed += per_tick
            batch = []
            while owed >= 1:
                owed -= 1
                channel = channels[seq % len(channels)]
                batch.append((channel, payload(seq, channel, pad)))
                published.setdefault(channel.encode(), set()).add(seq)
                seq += 1
            if batch:
                await server.publish(batch)
                sent += len(batch)
            next_tick += tick
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            # how late this process's own loop woke up (it also reads every SSE stream)
            tick_lateness.append(max(0, int((time.monotonic() - next_tick) * 1e9)))
        publish_seconds = time.monotonic() - started
        expected = sent * per_channel
        drain_deadline = time.monotonic() + args.drain
        while load.received < expected:  # noqa: ASYNC110 - polls counters
            if time.monotonic() > drain_deadline:
                break
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        cpu = tree_cpu_seconds(server.pid) - cpu_before
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            await asyncio.to_thread(profiler.wait, 30)
        own = own_cpu_seconds() - own_before
        broker_cpu = tree_cpu_seconds(broker_pid) - broker_before if broker_pid else None
        counted = tally(published, ((c.channel, c.counted) for c in load.clients))
        received = counted.received_unique
        rss_loaded = tree_rss_bytes(server.pid)
        timings = gateway_timings(timings_before, await gateway.metrics_text()) if gateway else {}
        if probe is not None:
            await asyncio.to_thread(probe[0].wait, args.duration + args.drain + 30)
            timings.update(json.loads(probe[1].read_text()))
        load.close()
        return {
            "server": server.name,
            "load_average_1m": round(os.getloadavg()[0], 2),
            "connections_requested": len(paths),
            "connections_open": opened,
            "connect_seconds": round(connect_seconds, 2),
            "connect_errors": load.errors,
            "not_200": sum(1 for c in load.clients if not c.opened),
            "channels": len(channels),
            "subscribers_per_channel": per_channel,
            "offered_deliveries_per_s": round(expected / publish_seconds),
            "events_published": sent,
            "deliveries_expected": expected,
            "deliveries_received": received,
            "deliveries_per_s": round(received / elapsed),
            # per connection by unique (channel, seq); duplicates never offset a loss
            "deliveries_lost": counted.lost,
            "loss_fraction": counted.loss_fraction,
            "duplicates": counted.duplicates,
            "foreign_events": counted.foreign,
            "latency_ms_p50": percentile(load.latencies, 0.50),
            "latency_ms_p99": percentile(load.latencies, 0.99),
            "latency_samples": len(load.latencies),
            "latency_cdf_ms": latency_cdf_ms(load.latencies),
            "server_cpu_seconds": round(cpu, 2),
            "server_cpu_us_per_delivery": round(cpu / received * 1e6, 2) if received else None,
            "server_core_utilisation": round(cpu / elapsed, 2),
            "client_core_utilisation": round(own / elapsed, 2),
            "broker_core_utilisation": round(broker_cpu / elapsed, 2) if broker_cpu else None,
            "rss_base_mb": round(rss_base / 1e6, 1),
            "rss_per_connection_kb": round((rss_connected - rss_base) / max(1, opened) / 1e3, 2),
            "rss_loaded_mb": round(rss_loaded / 1e6, 1),
            # inside the gateway: Kafka timestamp -> handed over / written, fan-out step, stalls
            "gateway_timings": timings,
            # the load process (client + publisher): its loop's lateness, and for the gateway
            # the publish -> broker-ack time (producer linger + Tansu)
            "client_loop_lag_ms_p50": percentile(tick_lateness, 0.50),
            "client_loop_lag_ms_p99": percentile(tick_lateness, 0.99),
            "publish_ack_ms_p50": percentile(gateway.acks, 0.50) if gateway else None,
            "publish_ack_ms_p99": percentile(gateway.acks, 0.99) if gateway else None,
        }
    finally:
        await server.stop()


async def run_ingest(gateway: GatewayServer, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The gateway's ingest ceiling for records nobody subscribes to: with the gateway
    frozen (SIGSTOP), a backlog is produced; after SIGCONT it is timed draining it."""
    records = args.ingest_records
    await gateway.start(tmp, args.server_core)
    process = gateway.process
    assert process is not None
    try:
        process.send_signal(signal.SIGSTOP)
        producer = await backlog_producer(gateway.bootstrap)
        try:
            value = payload(0, "nobody", "x" * args.pad)
            topic = gateway.topics["schedule"]
            futures = [
                await producer.send(topic, value, key=f"k{n % 997}".encode(), headers=HEADERS)
                for n in range(records)
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        before = tree_cpu_seconds(gateway.pid)
        process.send_signal(signal.SIGCONT)
        started = time.monotonic()
        seen = 0
        async with asyncio.timeout(120):
            while seen < records:
                await asyncio.sleep(0.1)  # a scrape costs the gateway CPU: not too often
                seen = await gateway.records_ingested()
        seconds = time.monotonic() - started
        cpu = tree_cpu_seconds(gateway.pid) - before
        return {
            "server": gateway.name,
            "partitions": 4,
            "backlog_records": records,
            "records_ingested": seen,
            "drain_seconds": round(seconds, 3),
            "records_per_s": round(records / seconds),
            "server_cpu_us_per_record": round(cpu / records * 1e6, 2),
            "ceiling_records_per_s_from_cpu": round(records / cpu) if cpu else None,
        }
    finally:
        await gateway.close_producer()
        await gateway.stop()


async def fetch_rounds(gateway: GatewayServer) -> float:
    return gateway_counter(await gateway.metrics_text(), "gateway_fetch_rounds")


async def run_fixed_cost(
    gateway: GatewayServer, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    """The gateway's fixed cost: CPU per wall second with ``--connections`` idle streams,
    silent, then with ``--unsubscribed-rate`` records/s to a key nobody subscribes to."""
    await gateway.start(tmp, args.server_core)
    try:
        await asyncio.sleep(0.5)
        channels = [f"b{n}" for n in range(args.channels)]
        load = Load()
        paths = [
            (c.encode(), gateway.sub_path(c))
            for c in (channels[i % len(channels)] for i in range(args.connections))
        ]
        opened = await open_streams(gateway.port, paths, load.latencies, 0, load)
        await asyncio.sleep(3.0)  # connect-storm work and the first idle rounds settle
        pid = gateway.pid
        print(f"  gateway pid {pid}: silent for {args.duration}s, then records", file=sys.stderr)
        cpu = tree_cpu_seconds(pid)
        silent_from = time.monotonic()
        await asyncio.sleep(args.duration)
        idle_ms = (tree_cpu_seconds(pid) - cpu) / (time.monotonic() - silent_from) * 1000
        pad = "x" * args.pad
        per_tick = args.unsubscribed_rate / 100
        owed = 0.0
        seq = 0
        measure_from = time.monotonic() + 1.0  # the fetch wait adapts first
        started: float | None = None
        cpu_started: float | None = None
        rounds_before = 0.0
        profiler = start_profiler(pid, args.profile) if args.profile else None
        sent = 0
        next_tick = time.monotonic()
        while True:
            now = time.monotonic()
            if started is None and now >= measure_from:
                started, cpu_started, sent = now, tree_cpu_seconds(pid), 0
                rounds_before = await fetch_rounds(gateway)
            if started is not None and now - started >= args.duration:
                break
            owed += per_tick
            batch = []
            while owed >= 1:
                owed -= 1
                batch.append(("nobody", payload(seq, "nobody", pad)))
                seq += 1
            if batch:
                await gateway.publish(batch)
                sent += len(batch)
            next_tick += 0.01
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
        assert started is not None
        assert cpu_started is not None
        wall = time.monotonic() - started
        busy_ms = (tree_cpu_seconds(pid) - cpu_started) / wall * 1000
        rounds = (await fetch_rounds(gateway)) - rounds_before
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            await asyncio.to_thread(profiler.wait, 30)
        load.close()
        return {
            "server": gateway.name,
            "gateway_env": {k: v for k, v in gateway.extra_env.items() if k != "PYTHONPATH"},
            "gateway_code": gateway.extra_env.get("PYTHONPATH", "this checkout"),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "streams_open": opened,
            "channels": args.channels,
            "idle_cpu_ms_per_s": round(idle_ms, 2),
            "unsubscribed_records_per_s": round(sent / wall),
            "unsubscribed_cpu_ms_per_s": round(busy_ms, 2),
            # the lean fetch loop's requests (0: aiokafka's consumer fetches, not counted)
            "fetch_rounds_per_s": round(rounds / wall, 1),
            "seconds_each": args.duration,
        }
    finally:
        await gateway.close_producer()
        await gateway.stop()


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the gateway over the publishing window (SIGINT writes the flame
    graph; ``.txt``: collapsed stacks). Its CPU is not the gateway's, but its sampling
    slows the gateway a little: compare CPU figures only between runs without it."""
    fmt = "raw" if out.suffix == ".txt" else "flamegraph"
    spy = shutil.which("py-spy") or os.environ.get("PY_SPY", "")
    if not spy:
        raise SystemExit("--profile needs py-spy on PATH (or PY_SPY=/path/to/py-spy)")
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--rate", "250", "--nonblocking", "--format", fmt]
        + ["--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def pinned(core: int) -> Iterator[None]:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "workload": {
            "connections": args.connections,
            "idle_connections_total": max(args.idle_connections, args.connections),
            "channels": args.channels,
            "offered_deliveries_per_s": args.rate,
            "duration_s": args.duration,
            "payload_bytes_about": len(payload(0, "b0", "x" * args.pad)),
            "server_core": args.server_core,
            "client_core": args.client_core,
        },
        "note": "2-core machine shared with other work: figures are noisy; the load "
        "client, publisher, Tansu and fake origins share the client core.",
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="fanout-") as tmp_name:
        tmp = Path(tmp_name)
        broker: TansuBroker | None = None
        booking = FakeBookingApi()
        await booking.start()
        try:
            if {"gateway", "gateway-ws", "ingest", "fixed-cost"} & set(args.servers):
                broker = TansuBroker(log_path=tmp / "tansu.log")
                await asyncio.to_thread(broker.start)
            for name in args.servers:
                if name in ("gateway", "gateway-ws"):
                    assert broker is not None
                    topics = await fresh_topics(broker.bootstrap_servers)
                    kind = GatewayWsServer if name == "gateway-ws" else GatewayServer
                    server = kind(broker.bootstrap_servers, topics, booking)
                    server.extra_env = env_assignments(args.gateway_env)
                    try:
                        broker_pid = broker._process.pid if broker._process else None  # noqa: SLF001
                        results["runs"].append(await run_fanout(server, args, tmp, broker_pid))
                    finally:
                        await server.close_producer()
                elif name == "nchan":
                    if not args.nchan_available:
                        results["runs"].append({"server": "nchan", "skipped": "not installed"})
                        continue
                    results["runs"].append(await run_fanout(NchanServer(), args, tmp))
                elif name == "pushpin":
                    if shutil.which("pushpin") is None:
                        results["runs"].append({"server": "pushpin", "skipped": "not installed"})
                        continue
                    results["runs"].append(await run_fanout(PushpinServer(), args, tmp))
                elif name == "fixed-cost":
                    assert broker is not None
                    topics = await fresh_topics(broker.bootstrap_servers)
                    gateway = GatewayServer(broker.bootstrap_servers, topics, booking)
                    gateway.extra_env = env_assignments(args.gateway_env)
                    results["runs"].append(await run_fixed_cost(gateway, args, tmp))
                elif name == "ingest":
                    assert broker is not None
                    topics = await fresh_topics(broker.bootstrap_servers)
                    gateway = GatewayServer(broker.bootstrap_servers, topics, booking)
                    results["ingest"] = await run_ingest(gateway, args, tmp)
                print(json.dumps(results["runs"][-1] if name != "ingest" else results["ingest"]))
        finally:
            await booking.stop()
            if broker is not None:
                broker.stop()
    return results


async def fresh_topics(bootstrap: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    topics = {
        "schedule": f"bench.{tag}.schedule",
        "notifications": f"bench.{tag}.notifications",
        "presence": f"bench.{tag}.presence",
    }
    await create_topics(
        bootstrap,
        {topics["schedule"]: 4, topics["notifications"]: 2, topics["presence"]: 1},
        {topics["presence"]: {"cleanup.policy": "compact"}},
    )
    return topics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument(
        "--idle-connections",
        type=int,
        default=10000,
        help="total connections held open (extra ones on idle channels)",
    )
    parser.add_argument("--channels", type=int, default=500)
    parser.add_argument("--rate", type=int, default=100_000, help="offered deliveries/s")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--drain", type=float, default=3.0, help="seconds to wait for stragglers")
    parser.add_argument("--pad", type=int, default=250, help="payload padding bytes")
    parser.add_argument(
        "--sample-every", type=int, default=10, help="parse latency on every n-th connection"
    )
    parser.add_argument("--ingest-records", type=int, default=200_000)
    parser.add_argument(
        "--servers",
        nargs="+",
        default=["gateway", "gateway-ws", "nchan", "pushpin", "ingest"],
        choices=["gateway", "gateway-ws", "nchan", "pushpin", "ingest", "fixed-cost"],
    )
    parser.add_argument(
        "--fixed-cost",
        action="store_true",
        help="only the gateway's fixed cost (see the module docstring): --connections idle "
        "streams on --channels channels, silent, then --unsubscribed-rate records/s",
    )
    parser.add_argument(
        "--unsubscribed-rate",
        type=int,
        default=900,
        help="--fixed-cost: records/s to a key nobody subscribes to",
    )
    parser.add_argument(
        "--server-core",
        default="0",
        help='CPU list for the server, e.g. "0,1" with --gateway-env GATEWAY_WORKERS=2',
    )
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the gateway, e.g. GATEWAY_KAFKA__MAX_POLL_RECORDS=500",
    )
    parser.add_argument(
        "--probe-consumer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run a bare Kafka consumer on the server core beside the gateway",
    )
    parser.add_argument(
        "--sizes",
        action="store_true",
        help="the push-gateway and Nchan at each size of issue 14 item 1 (1 k / 5 k / 10 k "
        "conns); --duration and the other options apply to every size",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="--sizes: rounds per size, the servers' order alternating (make bench: 3)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy profile of the gateway while publishing (SVG, or .txt: collapsed stacks)",
    )
    add_results_dir_option(parser, RESULTS_DIR, "fanout")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--probe"]:  # the probe consumer's own process (see start_probe)
        bootstrap, topic, seconds, out = argv[1:5]
        found = uvloop.run(probe_consumer(bootstrap, topic, float(seconds), Path(out + ".ready")))
        Path(out).write_text(json.dumps(found))
        return
    args = parse_args(argv)
    args.nchan_available = NCHAN_MODULE.exists()
    hard = raise_open_file_limit()
    if args.idle_connections > hard - 500:
        args.idle_connections = hard - 500
    # SIGTERM unwinds like Ctrl-C, so every server this run started is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if args.sizes:
        run_sizes(args)
        return
    if args.fixed_cost:
        args.servers = ["fixed-cost"]
        with pinned(args.client_core):
            found = uvloop.run(main_async(args))
        written = record_results(args.results_dir, "fanout_fixed_cost", found)
        print(f"written to {written} (and appended to history.jsonl)")
        return
    with pinned(args.client_core):
        results = uvloop.run(main_async(args))
    written = record_results(args.results_dir, "fanout", results)
    print(render_table(results))
    print(f"written to {written} (and appended to history.jsonl)")


#: issue 14 item 1: (label, streams on busy channels, streams in all, channels, deliveries/s);
#: ten subscribers per busy channel, the rest on idle channels
SIZES: Final = (
    ("1 k conns, 10 k deliveries/s", 1000, 1000, 100, 10_000),
    ("5 k conns, 100 k deliveries/s", 5000, 5000, 500, 100_000),
    ("10 k conns, 10 k deliveries/s", 5000, 10_000, 500, 10_000),
)


def run_sizes(args: argparse.Namespace) -> None:
    """The push-gateway and Nchan side by side at each of the issue's sizes, ``--repeat``
    rounds per size in alternating order (gateway first, then Nchan first, ...), so neither
    always runs on the colder or the warmer machine; recorded as the ``fanout_sizes``
    benchmark, whose table the README shows (per size: the median of the rounds' paired
    ratios, each round's runs kept). Identical runs a minute apart differ by ±15 % in CPU
    per delivery on this shared 2-core machine, for either server: one pair is not a figure."""
    sizes: list[dict[str, Any]] = []
    for label, busy, total, channels, rate in SIZES:
        args.connections, args.idle_connections = busy, total
        args.channels, args.rate = channels, rate
        runs: list[dict[str, Any]] = []
        workload: dict[str, Any] = {}
        for round_no in range(args.repeat):
            args.servers = ["gateway", "nchan"] if round_no % 2 == 0 else ["nchan", "gateway"]
            with pinned(args.client_core):
                found = uvloop.run(main_async(args))
            workload = found["workload"]
            runs.extend(run | {"round": round_no} for run in found["runs"])
            print(f"{label}, round {round_no + 1} of {args.repeat}:\n{render_table(found)}")
        summary = sizes_summary(runs)
        sizes.append({"size": label, "workload": workload, "runs": runs, "summary": summary})
        print(f"{label}: {json.dumps(summary)}")
    results = {
        "note": "server CPU per delivery: gateway vs Nchan, same run; ratio = the median of "
        "the rounds' paired ratios",
        "repeat": args.repeat,
        "sizes": sizes,
    }
    written = record_results(args.results_dir, "fanout_sizes", results)
    print(f"written to {written} (and appended to history.jsonl)")


def render_table(results: dict[str, Any]) -> str:
    rows = [
        "| server | conns open | deliveries/s (offered) | loss | p50 ms | p99 ms "
        "| server CPU µs/delivery | RSS/conn kB | server core | client core |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt: Callable[[Any], str] = lambda v: (  # noqa: E731
        "–" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)
    )
    for run in results["runs"]:
        if "skipped" in run:
            rows.append(f"| {run['server']} | skipped: {run['skipped']} |||||||||")
            continue
        rows.append(
            f"| {run['server']} | {run['connections_open']} | {run['deliveries_per_s']} "
            f"({run['offered_deliveries_per_s']}) | {run['loss_fraction'] or 0:.2%} "
            f"(dup {run['duplicates']}) "
            f"| {fmt(run['latency_ms_p50'])} | {fmt(run['latency_ms_p99'])} "
            f"| {fmt(run['server_cpu_us_per_delivery'])} | {run['rss_per_connection_kb']} "
            f"| {run['server_core_utilisation']} | {run['client_core_utilisation']} |"
        )
    ingest = results.get("ingest")
    if ingest:
        rows.append("")
        rows.append(
            f"Ingest without subscribers: {ingest['records_per_s']} records/s draining a "
            f"{ingest['backlog_records']}-record backlog from Tansu "
            f"({ingest['server_cpu_us_per_record']} µs of gateway CPU per record; CPU-bound "
            f"ceiling {fmt(ingest['ceiling_records_per_s_from_cpu'])} records/s)."
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
