"""Every core: deliveries per second of one gateway with 1 and with N workers
(``GATEWAY_WORKERS``), measured so that the figure is the gateway's, not the load client's.

What it does, per run, each on a fresh gateway: open ``--connections`` SSE streams over
``--channels`` schedule channels (the same number for 1 and N workers); freeze the whole
gateway (SIGSTOP to the supervisor and every worker); produce ``--events`` records to those
channels; then thaw it and time how long the streams take to receive all
``events × subscribers per channel`` deliveries. The backlog is in Kafka, so the gateway
delivers as fast as it can — its saturated rate — while the publisher is already idle.
Runs: ``--warmup`` rounds first (not counted), then ``--repeat`` rounds of 1 and N workers
in ABBA order; medians, and each round's own ratio. The gateway gets the same CPU list for
1 and N workers (``--server-cores``), the client and Tansu theirs (``--client-cores``).

The load client costs little per delivery and still checks every one (see ``Streams``):
one epoll loop over plain sockets that sleeps between polls, so that each read carries many
frames, and reads each socket straight into a preallocated buffer, looking only at the
buffer's tail for the channel's last event — no per-frame work while the clock runs. After
the run every byte is parsed: per connection, unique ``(channel, seq)``, losses and
duplicates counted apart (``benchkit.tally``). Reported per
run, apart: each gateway process's CPU (from /proc), the client's, Tansu's, and what the
rest of the machine took meanwhile (``other_work_cores``, from /proc/stat); the share of the
drain each worker waited, runnable, for a core (``worker_waited_for_core``: starved) or
neither ran nor waited (``worker_idle``: not CPU-bound, e.g. done before the other); each worker's
connections, deliveries and records ingested (its own metrics port,
``GATEWAY_WORKER_METRICS_PORT``): whether ``SO_REUSEPORT`` spread the connections evenly.
``scaling`` in the JSON: the median deliveries/s of N workers over the median of 1, the
same between 10 % and 90 % of each drain (``steady``), and projected from CPU per delivery
for N whole cores (the busiest worker saturating first).

    .venv/bin/python bench/workers.py                     # 1 vs 2 workers, 1 + 4 rounds
    .venv/bin/python bench/workers.py --channels 100      # 10 subscribers per channel
    .venv/bin/python bench/workers.py --priority 10       # ahead of other work (root)

On a machine shared with other work the direct figure is the scheduler's as much as the
gateway's (with sched_autogroup every session gets an equal share of a busy core, so two
workers get two shares): ``--priority`` puts this benchmark's processes ahead of the rest,
1 worker and N alike, which is what a quiet machine gives.

Results: bench/results/workers.json (latest) and bench/results/history.jsonl.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvloop

from slotstream_testkit.benchkit import (
    StreamBuffer,
    StreamCount,
    Tally,
    add_results_dir_option,
    backlog_producer,
    env_assignments,
    record_results,
    tally,
)
from slotstream_testkit.kafka import TansuBroker
from slotstream_testkit.net import free_port_block, raise_open_file_limit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the fan-out benchmark's servers and tools
from bench.connect_storm import broker_and_origin  # noqa: E402
from bench.fanout import (  # noqa: E402
    HEADERS,
    FakeBookingApi,
    GatewayServer,
    _descendants,
    fresh_topics,
    own_cpu_seconds,
    payload,
    tree_cpu_seconds,
)

RESULTS_DIR = ROOT / "bench" / "results"
SNAPSHOT = b"event: snapshot"
METRICS = ("gateway_connections", "gateway_deliveries_total", "gateway_records_total")
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: an SSE frame around a payload: "id: …\nevent: slot.updated\ndata: " and "\n\n", generously
FRAME_OVERHEAD = 96


@dataclass
class Streams:
    """The load client: plain non-blocking sockets, each read straight into a
    preallocated :class:`StreamBuffer` by one epoll loop (no asyncio, no per-frame work
    while the clock runs: a read costs the same however many frames it carries). Between
    polls it sleeps ``pause`` seconds, so a read carries many frames: a read costs about
    what a write costs the gateway, so a client reading every frame on its own would cost
    as much CPU as the server it measures. A stream is done once its tail holds its
    channel's last event (``finals``: records of one channel arrive in order); every byte is
    kept and parsed after the measurement (:meth:`verify`): each connection must have
    received each event of its channel once, by unique ``(channel, seq)``."""

    capacity: int
    sockets: dict[int, socket.socket] = field(default_factory=dict)
    buffers: dict[int, StreamBuffer] = field(default_factory=dict)
    channel_of: dict[int, bytes] = field(default_factory=dict)
    opened: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)
    received_bytes: int = 0

    def add(self, sock: socket.socket, channel: bytes) -> None:
        fd = sock.fileno()
        self.sockets[fd] = sock
        self.buffers[fd] = StreamBuffer(self.capacity)
        self.channel_of[fd] = channel

    def read(self, fd: int) -> int:
        try:
            read = self.buffers[fd].receive(self.sockets[fd])
        except OSError:
            read = 0
        if read == 0:
            self.lost.add(fd)
        elif read > 0:
            self.received_bytes += read
        return read

    def poller(self) -> select.epoll:
        poller = select.epoll()
        for fd in self.sockets:
            if fd not in self.lost:
                poller.register(fd, select.EPOLLIN)
        return poller

    def read_ready(self, poller: select.epoll, wait: float) -> list[int]:
        ready = []
        for fd, _ in poller.poll(wait):
            if self.read(fd) > 0:
                ready.append(fd)
            if fd in self.lost:
                poller.unregister(fd)
            elif fd not in self.opened and self.buffers[fd].contains(SNAPSHOT):
                self.opened.add(fd)
        return ready

    def drain(self, finals: dict[bytes, bytes], window: int, timeout: float, pause: float) -> Drain:
        """Read until every stream's tail holds its channel's final token (or ``timeout``).
        Blocks this thread and its event loop: for the measurement, when nothing else runs.
        Sleeps ``pause`` between polls, less near the end (half the time the rest should
        take at the rate so far), so the last frames are not read up to a whole pause late.
        """
        pending = set(self.sockets) - self.lost
        total = len(pending)
        base = self.received_bytes
        started = time.monotonic()
        deadline = started + timeout
        marks: list[tuple[float, int]] = []
        with self.poller() as poller:
            while True:
                for fd in self.read_ready(poller, 0):
                    if fd in pending and self.buffers[fd].tail_contains(
                        finals[self.channel_of[fd]], window
                    ):
                        pending.discard(fd)
                pending -= self.lost
                now = time.monotonic()
                marks.append((now - started, self.received_bytes - base))
                if not pending or now > deadline:
                    break
                done = 1 - len(pending) / total
                elapsed = now - started
                rest = elapsed * (1 - done) / done / 2 if done else pause
                time.sleep(min(pause, max(0.0005, rest)))
        return Drain(marks, complete=not pending)

    def verify(self, published: dict[bytes, set[int]]) -> tuple[Tally, int]:
        """After the run: parse every byte each connection received (see ``tally``);
        also the events received in all (``"seq":`` tokens, duplicates included)."""
        parsed: dict[bytes, StreamCount] = {}
        counts = [
            (self.channel_of[fd], buffer.count(parsed)) for fd, buffer in self.buffers.items()
        ]
        return tally(published, counts), sum(count.events for _, count in counts)

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.buffers.clear()


@dataclass(frozen=True)
class Drain:
    """``marks``: (seconds since the gateway was thawed, bytes received) after each poll."""

    marks: list[tuple[float, int]]
    complete: bool

    @property
    def seconds(self) -> float:
        return self.marks[-1][0]

    def crossed(self, fraction: float) -> float | None:
        """When the client had read ``fraction`` of all the bytes it read (frames are all
        about one size, so: of the deliveries)."""
        wanted = fraction * self.marks[-1][1]
        return next((at for at, got in self.marks if got >= wanted and got), None)

    def steady_rate(self, deliveries: int) -> float | None:
        """Deliveries/s between 10 % and 90 % of the drain: without the thaw's first fetch
        and the last reads, the part of the run where every worker was busy."""
        first, last = self.crossed(0.1), self.crossed(0.9)
        if first is None or last is None or last <= first:
            return None
        return 0.8 * deliveries / (last - first)


async def open_streams(port: int, channels: list[str], capacity: int, rcvbuf: int) -> Streams:
    """Connect and request every channel's stream; returns once every stream got its
    snapshot (or closed, or a minute passed). Yields to the event loop meanwhile: the fake
    booking-api serving the gateway's snapshot requests runs on it."""
    streams = Streams(capacity)
    for channel in channels:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # before connect, so that the window scale offered in the SYN covers it: with the
        # default buffer a stream read every 50 ms overflowed at ~1,000 frames/s, dropped
        # segments and stalled for the retransmission timeout (ss: rwnd_limited 90 %)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(("127.0.0.1", port))
        path = f"/api/book-now/schedule-updates?instructorId={channel}"
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        sock.setblocking(False)
        streams.add(sock, channel.encode())
    deadline = time.monotonic() + 60
    with streams.poller() as poller:
        while len(streams.opened) + len(streams.lost) < len(channels):
            if time.monotonic() > deadline:
                break
            streams.read_ready(poller, 0)
            await asyncio.sleep(0.005)
    return streams


