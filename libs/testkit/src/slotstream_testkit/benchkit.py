"""Shared pieces of the load benchmarks in ``bench/``: counting what a stream received,
recording results with the machine they came from, and the README's performance table.

Loss is counted per connection by unique ``(channel, seq)``: each benchmark event carries
``"seq":N`` (unique per published event) and ``"ch":"<channel>"`` in its payload. A
duplicate delivery is counted apart, so it can no longer hide a lost one (counting every
``"ts":`` token did exactly that).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiokafka import AIOKafkaProducer

SEQ_TOKEN: Final = b'"seq":'
CH_TOKEN: Final = b'"ch":"'
TS_TOKEN: Final = b'"ts":'
FRAME_END: Final = b"\n\n"
#: the benchmarks' payloads put the channel right after the sequence number: one C scan
#: finds both for every event of a chunk (the general walk costs ~3 µs an event in Python,
#: a third of what the server spends on the delivery at 100 k/s)
SEQ_THEN_CH: Final = re.compile(rb'"seq":(-?\d+),"ch":"([^"]*)"')


def _digits_end(data: bytes, start: int) -> int:
    end = start
    if data[end : end + 1] == b"-":
        end += 1
    while data[end : end + 1].isdigit():
        end += 1
    return end


@dataclass(slots=True)
class StreamCount:
    """What one connection received: unique ``(channel, seq)`` and duplicates.

    ``feed`` takes raw bytes as they arrive (any split); only complete SSE frames are
    parsed. With ``latencies`` set, each event's ``"ts":`` (publish time, ns) is turned into
    a latency sample against ``now_ns``.
    """

    seen: set[tuple[bytes, int]] = field(default_factory=set)
    duplicates: int = 0
    events: int = 0
    pending: bytes = b""

    def feed(self, data: bytes, now_ns: int = 0, latencies: list[int] | None = None) -> None:
        buffer = self.pending + data if self.pending else data
        cut = buffer.rfind(FRAME_END)
        if cut < 0:
            self.pending = buffer
            return
        complete, self.pending = buffer[: cut + 2], buffer[cut + 2 :]
        if latencies is None:
            found = SEQ_THEN_CH.findall(complete)
            if len(found) == complete.count(SEQ_TOKEN):
                seen = self.seen
                before = len(seen)
                seen.update([(channel, int(seq)) for seq, channel in found])
                self.events += len(found)
                self.duplicates += len(found) - (len(seen) - before)
                return
        self._walk(complete, now_ns, latencies)

    def _walk(self, complete: bytes, now_ns: int, latencies: list[int] | None) -> None:
        """Every frame's ``"seq":``, its ``"ch":"`` and ``"ts":`` in any order (and the
        latency samples)."""
        seen = self.seen
        position = complete.find(SEQ_TOKEN)
        while position >= 0:
            start = position + len(SEQ_TOKEN)
            end = _digits_end(complete, start)
            seq = int(complete[start:end])
            frame_start = complete.rfind(FRAME_END, 0, position) + 1
            frame_end = complete.find(FRAME_END, end)
            channel = b""
            at = complete.find(CH_TOKEN, frame_start, frame_end)
            if at >= 0:
                at += len(CH_TOKEN)
                channel = complete[at : complete.find(b'"', at)]
            if latencies is not None:
                ts = complete.find(TS_TOKEN, frame_start, frame_end)
                if ts >= 0:
                    ts += len(TS_TOKEN)
                    latencies.append(now_ns - int(complete[ts : _digits_end(complete, ts)]))
            self.events += 1
            key = (channel, seq)
            if key in seen:
                self.duplicates += 1
            else:
                seen.add(key)
            position = complete.find(SEQ_TOKEN, frame_end)


@dataclass(frozen=True, slots=True)
class Tally:
    expected: int
    received_unique: int
    lost: int
    duplicates: int
    foreign: int

    @property
    def loss_fraction(self) -> float | None:
        return round(self.lost / self.expected, 6) if self.expected else None


def tally(
    published: Mapping[bytes, set[int]], connections: Iterable[tuple[bytes, StreamCount]]
) -> Tally:
    """Per connection (subscribed to one channel): every event published on its channel
    must have arrived once. ``lost`` sums the missing ones, ``duplicates`` the repeats,
    ``foreign`` unique events that were never published on that channel."""
    expected = received = lost = duplicates = foreign = 0
    for channel, count in connections:
        wanted = published.get(channel, set())
        got = {seq for ch, seq in count.seen if ch == channel}
        arrived = len(got & wanted)
        expected += len(wanted)
        received += arrived
        lost += len(wanted) - arrived
        foreign += len(count.seen) - arrived
        duplicates += count.duplicates
    return Tally(expected, received, lost, duplicates, foreign)


class StreamBuffer:
    """Everything one connection receives, kept for counting after the measurement.

    A saturation benchmark cannot afford to look at frames while it measures: on a small
    machine the client shares the cores with the server, and per-frame work (parsing, or
    even ``bytes.count`` over every byte) costs a fair part of what the server spends on
    the delivery. So the socket is read straight into one preallocated buffer
    (``recv_into``: the kernel's copy is the only one, and the pages were touched when it
    was allocated); while the clock runs the client only asks whether the last bytes hold
    the stream's final event (:meth:`tail_contains`). :meth:`count` parses it all
    afterwards with :class:`StreamCount`: unique ``(channel, seq)``, duplicates, nothing
    dropped from the check.
    """

    __slots__ = ("buffer", "size")

    def __init__(self, capacity: int) -> None:
        #: bytearray(n) writes n zero bytes: every page is faulted in here, not mid-run
        self.buffer = bytearray(max(capacity, 4096))
        self.size = 0

    def receive(self, sock: socket.socket) -> int:
        """One non-blocking read; returns the bytes read, 0 when the peer closed, -1 when
        nothing was waiting. Grows the buffer (doubles it) rather than refusing bytes."""
        if self.size == len(self.buffer):
            self.buffer.extend(bytes(len(self.buffer)))
        try:
            with memoryview(self.buffer) as view:
                read = sock.recv_into(view[self.size :])
        except (BlockingIOError, InterruptedError):
            return -1
        self.size += read
        return read

    def tail_contains(self, token: bytes, window: int) -> bool:
        """Whether ``token`` is in the last ``window`` bytes: a look that costs the same
        however much arrived."""
        return self.buffer.find(token, max(0, self.size - window), self.size) >= 0

    def contains(self, token: bytes) -> bool:
        return self.buffer.find(token, 0, self.size) >= 0

    def data(self) -> bytes:
        return bytes(self.buffer[: self.size])

    def count(self, parsed: dict[bytes, StreamCount] | None = None) -> StreamCount:
        """Parse what arrived (after the run). ``parsed`` memoizes by content: subscribers
        of one channel usually got the same bytes, which parse to the same result."""
        data = self.data()
        if parsed is not None and data in parsed:
            return parsed[data]
        counted = StreamCount()
        counted.feed(data)
        if parsed is not None:
            parsed[data] = counted
        return counted


def latency_cdf_ms(samples_ns: list[int], points: int = 100) -> list[list[float]]:
    """``[[latency ms, cumulative fraction], …]`` at ``points`` evenly spaced fractions
    plus the 99.9th percentile: enough to draw a CDF without storing every sample."""
    if not samples_ns:
        return []
    ordered = sorted(samples_ns)
    fractions = [i / points for i in range(1, points)] + [0.999, 1.0]
    return [
        [round(ordered[min(len(ordered) - 1, int(len(ordered) * f))] / 1e6, 3), f]
        for f in sorted(set(fractions))
    ]


def arrivals_report(
    members: Iterable[tuple[int, bool]],
    arrived: Mapping[int, int],
    read: Mapping[int, int],
) -> dict[str, Any]:
    """What ``bench/e2e_latency.py``'s load client reports for one watched frame: when it
    arrived at each client that saw it (``members``: client number, whether it is connected
    straight to a gateway rather than through the edge), how many never saw it (and how
    many of those were straight on a gateway: a miss there is not the edge's), and when
    the load client read it at the clients through the edge (``read``: later than the
    arrival by the load client's own queue)."""
    clients = list(members)
    return {
        "arrivals": [arrived[n] for n, direct in clients if not direct and n in arrived],
        "direct": [arrived[n] for n, direct in clients if direct and n in arrived],
        "missed": sum(1 for n, _ in clients if n not in arrived),
        "missed_straight_from_a_gateway": sum(
            1 for n, direct in clients if direct and n not in arrived
        ),
        "read": [read[n] for n, direct in clients if not direct and n in read],
    }


# -- results: machine, load, commit; history and latest -----------------------------------
def env_assignments(values: Iterable[str]) -> dict[str, str]:
    """The benches' ``--gateway-env``/``--publisher-env`` values (``NAME=VALUE``) as a dict."""
    found: dict[str, str] = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
        found[name] = setting
    return found


def machine() -> dict[str, Any]:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def git_commit(root: Path) -> str | None:
    """The checked-out commit, ``-dirty`` when tracked files other than the benchmark
    outputs (results, plots) differ from it."""
    try:
        commit = _git(root, "rev-parse", "--short=12", "HEAD")
        dirty = _git(
            root,
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ":/",
            ":(top,exclude)bench/results",
            ":(top,exclude)docs/img",
            ":(top,exclude)README.md",
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def add_results_dir_option(parser: argparse.ArgumentParser, default: Path, benchmark: str) -> None:
    """``--results-dir``: where :func:`record_results` writes, so that an ad-hoc run (an A/B
    pair, a probe of the host) can leave the committed ``bench/results`` alone."""
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=default,
        help=f"appends to history.jsonl there and writes {benchmark}.json (the latest)",
    )


def record_results(results_dir: Path, benchmark: str, results: dict[str, Any]) -> Path:
    """Stamp ``results`` (machine, load averages, git commit, UTC time), append them as one
    line to ``history.jsonl`` and write them as ``<benchmark>.json`` (the latest). The
    commit is the checkout this code runs from, wherever the results go."""
    stamped = {
        "benchmark": benchmark,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": git_commit(Path(__file__).resolve().parent),
        "machine": machine(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        **{k: v for k, v in results.items() if k not in ("benchmark", "when", "machine")},
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    with (results_dir / "history.jsonl").open("a") as history:
        history.write(json.dumps(stamped, separators=(",", ":")) + "\n")
    latest = results_dir / f"{benchmark}.json"
    latest.write_text(json.dumps(stamped, indent=2) + "\n")
    return latest


def load_latest(results_dir: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(results_dir.glob("*.json")):
        data = json.loads(path.read_text())
        found[data.get("benchmark", path.stem)] = data
    return found


def load_history(results_dir: Path) -> list[dict[str, Any]]:
    path = results_dir / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def backlog_producer(bootstrap: str, compression: str | None = None) -> AIOKafkaProducer:
    """A started producer for filling a backlog fast (big batches, leader ack only)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=False,
        compression_type=compression,
        linger_ms=5,
        max_batch_size=512 * 1024,
        acks=1,
    )
    await producer.start()
    return producer


# -- the README's performance table --------------------------------------------------------
TABLE_START: Final = "<!-- bench-table:start (generated by bench/report.py from bench/results) -->"
TABLE_END: Final = "<!-- bench-table:end -->"


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _stamp(data: Mapping[str, Any]) -> str:
    load = data.get("load_average") or ["?"]
    return f"{data.get('when', '?')}, `{data.get('commit') or '?'}`, load {load[0]}"


def _booking_row(data: Mapping[str, Any]) -> str:
    latency = data.get("latency_ms") or {}
    return (
        f"| `bench/booking.py` | {_num(data.get('bookings_per_second'), 0)} bookings/s, "
        f"p50 {_num(latency.get('p50'))} ms, p99 {_num(latency.get('p99'))} ms, "
        f"{_num(data.get('bookings_per_server_cpu_second'), 0)} bookings per server CPU-second "
        f"| {_stamp(data)} |"
    )


def _publisher_row(data: Mapping[str, Any]) -> str:
    latency = data.get("latency") or {}
    return (
        f"| `bench/publisher.py` | {_num(data.get('events_per_second'), 0)} events/s, "
        f"{_num(data.get('cpu_us_per_event'))} µs CPU per event, "
        f"p99 change→ack {_num(latency.get('p99_ms'))} ms | {_stamp(data)} |"
    )


def _fanout_rows(data: Mapping[str, Any]) -> list[str]:
    rows = []
    for run in data.get("runs", []):
        if "skipped" in run:
            rows.append(f"| `bench/fanout.py` {run['server']} | skipped: {run['skipped']} | |")
            continue
        loss = run.get("loss_fraction")
        rows.append(
            f"| `bench/fanout.py` {run['server']}, {_num(run.get('connections_open'))} conns "
            f"| {_num(run.get('deliveries_per_s'))} deliveries/s "
            f"(offered {_num(run.get('offered_deliveries_per_s'))}), "
            f"loss {'–' if loss is None else f'{loss:.2%}'}, "
            f"duplicates {_num(run.get('duplicates'))}, "
            f"p50 {_num(run.get('latency_ms_p50'))} / p99 {_num(run.get('latency_ms_p99'))} ms, "
            f"{_num(run.get('server_cpu_us_per_delivery'))} µs server CPU per delivery, "
            f"{_num(run.get('rss_per_connection_kb'), 2)} kB RSS per connection "
            f"| {_stamp(data)} |"
        )
    ingest = data.get("ingest")
    if ingest:
        rows.append(
            f"| `bench/fanout.py` ingest, no subscriber "
            f"| {_num(ingest.get('records_per_s'))} records/s drained, "
            f"{_num(ingest.get('server_cpu_us_per_record'), 2)} µs gateway CPU per record "
            f"| {_stamp(data)} |"
        )
    return rows


def _ingest_row(data: Mapping[str, Any]) -> str:
    return (
        f"| `bench/ingest.py` gateway ingest, no subscriber, in process "
        f"({str(data.get('compression', 'none')).replace('none', 'uncompressed')} batches) "
        f"| {_num(data.get('gateway_cpu_us_per_record'), 2)} µs CPU per record "
        f"({data.get('decoder', 'lean')} decoder; in the same run: lean records from "
        f"aiokafka's batches {_num(data.get('previous_lean_cpu_us_per_record'), 2)} µs, "
        f"aiokafka's stock records "
        f"{_num(data.get('baseline_aiokafka_cpu_us_per_record'), 2)} µs), "
        f"{_num(data.get('cpu_bound_records_per_s'))} records/s CPU-bound "
        f"| {_stamp(data)} |"
    )


def _connect_storm_row(data: Mapping[str, Any]) -> str:
    runs = [r for r in data.get("runs", []) if r.get("opened")]
    seconds = sorted(r["seconds_to_open_all"] for r in runs)
    cpu = sorted(r["server_cpu_s"] for r in runs)
    return (
        f"| `bench/connect_storm.py` {_num(runs[0]['streams'] if runs else None)} streams, "
        f"one core | all open in {_num(seconds[len(seconds) // 2] if seconds else None, 2)} s "
        f"(median of {len(runs)}), gateway CPU {_num(cpu[len(cpu) // 2] if cpu else None, 2)} s "
        f"per storm | {_stamp(data)} |"
    )


def _workers_row(data: Mapping[str, Any]) -> str:
    scaling = data.get("scaling") or {}
    n = scaling.get("workers", 2)
    priority = (data.get("workload") or {}).get("priority")
    ahead = f", ahead of other work (`--priority {priority}`)" if priority else ""
    return (
        f"| `bench/workers.py` 1 vs {n} workers | {_num(scaling.get('deliveries_per_s_median_1'))}"
        f" vs {_num(scaling.get(f'deliveries_per_s_median_{n}'))} deliveries/s "
        f"(×{_num(scaling.get('measured_ratio'), 2)} measured{ahead}; server "
        f"{_num(scaling.get('server_cpu_us_per_delivery_median_1'), 2)} vs "
        f"{_num(scaling.get(f'server_cpu_us_per_delivery_median_{n}'), 2)} µs CPU per delivery), "
        f"client {_num(scaling.get('client_cpu_us_per_delivery_median'), 2)} µs CPU per delivery, "
        f"every delivery checked: {scaling.get('deliveries_lost', '?')} lost, "
        f"{scaling.get('duplicates', '?')} duplicated | {_stamp(data)} |"
    )


def _e2e_rows(data: Mapping[str, Any]) -> list[str]:
    rows = []
    for phase in data.get("phases", []):
        latency = phase.get("commit_to_frame_ms") or {}
        stages = phase.get("stages") or {}
        cores = phase.get("cores_used") or {}
        load = phase.get("load_average_before") or ["?"]
        fetched = " / ".join(_num(g.get("fetch_delay_ms_p50")) for g in phase.get("gateways", []))
        per_run = phase.get("commit_to_frame_p99_ms_per_run") or []
        notes = []
        if len(per_run) > 1:
            notes.append(f"each run's p99 {_num(min(per_run))}–{_num(max(per_run))}")
        read = phase.get("commit_to_read_ms")
        if read:
            notes.append(
                f"as read by the load client p50 {_num(read.get('p50'))} / "
                f"p99 {_num(read.get('p99'))}"
            )
        at_socket = phase.get("frames_stamped_at_the_socket")
        if at_socket:
            notes.append(
                f"{_num(at_socket)} of {_num(phase.get('frames_measured'))} frames stamped by "
                "the socket, not per segment"
            )
        runs = f" over {len(per_run)} runs" if len(per_run) > 1 else ""
        said = f" ({'; '.join(notes)})" if notes else ""
        where = " at the client's socket" if read else ""
        rows.append(
            f"| `bench/e2e_latency.py` {phase.get('phase')}, {_num(phase.get('clients'))} "
            f"clients | booking commit → browser frame{where} p50 {_num(latency.get('p50'))} / "
            f"p99 {_num(latency.get('p99'))} ms{runs}{said} at "
            f"{_num(phase.get('deliveries_per_s_measured'))} deliveries/s; per booking "
            f"(medians) commit → produced {_num(stages.get('commit_to_produced_ms'))}, "
            f"→ frame {_num(stages.get('produced_to_frame_p50_ms'))} (straight from a gateway "
            f"{_num(stages.get('produced_to_direct_frame_p50_ms'))}) ms; the gateways' "
            f"produced → fetched p50 {fetched or '–'} ms; load client "
            f"{_num(cores.get('load-client'), 2)} cores, load {load[0]} "
            f"| {_stamp(data)} |"
        )
    return rows


def render_readme_table(latest: Mapping[str, Mapping[str, Any]]) -> str:
    rows = ["| benchmark | latest figures | when, commit, load average |", "|---|---|---|"]
    if "booking" in latest:
        rows.append(_booking_row(latest["booking"]))
    if "publisher" in latest:
        rows.append(_publisher_row(latest["publisher"]))
    if "fanout" in latest:
        rows.extend(_fanout_rows(latest["fanout"]))
    if "ingest" in latest:
        rows.append(_ingest_row(latest["ingest"]))
    if "fanout_sizes" in latest:
        rows.extend(_sizes_rows(latest["fanout_sizes"]))
    if "connect_storm" in latest:
        rows.append(_connect_storm_row(latest["connect_storm"]))
    if "workers" in latest:
        rows.append(_workers_row(latest["workers"]))
    if "e2e_latency" in latest:
        rows.extend(_e2e_rows(latest["e2e_latency"]))
    return "\n".join(rows)


def sizes_summary(runs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``bench/fanout.py --sizes`` at one size over its rounds: each server's median CPU per
    delivery and RSS per connection, and the ratio gateway / Nchan as the median of the
    rounds' paired ratios (a round runs both servers back to back, so its ratio compares
    them on the same machine state; the medians of each alone are kept beside it)."""
    by_round: dict[int, dict[str, float]] = {}
    cpu: dict[str, list[float]] = {}
    rss: dict[str, list[float]] = {}
    for run in runs:
        if "skipped" in run or not run.get("server_cpu_us_per_delivery"):
            continue
        server = run["server"]
        value = float(run["server_cpu_us_per_delivery"])
        cpu.setdefault(server, []).append(value)
        if run.get("rss_per_connection_kb") is not None:
            rss.setdefault(server, []).append(float(run["rss_per_connection_kb"]))
        by_round.setdefault(int(run.get("round", 0)), {})[server] = value
    ratios = [
        round(pair["push-gateway"] / pair["nchan"], 3)
        for _, pair in sorted(by_round.items())
        if "push-gateway" in pair and "nchan" in pair
    ]
    return {
        "cpu_us_per_delivery": {s: _median(v) for s, v in cpu.items()},
        "cpu_us_per_delivery_runs": cpu,
        "rss_per_connection_kb": {s: _median(v) for s, v in rss.items()},
        "ratios": ratios,
        "ratio": _median(ratios) if ratios else None,
    }


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _sizes_rows(data: Mapping[str, Any]) -> list[str]:
    """One row per size of ``bench/fanout.py --sizes``: gateway vs Nchan, same run (the
    medians over the rounds, when the run had several)."""
    rows = []
    for size in data.get("sizes", []):
        summary = size.get("summary") or sizes_summary(size.get("runs", []))
        cpu, rss = summary["cpu_us_per_delivery"], summary["rss_per_connection_kb"]
        mine, theirs = cpu.get("push-gateway"), cpu.get("nchan")
        ratios = summary["ratios"]
        ratio = f"{summary['ratio']:.2f}" if summary["ratio"] is not None else "–"
        if len(ratios) > 1:
            each = ", ".join(f"{r:.2f}" for r in ratios)
            ratio += f"; median of {len(ratios)} interleaved rounds: {each}"
        rows.append(
            f"| `bench/fanout.py --sizes` {size.get('size')} "
            f"| server CPU per delivery: gateway {_num(mine)} µs, Nchan {_num(theirs)} µs "
            f"(ratio {ratio}); RSS per connection: gateway "
            f"{_num(rss.get('push-gateway'), 2)} kB, Nchan "
            f"{_num(rss.get('nchan'), 2)} kB "
            f"| {_stamp(data)} |"
        )
    return rows


def replace_table(readme: str, table: str) -> str:
    start = readme.index(TABLE_START) + len(TABLE_START)
    end = readme.index(TABLE_END)
    return readme[:start] + "\n" + table + "\n" + readme[end:]


def readme_table(readme: str) -> str:
    start = readme.index(TABLE_START) + len(TABLE_START)
    return readme[start : readme.index(TABLE_END)].strip()
