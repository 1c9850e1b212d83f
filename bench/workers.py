"""Every core: deliveries per second of one gateway with 1 and with N workers
(``GATEWAY_WORKERS``), measured so that the figure is the gateway's, not the load client's.

What it does, per run, each on a fresh gateway (1 and N workers interleaved, ``--repeat``
rounds): open ``--connections`` SSE streams over ``--channels`` schedule channels; freeze
the whole gateway (SIGSTOP to the supervisor and every worker); produce ``--events``
records to those channels; then thaw it and time how long the streams take to receive all
``events × subscribers per channel`` deliveries. The backlog is in Kafka, so the gateway
delivers as fast as it can — its saturated rate — while the publisher is already idle.

The load client is built to cost little per delivery (see ``Streams``): one epoll loop
over plain sockets, pausing between polls so that each read carries many frames, counting
``"seq":`` tokens with ``bytes.count`` — no frame parsing, no per-frame Python work; few
connections with many subscribers per channel. Its CPU, each gateway process's CPU (from
/proc), Tansu's CPU, and each worker's connections and deliveries (its own metrics port,
``GATEWAY_WORKER_METRICS_PORT``) are reported separately, so a run shows whether the
workers were starved by the client or the machine, and whether ``SO_REUSEPORT`` spread
the connections evenly. ``scaling`` in the JSON: the median deliveries/s of N workers over
the median of 1, and the same projected from CPU per delivery for N whole cores (the
busiest worker saturating first) — the figure the 2-core machine cannot show directly when
the client, Tansu and other work share its cores.

    .venv/bin/python bench/workers.py                     # 1 vs 2 workers, 3 rounds
    .venv/bin/python bench/workers.py --channels 400      # 10 subscribers per channel

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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvloop

from slotstream_testkit.benchkit import backlog_producer, env_assignments, record_results
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
    pinned,
    tree_cpu_seconds,
)

RESULTS_DIR = ROOT / "bench" / "results"
SEQ = b'"seq":'
TAIL = len(SEQ) - 1


@dataclass
class Streams:
    """The load client: plain non-blocking sockets read by one epoll loop (no asyncio,
    no per-frame Python work). It counts ``"seq":`` tokens with ``bytes.count`` per read
    (a token split across reads is counted once: the kept tail is shorter than it) and
    pauses ``pause`` seconds between polls, so that each read carries many frames: a
    read costs about what a write costs the gateway, so a client reading every frame on
    its own would cost as much CPU as the server it measures."""

    sockets: dict[int, socket.socket] = field(default_factory=dict)
    tails: dict[int, bytes] = field(default_factory=dict)
    opened: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)
    events: int = 0

    def read(self, fd: int) -> bytes:
        try:
            data = self.sockets[fd].recv(1 << 20)
        except BlockingIOError:
            return b""
        except OSError:
            data = b""
        if not data:
            self.lost.add(fd)
            return b""
        joined = self.tails[fd] + data
        self.events += joined.count(SEQ)
        self.tails[fd] = joined[-TAIL:]
        return joined

    def poller(self) -> select.epoll:
        poller = select.epoll()
        for fd in self.sockets:
            if fd not in self.lost:
                poller.register(fd, select.EPOLLIN)
        return poller

    def read_ready(self, poller: select.epoll, wait: float) -> None:
        for fd, _ in poller.poll(wait):
            data = self.read(fd)
            if fd in self.lost:
                poller.unregister(fd)
            elif fd not in self.opened and b"event: snapshot" in data:
                self.opened.add(fd)

    def poll_until(self, done: Callable[[], bool], timeout: float, pause: float) -> None:
        """Blocks this thread (and its event loop): for the drain, when nothing else runs."""
        deadline = time.monotonic() + timeout
        with self.poller() as poller:
            while not done() and time.monotonic() < deadline:
                self.read_ready(poller, 0.1)
                time.sleep(pause)

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()


async def open_streams(port: int, paths: list[str]) -> Streams:
    """Connect and request every path; returns once every stream got its snapshot (or
    closed, or a minute passed). Yields to the event loop meanwhile: the fake booking-api
    serving the gateway's snapshot requests runs on it."""
    streams = Streams()
    for path in paths:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        sock.setblocking(False)
        streams.sockets[sock.fileno()] = sock
        streams.tails[sock.fileno()] = b""
    deadline = time.monotonic() + 60
    with streams.poller() as poller:
        while len(streams.opened) + len(streams.lost) < len(paths):
            if time.monotonic() > deadline:
                break
            streams.read_ready(poller, 0)
            await asyncio.sleep(0.005)
    return streams