def start_perf(directory: Path | None, workers: int) -> subprocess.Popen[bytes] | None:
    """``perf record`` of the whole machine (call graphs) for one drain: where the CPU of
    the gateway, the client and the kernel under both goes."""
    if directory is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"drain-{workers}w-{time.strftime('%H%M%S')}.perf"
    recorder = subprocess.Popen(
        ["perf", "record", "-a", "-g", "-F", "1999", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # perf is recording before the gateway thaws
    return recorder


def ahead(pids: list[int], nice: int) -> None:
    """``--priority``: the scheduler's autogroup nice of each process's session (every
    gateway worker, Tansu and this client are sessions of their own). With sched_autogroup
    a busy machine shares each core between sessions; ahead of the others, the benchmark's
    processes get the cores as on a quiet machine, 1 worker and N alike."""
    if not nice:
        return
    for pid in pids:
        try:
            Path(f"/proc/{pid}/autogroup").write_text(str(-nice))
        except OSError as exc:
            raise SystemExit(f"--priority needs CAP_SYS_NICE and sched_autogroup: {exc}") from exc


def machine_seconds() -> tuple[float, float]:
    """CPU seconds all cores spent on anything but idle since boot, and of those in
    softirqs (/proc/stat): softirq work that interrupted no process of ours (a pacing
    timer firing on an idle core) is charged to none of them."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / CLK_TCK, fields[6] / CLK_TCK


def process_cpu(pid: int) -> float:
    """CPU seconds of one process (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def schedstat(pid: int) -> tuple[float, float]:
    """Seconds the process's main thread ran, and waited runnable for a core (its event
    loop's thread: a gateway that waits for a core is starved, one that does neither is
    idle)."""
    try:
        ran, waited, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(ran) / 1e9, int(waited) / 1e9


def signal_tree(root: int, signum: int) -> None:
    for pid in _descendants(root):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            continue


async def worker_metrics(ports: list[int]) -> list[dict[str, float]]:
    """``METRICS`` of each worker."""
    found = []
    async with httpx.AsyncClient() as client:
        for port in ports:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            values: dict[str, float] = {}
            for line in text.splitlines():
                name, _, value = line.partition(" ")
                if name in METRICS:
                    values[name] = float(value)
            found.append(values)
    return found


async def run_once(
    args: argparse.Namespace,
    broker: TansuBroker,
    booking: FakeBookingApi,
    workers: int,
    tmp: Path,
) -> dict[str, Any]:
    topics = await fresh_topics(broker.bootstrap_servers)
    gateway = GatewayServer(broker.bootstrap_servers, topics, booking)
    metrics_base = free_port_block(max(1, workers))
    gateway.extra_env = {
        "GATEWAY_WORKERS": str(workers),
        "GATEWAY_WORKER_METRICS_PORT": str(metrics_base),
        **env_assignments(args.gateway_env),
    }
    cores = args.server_cores
    await gateway.start(tmp, cores)
    metric_ports = [metrics_base + n for n in range(workers)] if workers > 1 else [gateway.port]
    channels = [f"w{n}" for n in range(args.channels)]
    per_channel = args.connections // args.channels
    pad = "x" * args.pad
    frame_bytes = len(payload(0, channels[0], pad)) + FRAME_OVERHEAD
    capacity = (args.events // args.channels + 1) * frame_bytes + 65536
    streams = Streams(capacity)
    try:
        subscribed = [channels[n % len(channels)] for n in range(per_channel * len(channels))]
        streams = await open_streams(gateway.port, subscribed, capacity, args.rcvbuf)
        opened = len(streams.opened - streams.lost)
        await asyncio.sleep(1.0)
        before_metrics = await worker_metrics(metric_ports)
        root = gateway.pid
        pids = _descendants(root)
        ahead(pids, args.priority)
        published: dict[bytes, set[int]] = {channel.encode(): set() for channel in channels}
        signal_tree(root, signal.SIGSTOP)
        try:
            producer = await backlog_producer(gateway.bootstrap)
            try:
                futures = []
                for seq in range(args.events):
                    channel = channels[seq % len(channels)]
                    published[channel.encode()].add(seq)
                    futures.append(
                        await producer.send(
                            topics["schedule"],
                            payload(seq, channel, pad),
                            key=channel.encode(),
                            headers=HEADERS,
                        )
                    )
                await asyncio.gather(*futures)
            finally:
                await producer.stop()
        finally:
            cpu_before = {pid: _cpu_or_zero(pid) for pid in pids}
            sched_before = {pid: schedstat(pid) for pid in pids}
            client_before = own_cpu_seconds()
            broker_pid = broker._process.pid if broker._process else None  # noqa: SLF001
            broker_before = tree_cpu_seconds(broker_pid) if broker_pid else 0.0
            busy_before, softirq_before = machine_seconds()
            load_before = os.getloadavg()[0]
            when = time.strftime("%H:%M:%S", time.gmtime())
            recorder = start_perf(args.perf, workers)
            signal_tree(root, signal.SIGCONT)
        expected = args.events * per_channel
        finals = {channel: b'"seq":%d,' % max(seqs) for channel, seqs in published.items() if seqs}
        drain = streams.drain(finals, 2 * frame_bytes, args.timeout, args.pause)
        if recorder is not None:
            recorder.send_signal(signal.SIGINT)
            recorder.wait(30)
        seconds = drain.seconds
        cpu = {pid: _cpu_or_zero(pid) - cpu_before[pid] for pid in pids}
        waited = {pid: schedstat(pid)[1] - sched_before[pid][1] for pid in pids}
        client_cpu = own_cpu_seconds() - client_before
        broker_cpu = tree_cpu_seconds(broker_pid) - broker_before if broker_pid else 0.0
        busy_after, softirq_after = machine_seconds()
        busy, softirq = busy_after - busy_before, softirq_after - softirq_before
        after_metrics = await worker_metrics(metric_ports)
        checked, received = streams.verify(published)
    finally:
        streams.close()
        await gateway.close_producer()
        await gateway.stop()
    server_cpu = sum(cpu.values())
    supervisor_cpu = cpu.get(root, 0.0) if workers > 1 else 0.0
    worker_pids = [p for p in pids if p != root] if workers > 1 else [root]
    worker_rows = []
    for index, (was, now) in enumerate(zip(before_metrics, after_metrics, strict=True)):
        worker_rows.append(
            {
                "worker": index,
                "connections": int(now.get("gateway_connections", 0)),
                "deliveries": int(
                    now.get("gateway_deliveries_total", 0) - was.get("gateway_deliveries_total", 0)
                ),
                "records": int(
                    now.get("gateway_records_total", 0) - was.get("gateway_records_total", 0)
                ),
            }
        )
    worker_cpus = sorted((cpu[p] for p in worker_pids), reverse=True)
    # per worker: the share of the drain it waited, runnable, for a core (starved by the
    # client, Tansu, the other worker or other work) and neither ran nor waited (idle)
    worker_waited = [round(waited[p] / seconds, 2) for p in worker_pids]
    worker_idle = [round(max(0.0, 1 - (cpu[p] + waited[p]) / seconds), 2) for p in worker_pids]
    total_delivered = sum(w["deliveries"] for w in worker_rows)
    busiest = max(w["deliveries"] for w in worker_rows)
    busiest_share = busiest / total_delivered if total_delivered else 1.0
    us_per_delivery = server_cpu / received * 1e6 if received else None
    steady = drain.steady_rate(received)
    ours = server_cpu + client_cpu + broker_cpu
    return {
        "workers": workers,
        "utc": when,
        "load_average_1m": round(load_before, 2),
        "server_cores": cores,
        "client_cores": args.client_cores,
        "connections_open": opened,
        "channels": args.channels,
        "subscribers_per_channel": per_channel,
        "events": args.events,
        "deliveries_expected": expected,
        "deliveries_received": received,
        "deliveries_unique": checked.received_unique,
        "deliveries_lost": checked.lost,
        "duplicates": checked.duplicates,
        "foreign_events": checked.foreign,
        "streams_lost": len(streams.lost),
        "drain_seconds": round(seconds, 3),
        "all_arrived": drain.complete,
        "first_bytes_s": _r(drain.crossed(1e-9), 3),
        "deliveries_per_s": round(received / seconds) if seconds else None,
        "deliveries_per_s_steady": round(steady) if steady else None,
        "server_cpu_s": round(server_cpu, 3),
        "server_cores_used": round(server_cpu / seconds, 2),
        "server_cpu_us_per_delivery": _r(us_per_delivery),
        "worker_cpu_s": [round(c, 3) for c in worker_cpus],
        "worker_waited_for_core": worker_waited,
        "worker_idle": worker_idle,
        "supervisor_cpu_s": round(supervisor_cpu, 3),
        "per_worker": worker_rows,
        "busiest_worker_delivery_share": round(busiest_share, 3),
        "client_cpu_s": round(client_cpu, 3),
        "client_cores_used": round(client_cpu / seconds, 2),
        "client_cpu_us_per_delivery": _r(client_cpu / received * 1e6 if received else None),
        "broker_cpu_s": round(broker_cpu, 3),
        "broker_cpu_us_per_delivery": _r(broker_cpu / received * 1e6 if received else None),
        # all CPU the machine spent during the drain, and what of it was not this benchmark
        "machine_cores_busy": round(busy / seconds, 2),
        "other_work_cores": round(max(0.0, busy - ours) / seconds, 2),
        "softirq_cores": round(softirq / seconds, 2),
        # deliveries/s if every worker had a whole core: the busiest one saturates first
        "projected_deliveries_per_s_whole_cores": (
            round(1e6 / us_per_delivery / busiest_share) if us_per_delivery else None
        ),
    }


def summary(run: dict[str, Any]) -> str:
    spread = "/".join(str(w["connections"]) for w in run["per_worker"])
    return (
        f"{run['utc']} load {run['load_average_1m']:5.2f}  {run['workers']} worker(s): "
        f"{run['deliveries_per_s']:>9,} deliveries/s (steady {run['deliveries_per_s_steady']}) "
        f"server {run['server_cores_used']} cores {run['server_cpu_us_per_delivery']} µs/dlv, "
        f"client {run['client_cpu_us_per_delivery']} µs, Tansu {run['broker_cpu_us_per_delivery']}"
        f" µs, other work {run['other_work_cores']} cores, workers waited "
        f"{run['worker_waited_for_core']} idle {run['worker_idle']}, streams {spread}, lost "
        f"{run['deliveries_lost']} dup {run['duplicates']}"
    )


def _cpu_or_zero(pid: int) -> float:
    try:
        return process_cpu(pid)
    except OSError:
        return 0.0


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def scaling(runs: list[dict[str, Any]], workers: int) -> dict[str, Any]:
    """Medians over the measured rounds (1 and N workers interleaved), and the median of
    each round's own ratio (its N-worker run over its 1-worker run, minutes apart)."""

    def median(n: int, key: str) -> float | None:
        values = [r[key] for r in runs if r["workers"] == n and r.get(key) is not None]
        return statistics.median(values) if values else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(b / a, 2) if a and b else None

    ones = [r for r in runs if r["workers"] == 1]
    manys = [r for r in runs if r["workers"] == workers]
    paired = [
        b["deliveries_per_s"] / a["deliveries_per_s"]
        for a, b in zip(ones, manys, strict=False)
        if a["deliveries_per_s"] and b["deliveries_per_s"]
    ]
    one, many = median(1, "deliveries_per_s"), median(workers, "deliveries_per_s")
    one, many = (round(v) if v is not None else None for v in (one, many))
    client = [r["client_cpu_us_per_delivery"] for r in runs if r["client_cpu_us_per_delivery"]]
    broker = [r["broker_cpu_us_per_delivery"] for r in runs if r["broker_cpu_us_per_delivery"]]
    return {
        "workers": workers,
        "rounds": len(paired),
        "deliveries_per_s_median_1": one,
        f"deliveries_per_s_median_{workers}": many,
        "measured_ratio": ratio(one, many),
        "measured_ratio_per_round": [round(r, 2) for r in paired],
        "measured_ratio_per_round_median": round(statistics.median(paired), 2) if paired else None,
        "steady_ratio": ratio(
            median(1, "deliveries_per_s_steady"), median(workers, "deliveries_per_s_steady")
        ),
        "projected_ratio_whole_cores": ratio(
            median(1, "projected_deliveries_per_s_whole_cores"),
            median(workers, "projected_deliveries_per_s_whole_cores"),
        ),
        "server_cpu_us_per_delivery_median_1": median(1, "server_cpu_us_per_delivery"),
        f"server_cpu_us_per_delivery_median_{workers}": median(
            workers, "server_cpu_us_per_delivery"
        ),
        "client_cpu_us_per_delivery_median": statistics.median(client) if client else None,
        "broker_cpu_us_per_delivery_median": statistics.median(broker) if broker else None,
        "load_average_1m": [
            min(r["load_average_1m"] for r in runs),
            max(r["load_average_1m"] for r in runs),
        ]
        if runs
        else None,
        "other_work_cores_median": statistics.median(r["other_work_cores"] for r in runs)
        if runs
        else None,
        "deliveries_lost": sum(r["deliveries_lost"] for r in runs),
        "duplicates": sum(r["duplicates"] for r in runs),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "workload": {
            "connections": args.connections,
            "channels": args.channels,
            "events": args.events,
            "payload_bytes_about": len(payload(0, "w0", "x" * args.pad)),
            "server_cores": args.server_cores,
            "client_cores": args.client_cores,
            "pause_s": args.pause,
            "rcvbuf": args.rcvbuf,
            "warmup_rounds": args.warmup,
            "priority": args.priority,
        },
        "note": "2-core machine shared with other work; the load client, Tansu and the fake "
        "booking-api share the cores with the gateway (other_work_cores: what the rest of "
        "the machine took during each drain).",
        "runs": [],
        "warmup": [],
    }
    async with broker_and_origin("workers-") as (tmp, broker, booking):
        broker_pid = broker._process.pid if broker._process else None  # noqa: SLF001
        ahead([os.getpid(), *([broker_pid] if broker_pid else [])], args.priority)
        for round_ in range(-args.warmup, args.repeat):
            # ABBA: neither worker count always runs first (drift, a neighbour's job)
            order = (1, args.workers) if round_ % 2 == 0 else (args.workers, 1)
            for workers in order:
                run = await run_once(args, broker, booking, workers, tmp)
                print(("warm-up " if round_ < 0 else "") + summary(run), flush=True)
                results["warmup" if round_ < 0 else "runs"].append(run)
    results["scaling"] = scaling(results["runs"], args.workers)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="compared with 1 worker")
    parser.add_argument(
        "--connections", type=int, default=1000, help="the same for 1 and N workers"
    )
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--events", type=int, default=4000, help="backlog records")
    parser.add_argument(
        "--pause", type=float, default=0.05, help="client seconds between polls (batches reads)"
    )
    parser.add_argument(
        "--rcvbuf",
        type=int,
        default=4 << 20,
        help="SO_RCVBUF of each client socket (bytes; the kernel caps it at rmem_max)",
    )
    parser.add_argument("--pad", type=int, default=250, help="payload padding bytes")
    parser.add_argument("--repeat", type=int, default=4, help="measured rounds of 1 and N workers")
    parser.add_argument("--warmup", type=int, default=1, help="rounds run first, not counted")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to deliver all")
    parser.add_argument(
        "--server-cores",
        default="0,1",
        help="CPU list of the gateway, 1 worker or N: the same cores for both, so that only "
        "the worker count differs (other work pinned to one core would otherwise weigh on "
        "the 1-worker run alone)",
    )
    parser.add_argument(
        "--client-cores",
        default="0,1",
        help="CPU list of this process (load client, fake booking-api) and of Tansu",
    )
    parser.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--priority",
        type=int,
        default=0,
        metavar="N",
        help="put the gateway, Tansu and this client N nice levels ahead of other work "
        "(autogroup nice -N, root only): the figure of a quiet machine on a shared one",
    )
    parser.add_argument(
        "--perf", type=Path, metavar="DIR", help="perf record -a of every drain, files in DIR"
    )
    add_results_dir_option(parser, RESULTS_DIR, "workers")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    hard = raise_open_file_limit()
    args.connections = min(args.connections, hard - 500)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    cores = {int(c) for c in args.client_cores.split(",")}
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        results = uvloop.run(main_async(args))
    finally:
        os.sched_setaffinity(0, before)
        if args.priority:
            Path("/proc/self/autogroup").write_text("0")
    print(json.dumps(results["scaling"]))
    written = record_results(args.results_dir, "workers", results)
    print(f"written to {written} (and appended to history.jsonl)")


if __name__ == "__main__":
    main()
