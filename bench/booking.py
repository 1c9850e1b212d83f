"""Bookings per second through HTTP on one booking-api process (memory backend).

Starts ``python -m booking_api`` (uvicorn + uvloop + httptools, one process) on a free
port, creates instructors and one-hour slots through the API, then books every slot once
from many concurrent keep-alive connections with a lean asyncio HTTP/1.1 client (request
bytes prepared up front, so the client costs little of the shared CPU). Prints bookings/s
and latency percentiles and writes ``bench/results/booking.json``. Bounded: setup and the
measured phase each stop after a fixed time.

    .venv/bin/python bench/booking.py [--slots 12000] [--connections 64] [--seconds 20]
"""

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvloop
from pydantic import SecretStr

from slotstream_contracts.auth import JwtSettings, Role, mint_token
from slotstream_testkit.benchkit import add_results_dir_option, record_results
from slotstream_testkit.net import free_port, wait_for_port

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SECRET = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
JWT = JwtSettings(secret=SecretStr(SECRET))
TARGET_PER_SECOND = 2000


class Connection:
    """One keep-alive HTTP/1.1 connection: send a prepared request, read one response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> "Connection":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        self.writer.close()


def post(path: str, body: bytes, token: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass
class Phase:
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    elapsed: float = 0.0


async def run_phase(
    port: int, requests: list[bytes], connections: int, deadline_s: float, keep_bodies: bool
) -> Phase:
    """Send ``requests`` over ``connections`` concurrent connections, as fast as answered."""
    phase = Phase()
    queue = iter(requests)
    pool = [await Connection.open(port) for _ in range(connections)]
    started = time.perf_counter()
    stop_at = started + deadline_s

    async def worker(conn: Connection) -> None:
        for raw in queue:
            if time.perf_counter() > stop_at:
                return
            sent = time.perf_counter()
            status, body = await conn.request(raw)
            phase.latencies.append(time.perf_counter() - sent)
            phase.statuses[status] = phase.statuses.get(status, 0) + 1
            if keep_bodies:
                phase.bodies.append(body)

    try:
        await asyncio.gather(*(worker(c) for c in pool))
    finally:
        phase.elapsed = time.perf_counter() - started
        for conn in pool:
            conn.close()
    return phase


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench(
    port: int, server_pid: int, slots: int, connections: int, seconds: float
) -> dict[str, object]:
    instructors = max(1, slots // 250)
    per_instructor = -(-slots // instructors)
    tokens = {
        f"bench-i{n}": mint_token(JWT, f"bench-i{n}", Role.INSTRUCTOR) for n in range(instructors)
    }
    setup = [
        post("/api/instructors", json.dumps({"name": iid}).encode(), token)
        for iid, token in tokens.items()
    ]
    created = await run_phase(port, setup, min(connections, len(setup)), 30, keep_bodies=False)
    assert created.statuses == {201: instructors}, created.statuses
    base = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    slot_requests = []
    for iid, token in tokens.items():
        for n in range(per_instructor):
            start = base + timedelta(hours=n)
            body = json.dumps(
                {"start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat()}
            ).encode()
            slot_requests.append(post(f"/api/instructors/{iid}/slots", body, token))
    slot_phase = await run_phase(port, slot_requests, connections, 40, keep_bodies=True)
    slot_ids = [json.loads(b)["id"] for b in slot_phase.bodies if b.startswith(b'{"id"')]
    students = [mint_token(JWT, f"bench-s{n}", Role.STUDENT) for n in range(500)]
    bookings = [
        post("/api/bookings", json.dumps({"slotId": sid}).encode(), students[n % len(students)])
        for n, sid in enumerate(slot_ids)
    ]
    server_cpu, client_cpu = cpu_seconds(server_pid), time.process_time()
    measured = await run_phase(port, bookings, connections, seconds, keep_bodies=False)
    server_cpu = cpu_seconds(server_pid) - server_cpu
    client_cpu = time.process_time() - client_cpu
    created_count = measured.statuses.get(201, 0)
    return {
        "description": "booking-api bookings through HTTP, memory backend, one uvicorn process",
        "when": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "connections": connections,
        "slots_created": len(slot_ids),
        "slot_creations_per_second": round(len(slot_ids) / slot_phase.elapsed, 1),
        "bookings_attempted": sum(measured.statuses.values()),
        "bookings_created": created_count,
        "statuses": {str(k): v for k, v in sorted(measured.statuses.items())},
        "seconds": round(measured.elapsed, 3),
        "bookings_per_second": round(created_count / measured.elapsed, 1),
        # The machine is shared: the server's own CPU time gives its capacity per core,
        # whatever else was running (one process uses at most one core).
        "server_cpu_seconds": round(server_cpu, 3),
        "bookings_per_server_cpu_second": round(created_count / server_cpu, 1)
        if server_cpu
        else None,
        "client_cpu_seconds": round(client_cpu, 3),
        "load_average_1m": os.getloadavg()[0],
        "latency_ms": {
            "p50": round(percentile(measured.latencies, 0.50) * 1000, 2),
            "p90": round(percentile(measured.latencies, 0.90) * 1000, 2),
            "p99": round(percentile(measured.latencies, 0.99) * 1000, 2),
            "mean": round(statistics.fmean(measured.latencies) * 1000, 2)
            if measured.latencies
            else 0.0,
        },
        "target_bookings_per_second": TARGET_PER_SECOND,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", type=int, default=12_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0, help="cap on the measured phase")
    add_results_dir_option(parser, RESULTS_DIR, "booking")
    args = parser.parse_args()
    port = free_port()
    env = {
        **os.environ,
        "BOOKING_API_STORAGE": "memory",
        "BOOKING_API_JWT__SECRET": SECRET,
        "BOOKING_API_PORT": str(port),
        "BOOKING_API_LOG__LEVEL": "WARNING",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "booking_api"], env=env, stdout=subprocess.DEVNULL
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=30)
        result = uvloop.run(bench(port, server.pid, args.slots, args.connections, args.seconds))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    written = record_results(args.results_dir, "booking", result)
    latency = result["latency_ms"]
    assert isinstance(latency, dict)
    print(
        f"booking-api: {result['bookings_per_second']} bookings/s "
        f"({result['bookings_created']} in {result['seconds']} s, {args.connections} connections), "
        f"latency p50 {latency['p50']} ms, p99 {latency['p99']} ms; "
        f"{result['bookings_per_server_cpu_second']} bookings per server CPU-second "
        f"(load average {result['load_average_1m']:.1f} on {os.cpu_count()} CPUs; "
        f"target {TARGET_PER_SECOND}/s) -> {written}"
    )


if __name__ == "__main__":
    main()