def process_cpu(pid: int) -> float:
    """CPU seconds of one process (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def signal_tree(root: int, signum: int) -> None:
    for pid in _descendants(root):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            continue


async def worker_metrics(ports: list[int]) -> list[dict[str, float]]:
    """``gateway_connections`` and ``gateway_deliveries_total`` of each worker."""
    found = []
    async with httpx.AsyncClient() as client:
        for port in ports:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            values: dict[str, float] = {}
            for line in text.splitlines():
                name, _, value = line.partition(" ")
                if name in ("gateway_connections", "gateway_deliveries_total"):
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
    streams = Streams()
    try:
        channels = [f"w{n}" for n in range(args.channels)]
        paths = [gateway.sub_path(channels[n % len(channels)]) for n in range(args.connections)]
        streams = await open_streams(gateway.port, paths)
        opened = len(streams.opened - streams.lost)
        await asyncio.sleep(1.0)
        before_metrics = await worker_metrics(metric_ports)
        pids = _descendants(gateway.pid)
        signal_tree(gateway.pid, signal.SIGSTOP)
        try:
            producer = await backlog_producer(gateway.bootstrap)
            try:
                pad = "x" * args.pad
                futures = []
                for seq in range(args.events):
                    channel = channels[seq % len(channels)]
                    value = payload(seq, channel, pad)
                    futures.append(
                        await producer.send(
                            topics["schedule"], value, key=channel.encode(), headers=HEADERS
                        )
                    )
                await asyncio.gather(*futures)
            finally:
                await producer.stop()
        finally:
            cpu_before = {pid: _cpu_or_zero(pid) for pid in pids}
            client_before = own_cpu_seconds()
            broker_pid = broker._process.pid if broker._process else None  # noqa: SLF001
            broker_before = tree_cpu_seconds(broker_pid) if broker_pid else 0.0
            received_before = streams.events
            load_before = os.getloadavg()[0]
            started = time.monotonic()
            signal_tree(gateway.pid, signal.SIGCONT)
        per_channel = args.connections // args.channels
        expected = args.events * per_channel
        streams.poll_until(
            lambda: streams.events - received_before >= expected, args.timeout, args.pause
        )
        seconds = time.monotonic() - started
        received = streams.events - received_before
        cpu = {pid: _cpu_or_zero(pid) - cpu_before[pid] for pid in pids}
        client_cpu = own_cpu_seconds() - client_before
        broker_cpu = tree_cpu_seconds(broker_pid) - broker_before if broker_pid else None
        after_metrics = await worker_metrics(metric_ports)
        server_cpu = sum(cpu.values())
        worker_rows = []
        supervisor_cpu = cpu.get(gateway.pid, 0.0) if workers > 1 else 0.0
        worker_pids = [p for p in pids if p != gateway.pid] if workers > 1 else [gateway.pid]
        for index, (was, now) in enumerate(zip(before_metrics, after_metrics, strict=True)):
            delivered = now.get("gateway_deliveries_total", 0) - was.get(
                "gateway_deliveries_total", 0
            )
            worker_rows.append(
                {
                    "worker": index,
                    "connections": int(now.get("gateway_connections", 0)),
                    "deliveries": int(delivered),
                }
            )
        worker_cpus = sorted((cpu[p] for p in worker_pids), reverse=True)
        total_delivered = sum(w["deliveries"] for w in worker_rows)
        busiest = max(w["deliveries"] for w in worker_rows)
        busiest_share = busiest / total_delivered if total_delivered else 1.0
        us_per_delivery = server_cpu / received * 1e6 if received else None
        return {
            "workers": workers,
            "server_cores": cores,
            "load_average_1m": round(load_before, 2),
            "connections_open": opened,
            "channels": args.channels,
            "subscribers_per_channel": per_channel,
            "events": args.events,
            "deliveries_expected": expected,
            "deliveries_received": received,
            "streams_lost": len(streams.lost),
            "drain_seconds": round(seconds, 3),
            "deliveries_per_s": round(received / seconds),
            "server_cpu_s": round(server_cpu, 3),
            "server_cores_used": round(server_cpu / seconds, 2),
            "server_cpu_us_per_delivery": _r(us_per_delivery),
            "worker_cpu_s": [round(c, 3) for c in worker_cpus],
            "supervisor_cpu_s": round(supervisor_cpu, 3),
            "per_worker": worker_rows,
            "busiest_worker_delivery_share": round(busiest_share, 3),
            "client_cpu_s": round(client_cpu, 3),
            "client_cores_used": round(client_cpu / seconds, 2),
            "client_cpu_us_per_delivery": _r(client_cpu / received * 1e6 if received else None),
            "broker_cpu_s": round(broker_cpu, 3) if broker_cpu is not None else None,
            # deliveries/s if every worker had a whole core: the busiest one saturates first
            "projected_deliveries_per_s_whole_cores": (
                round(1e6 / us_per_delivery / busiest_share) if us_per_delivery else None
            ),
        }
    finally:
        streams.close()
        await gateway.close_producer()
        await gateway.stop()


def _cpu_or_zero(pid: int) -> float:
    try:
        return process_cpu(pid)
    except OSError:
        return 0.0


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def scaling(runs: list[dict[str, Any]], workers: int) -> dict[str, Any]:
    def median(n: int, key: str) -> float | None:
        values = [r[key] for r in runs if r["workers"] == n and r.get(key) is not None]
        return statistics.median(values) if values else None

    one, many = median(1, "deliveries_per_s"), median(workers, "deliveries_per_s")
    p1 = median(1, "projected_deliveries_per_s_whole_cores")
    pn = median(workers, "projected_deliveries_per_s_whole_cores")
    return {
        "workers": workers,
        "deliveries_per_s_median_1": one,
        f"deliveries_per_s_median_{workers}": many,
        "measured_ratio": round(many / one, 2) if one and many else None,
        "projected_ratio_whole_cores": round(pn / p1, 2) if p1 and pn else None,
        "server_cpu_us_per_delivery_median_1": median(1, "server_cpu_us_per_delivery"),
        f"server_cpu_us_per_delivery_median_{workers}": median(
            workers, "server_cpu_us_per_delivery"
        ),
        "client_cpu_us_per_delivery_median": statistics.median(
            r["client_cpu_us_per_delivery"] for r in runs if r["client_cpu_us_per_delivery"]
        )
        if runs
        else None,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "workload": {
            "connections": args.connections,
            "channels": args.channels,
            "events": args.events,
            "payload_bytes_about": len(payload(0, "w0", "x" * args.pad)),
            "server_cores": args.server_cores,
            "client_core": args.client_core,
        },
        "note": "2-core machine shared with other work; the load client, Tansu and the fake "
        "booking-api run on the client core, which the gateway shares.",
        "runs": [],
    }
    async with broker_and_origin("workers-") as (tmp, broker, booking):
        for _ in range(args.repeat):
            for workers in (1, args.workers):
                run = await run_once(args, broker, booking, workers, tmp)
                print(json.dumps(run), flush=True)
                results["runs"].append(run)
    results["scaling"] = scaling(results["runs"], args.workers)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="compared with 1 worker")
    parser.add_argument("--connections", type=int, default=400)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--events", type=int, default=4000, help="backlog records")
    parser.add_argument(
        "--pause", type=float, default=0.05, help="client seconds between polls (batches reads)"
    )
    parser.add_argument("--pad", type=int, default=250, help="payload padding bytes")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of 1 and N workers")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to deliver all")
    parser.add_argument(
        "--server-cores",
        default="0,1",
        help="CPU list of the gateway, 1 worker or N: the same cores for both, so that only "
        "the worker count differs (other work pinned to one core would otherwise weigh on "
        "the 1-worker run alone)",
    )
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    hard = raise_open_file_limit()
    args.connections = min(args.connections, hard - 500)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with pinned(args.client_core):
        results = uvloop.run(main_async(args))
    print(json.dumps(results["scaling"]))
    written = record_results(args.results_dir, "workers", results)
    print(f"written to {written} (and appended to history.jsonl)")


if __name__ == "__main__":
    main()
