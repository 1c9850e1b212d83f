"""Connect-storm benchmark: how fast one push-gateway core opens thousands of SSE streams.

One gateway pinned to one core (Tansu and a fake booking-api that answers every schedule
request with a small snapshot on the other), and a load client on the other core that opens
N streams spread over C schedule channels with raw asyncio sockets, as fast as the listen
backlog allows (at most --in-flight requests waiting for their snapshot). Reports streams/s,
the time to open all, time-to-first-snapshot-byte p50/p99 (request written -> the
``event: snapshot`` frame read) and the gateway's CPU seconds for the storm (its process
tree, from /proc; the client's own CPU apart) and the load average. A storm's wall time on a
shared machine is mostly other work's: the gateway's CPU seconds per storm is the figure
to compare ("10,000 streams in 2 s on one core" needs under 2). Results:
bench/results/connect_storm.json (latest) and bench/results/history.jsonl.

    .venv/bin/python bench/connect_storm.py                      # 10,000 streams, 500 channels
    .venv/bin/python bench/connect_storm.py --streams 2000 --repeat 3
    .venv/bin/python bench/connect_storm.py --profile /tmp/storm.svg   # py-spy, if installed

Figures are noisy when other work shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import uvloop

from slotstream_testkit.benchkit import add_results_dir_option, env_assignments, record_results
from slotstream_testkit.kafka import TansuBroker
from slotstream_testkit.net import raise_open_file_limit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the fan-out benchmark's servers and tools
from bench.fanout import (  # noqa: E402
    FakeBookingApi,
    GatewayServer,
    fresh_topics,
    own_cpu_seconds,
    percentile,
    pinned,
    start_profiler,
    tree_cpu_seconds,
)

RESULTS_DIR = ROOT / "bench" / "results"
SNAPSHOT_MARK = b"event: snapshot"


class StormClient(asyncio.Protocol):
    """One stream: writes its request on connect, notes when the snapshot frame arrives."""

    __slots__ = ("request", "sent", "first_snapshot", "transport", "status", "done", "tail")

    def __init__(self, request: bytes, done: asyncio.Future[None]) -> None:
        self.request = request
        self.sent = 0
        self.first_snapshot = 0
        self.transport: asyncio.Transport | None = None
        self.status = b""
        self.done = done
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.sent = time.monotonic_ns()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.first_snapshot:
            return
        if not self.status:
            self.status = data[9:12]
            if self.status != b"200":
                self._finish()
                return
        joined = self.tail + data
        if SNAPSHOT_MARK in joined:
            self.first_snapshot = time.monotonic_ns()
            self._finish()
        else:
            self.tail = joined[-len(SNAPSHOT_MARK) :]

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - any cause
        self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


@dataclass
class Storm:
    clients: list[StormClient] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def close(self) -> None:
        for client in self.clients:
            if client.transport is not None:
                client.transport.abort()


async def storm(
    port: int, paths: list[str], in_flight: int, result: Storm, forwarded_for: int = 0
) -> float:
    """Open every path; returns the seconds until the last snapshot arrived. With
    ``forwarded_for`` N, request i carries ``X-Forwarded-For`` as a proxy in front of the
    gateway forwards it (a client's own entry, then client i mod N's address appended)."""
    loop = asyncio.get_running_loop()
    semaphore = asyncio.Semaphore(in_flight)
    count = iter(range(len(paths)))

    async def one(path: str) -> None:
        async with semaphore:
            done: asyncio.Future[None] = loop.create_future()
            n = next(count)
            forwarded = (
                f"X-Forwarded-For: 198.51.100.7, 203.0.{n % forwarded_for // 256}."
                f"{n % forwarded_for % 256}\r\n"
                if forwarded_for
                else ""
            )
            request = (
                f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n"
                f"{forwarded}\r\n"
            )
            client = StormClient(request.encode(), done)
            try:
                await loop.create_connection(lambda: client, "127.0.0.1", port)
            except OSError as exc:
                name = type(exc).__name__
                result.errors[name] = result.errors.get(name, 0) + 1
                return
            result.clients.append(client)
            try:
                await asyncio.wait_for(done, 30)
            except TimeoutError:
                result.errors["timeout"] = result.errors.get("timeout", 0) + 1

    t0 = time.monotonic()
    await asyncio.gather(*(one(p) for p in paths))
    return time.monotonic() - t0


async def run_once(
    gateway: GatewayServer, args: argparse.Namespace, tmp: Path, label: str
) -> dict[str, Any]:
    await gateway.start(tmp, str(args.server_core))
    profiler: subprocess.Popen[bytes] | None = None
    try:
        channels = [f"i{n}" for n in range(args.channels)]
        paths = [gateway.sub_path(channels[n % len(channels)]) for n in range(args.streams)]
        await asyncio.sleep(1.0)  # let the gateway settle (Kafka assignment, first fetches)
        if args.profile:
            profiler = start_profiler(gateway.pid, args.profile)
            await asyncio.sleep(1.0)
        load_average = os.getloadavg()[0]
        cpu_before = tree_cpu_seconds(gateway.pid)
        client_before = own_cpu_seconds()
        result = Storm()
        seconds = await storm(gateway.port, paths, args.in_flight, result, args.forwarded_for)
        cpu = tree_cpu_seconds(gateway.pid) - cpu_before
        client_cpu = own_cpu_seconds() - client_before
        opened = [c for c in result.clients if c.first_snapshot]
        ttfb_ns = [c.first_snapshot - c.sent for c in opened]
        statuses: dict[str, int] = {}
        for client in result.clients:
            if client.status and client.status != b"200":
                key = client.status.decode("latin-1")
                statuses[key] = statuses.get(key, 0) + 1
        result.close()
        return {
            "label": label,
            "load_average_1m": round(load_average, 2),
            "streams": args.streams,
            "channels": args.channels,
            "opened": len(opened),
            "seconds_to_open_all": round(seconds, 3),
            "streams_per_s": round(len(opened) / seconds) if seconds else None,
            "ttfb_ms_p50": _round(percentile(ttfb_ns, 0.50)),
            "ttfb_ms_p99": _round(percentile(ttfb_ns, 0.99)),
            "server_cpu_s": round(cpu, 3),
            "server_cpu_us_per_stream": round(cpu / len(opened) * 1e6, 1) if opened else None,
            # the load client's process (with the fake booking-api it hosts): on another core
            "client_cpu_s": round(client_cpu, 3),
            "snapshot_requests_at_origin": gateway.booking.requests,
            "errors": result.errors,
            "non_200": statuses,
        }
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            await asyncio.to_thread(profiler.wait, 30)
        await gateway.close_producer()
        await gateway.stop()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "connect_storm",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        "workload": {
            "streams": args.streams,
            "channels": args.channels,
            "in_flight": args.in_flight,
            "forwarded_for": args.forwarded_for,
            "server_core": args.server_core,
            "client_core": args.client_core,
        },
        "note": "2-core machine shared with other work: figures are noisy; the load "
        "client, Tansu and the fake booking-api share the client core.",
        "runs": [],
    }
    async with broker_and_origin("storm-") as (tmp, broker, booking):
        for round_ in range(args.repeat):
            topics = await fresh_topics(broker.bootstrap_servers)
            gateway = GatewayServer(broker.bootstrap_servers, topics, booking)
            gateway.extra_env = env_assignments(args.gateway_env)
            booking.requests = 0
            run = await run_once(gateway, args, tmp, f"{args.label}#{round_ + 1}")
            print(json.dumps(run))
            results["runs"].append(run)
    return results


@contextlib.asynccontextmanager
async def broker_and_origin(prefix: str) -> AsyncIterator[tuple[Path, TansuBroker, FakeBookingApi]]:
    """A temporary directory, Tansu and the fake booking-api, for one benchmark run."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp_name:
        tmp = Path(tmp_name)
        booking = FakeBookingApi()
        await booking.start()
        broker = TansuBroker(log_path=tmp / "tansu.log")
        await asyncio.to_thread(broker.start)
        try:
            yield tmp, broker, booking
        finally:
            await booking.stop()
            broker.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=500)
    parser.add_argument(
        "--in-flight", type=int, default=1000, help="requests waiting for their snapshot at most"
    )
    parser.add_argument(
        "--forwarded-for",
        type=int,
        default=0,
        metavar="N",
        help="requests carry X-Forwarded-For naming N client addresses, as through a proxy",
    )
    parser.add_argument("--repeat", type=int, default=3, help="storms, each on a fresh gateway")
    parser.add_argument("--label", default="gateway", help="names the runs in the JSON")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the gateway, e.g. GATEWAY_PRESENCE_EVENTS=true",
    )
    parser.add_argument("--profile", type=Path, help="py-spy flame graph of the gateway (SVG)")
    add_results_dir_option(parser, RESULTS_DIR, "connect_storm")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    hard = raise_open_file_limit()
    if args.streams > hard - 500:
        args.streams = hard - 500
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with pinned(args.client_core):
        results = uvloop.run(main_async(args))
    runs = results["runs"]
    if runs:
        median = {
            key: statistics.median(r[key] for r in runs)
            for key in ("seconds_to_open_all", "server_cpu_s", "client_cpu_s", "load_average_1m")
        }
        results["median"] = median
        print(
            f"{args.streams} streams over {args.channels} channels, median of {len(runs)}: all"
            f" open in {median['seconds_to_open_all']} s, gateway CPU {median['server_cpu_s']} s,"
            f" client CPU {median['client_cpu_s']} s, load average {median['load_average_1m']}"
        )
    written = record_results(args.results_dir, "connect_storm", results)
    print(f"written to {written} (and appended to history.jsonl)")


if __name__ == "__main__":
    main()
