"""The benchmarks' own bookkeeping: loss counted by unique (channel, seq) per connection,
and the README's performance table generated from the committed latest results."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slotstream_testkit.benchkit import (
    StreamBuffer,
    StreamCount,
    arrivals_report,
    git_commit,
    latency_cdf_ms,
    load_history,
    load_latest,
    readme_table,
    record_results,
    render_readme_table,
    replace_table,
    sizes_summary,
    tally,
)

ROOT = Path(__file__).resolve().parent.parent


def frame(seq: int, channel: str, ts: int = 0) -> bytes:
    return f'id: 1-{seq}\ndata: {{"ts":{ts},"seq":{seq},"ch":"{channel}","pad":"x"}}\n\n'.encode()


def test_a_frame_that_never_arrived_is_counted_as_missed() -> None:
    """e2e_latency's load client, for one watched slot: clients 1 (through the edge) and 3
    (straight from a gateway) never saw the frame within the timeout. The run reports
    them as missed (its ``frames_missed``) instead of the load client dying on them, and
    says how many of those were straight on a gateway (the edge's share of a miss)."""
    members = [(0, False), (1, False), (2, True), (3, True)]
    report = arrivals_report(members, {0: 100, 2: 300}, {0: 140, 2: 310})
    assert report == {
        "arrivals": [100],
        "direct": [300],
        "missed": 2,
        "missed_straight_from_a_gateway": 1,
        "read": [140],
    }


def test_a_duplicate_does_not_hide_a_loss() -> None:
    published = {b"b1": {0, 1, 2}}
    count = StreamCount()
    stream = frame(0, "b1") + frame(1, "b1") + frame(1, "b1")  # seq 1 twice, seq 2 never
    count.feed(stream)
    counted = tally(published, [(b"b1", count)])
    # counting every event (the old "ts": token count) would have seen 3 of 3: no loss
    assert count.events == 3
    assert counted.expected == 3
    assert counted.received_unique == 2
    assert counted.lost == 1
    assert counted.duplicates == 1
    assert counted.loss_fraction == round(1 / 3, 6)


def test_frames_split_anywhere_are_counted_once() -> None:
    stream = b"".join(frame(seq, "b7", ts=1_000_000) for seq in range(50))
    count = StreamCount()
    latencies: list[int] = []
    for cut in range(0, len(stream), 7):
        count.feed(stream[cut : cut + 7], now_ns=3_000_000, latencies=latencies)
    assert {seq for _, seq in count.seen} == set(range(50))
    assert count.duplicates == 0
    assert latencies == [2_000_000] * 50


@given(
    events=st.lists(
        st.tuples(st.integers(0, 30), st.sampled_from(["b1", "b2"]), st.booleans()),
        max_size=40,
    ),
    cuts=st.lists(st.integers(1, 90), max_size=60),
)
def test_the_fast_count_and_the_frame_walk_agree(
    events: list[tuple[int, str, bool]], cuts: list[int]
) -> None:
    """The counting a run does (a scan for ``"seq":N,"ch":"..."``) and the walk it falls
    back to (fields in any order, heartbeats, duplicates in one chunk) give one answer."""

    def one(seq: int, channel: str, channel_first: bool) -> bytes:
        if channel_first:
            return f'id: 1-{seq}\ndata: {{"ch":"{channel}","seq":{seq}}}\n\n'.encode()
        return frame(seq, channel)

    stream = b": hb\n\n" + b"".join(one(*event) for event in events)
    count, start = StreamCount(), 0
    for cut in cuts:
        count.feed(stream[start : start + cut])
        start += cut
    count.feed(stream[start:])
    keys = [(channel.encode(), seq) for seq, channel, _ in events]
    assert count.seen == set(keys)
    assert count.events == len(keys)
    assert count.duplicates == len(keys) - len(set(keys))
    assert count.pending == b""


def test_loss_is_per_connection_and_foreign_events_are_apart() -> None:
    published = {b"a": {0, 2}, b"b": {1}}
    first, second, wrong = StreamCount(), StreamCount(), StreamCount()
    first.feed(frame(0, "a") + frame(2, "a"))
    second.feed(b": hb\n\n")  # nothing arrived: its one event is lost
    wrong.feed(frame(0, "a"))  # subscribed to b, got a's event
    counted = tally(published, [(b"a", first), (b"b", second), (b"b", wrong)])
    assert (counted.expected, counted.lost, counted.foreign) == (4, 2, 1)


def test_a_stream_buffer_keeps_every_byte_for_the_count_after_the_run() -> None:
    """bench/workers.py's client: reads straight into one buffer, looks only at its tail
    while the clock runs, parses everything after the run."""
    stream = b"".join(frame(seq, "b3") for seq in range(40)) + frame(7, "b3")  # 7 twice
    last = b'"seq":7,'
    left, right = socket.socketpair()
    try:
        right.setblocking(False)
        buffer = StreamBuffer(capacity=100)  # smaller than the stream: it grows
        assert buffer.receive(right) == -1  # nothing sent yet
        for cut in range(0, len(stream), 5):
            left.sendall(stream[cut : cut + 5])
            assert buffer.receive(right) == len(stream[cut : cut + 5])
        assert buffer.data() == stream
        assert buffer.tail_contains(last, window=len(frame(7, "b3")))
        assert not buffer.tail_contains(b'"seq":39,', window=len(frame(7, "b3")))
        assert buffer.contains(b'"seq":39,')
        left.close()
        assert buffer.receive(right) == 0  # the peer closed
    finally:
        right.close()
    parsed: dict[bytes, StreamCount] = {}
    counted = buffer.count(parsed)
    assert buffer.count(parsed) is counted  # same bytes, parsed once
    assert counted.events == 41
    result = tally({b"b3": set(range(41))}, [(b"b3", counted)])
    assert (result.received_unique, result.lost, result.duplicates) == (40, 1, 1)


def test_latency_cdf_is_monotonic() -> None:
    cdf = latency_cdf_ms([n * 1_000_000 for n in range(1000)])
    assert cdf[0][1] < cdf[-1][1] == 1.0
    assert all(a[0] <= b[0] for a, b in zip(cdf, cdf[1:], strict=False))


def test_record_results_appends_history_and_writes_latest(tmp_path: Path) -> None:
    record_results(tmp_path, "fanout", {"runs": [], "x": 1})
    record_results(tmp_path, "fanout", {"runs": [], "x": 2})
    history = load_history(tmp_path)
    assert [h["x"] for h in history] == [1, 2]
    latest = json.loads((tmp_path / "fanout.json").read_text())
    assert latest["x"] == 2
    assert latest["machine"]["cores"] >= 1
    assert latest["machine"]["cpu_model"]
    assert len(latest["load_average"]) == 3
    assert "when" in latest
    # the checkout the benchmark ran from, though the results went elsewhere (--results-dir)
    assert latest["commit"] is not None
    assert latest["commit"] == git_commit(ROOT)


@pytest.mark.parametrize(
    "benchmark",
    ["booking", "publisher", "fanout", "connect_storm", "workers", "e2e_latency", "ingest"],
)
def test_every_benchmark_can_write_its_results_elsewhere(benchmark: str) -> None:
    """An ad-hoc run (an A/B pair, a probe of the host's speed) must be able to leave the
    committed bench/results alone: every benchmark `make bench` runs takes --results-dir."""
    shown = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{benchmark}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    ).stdout
    assert "--results-dir RESULTS_DIR" in shown
    assert f"writes {benchmark}.json" in " ".join(shown.split())


def test_readme_table_matches_the_latest_committed_results() -> None:
    """`bench/report.py` writes the table; run it after `make bench` and commit both."""
    latest = load_latest(ROOT / "bench" / "results")
    assert {"fanout"} <= set(latest), "bench/results/fanout.json is committed"
    readme = (ROOT / "README.md").read_text()
    expected = render_readme_table(latest)
    assert readme_table(readme) == expected
    assert replace_table(readme, expected) == readme


def test_the_sizes_table_compares_gateway_and_nchan_per_size() -> None:
    """`bench/fanout.py --sizes` (issue 14 item 1): one README row per size, same run."""

    def run(server: str, cpu: float, rss: float) -> dict[str, object]:
        return {"server": server, "server_cpu_us_per_delivery": cpu, "rss_per_connection_kb": rss}

    sizes = {
        "sizes": [
            {
                "size": "1 k conns, 10 k deliveries/s",
                "runs": [run("push-gateway", 8.0, 3.9)] + [run("nchan", 10.0, 11.0)],
            },
            {
                "size": "5 k conns",
                "runs": [run("push-gateway", 7.0, 3.5)]
                + [{"server": "nchan", "skipped": "not installed"}],
            },
        ],
        "when": "2026-12-01T07:00:00Z",
        "commit": "abc",
        "load_average": [1.0, 1.0, 1.0],
    }
    table = render_readme_table({"fanout_sizes": sizes})
    first, second = table.splitlines()[2:]
    assert "1 k conns, 10 k deliveries/s" in first
    assert "gateway 8.0 µs, Nchan 10.0 µs (ratio 0.80)" in first
    assert "gateway 3.90 kB, Nchan 11.00 kB" in first
    assert "Nchan – µs (ratio –)" in second


def test_a_sizes_row_with_rounds_shows_medians_and_the_median_paired_ratio() -> None:
    """Three interleaved rounds: the row is not the first round's figures but each
    server's median, and the ratio is the median of the rounds' own ratios (each round
    compares the two servers on the same machine state)."""

    def run(server: str, cpu: float, rss: float, round_no: int) -> dict[str, object]:
        return {
            "server": server,
            "server_cpu_us_per_delivery": cpu,
            "rss_per_connection_kb": rss,
            "round": round_no,
        }

    runs = [
        run("push-gateway", 12.0, 2.6, 0),
        run("nchan", 13.0, 11.0, 0),
        run("nchan", 16.0, 11.2, 1),
        run("push-gateway", 10.0, 2.7, 1),
        run("push-gateway", 9.0, 2.5, 2),
        run("nchan", 15.0, 10.8, 2),
    ]
    summary = sizes_summary(runs)
    assert summary["cpu_us_per_delivery"] == {"push-gateway": 10.0, "nchan": 15.0}
    assert summary["ratios"] == [0.923, 0.625, 0.6]
    assert summary["ratio"] == 0.625
    sizes = {
        "sizes": [{"size": "1 k conns, 10 k deliveries/s", "runs": runs}],
        "when": "2026-12-02T07:00:00Z",
        "commit": "abc",
        "load_average": [1.0],
    }
    (row,) = render_readme_table({"fanout_sizes": sizes}).splitlines()[2:]
    assert "gateway 10.0 µs, Nchan 15.0 µs (ratio 0.62; median of 3 interleaved rounds: " in row
    assert "0.92, 0.62, 0.60)" in row
    assert "gateway 2.60 kB, Nchan 11.00 kB" in row


def test_readme_table_has_a_row_per_e2e_latency_phase() -> None:
    phase = {
        "clients": 900,
        "commit_to_frame_ms": {"p50": 21.5, "p99": 48.25},
        "deliveries_per_s_measured": 41000,
        "stages": {
            "commit_to_produced_ms": 2.0,
            "produced_to_frame_p50_ms": 15.5,
            "produced_to_direct_frame_p50_ms": 11.0,
        },
        "gateways": [{"fetch_delay_ms_p50": 6.5}, {"fetch_delay_ms_p50": 7.25}],
        "cores_used": {"load-client": 0.12},
        "load_average_before": [1.5, 1.2, 1.0],
    }
    e2e = {
        "when": "2026-12-01T07:00:00Z",
        "commit": "abc",
        "load_average": [1.6],
        "phases": [phase | {"phase": "shared"}, phase | {"phase": "broker-core"}],
    }
    rows = render_readme_table({"e2e_latency": e2e}).splitlines()[2:]
    assert [row.split(",")[0] for row in rows] == [
        "| `bench/e2e_latency.py` shared",
        "| `bench/e2e_latency.py` broker-core",
    ]
    assert "p50 21.5 / p99 48.2 ms at 41,000 deliveries/s" in rows[0]
    assert (
        "commit → produced 2.0, → frame 15.5 (straight from a gateway 11.0) ms; "
        "the gateways' produced → fetched p50 6.5 / 7.2 ms" in rows[0]
    )
    assert "load client 0.12 cores, load 1.5" in rows[0]


def test_the_e2e_row_gives_the_spread_of_its_runs() -> None:
    """The pooled p99 of several runs, and how far apart the runs' own p99s were."""
    phase = {
        "phase": "shared",
        "commit_to_frame_ms": {"p50": 24.0, "p99": 61.0},
        "commit_to_frame_p99_ms_per_run": [52.5, 71.0, 44.0, 58.0, 49.0],
    }
    e2e = {"when": "2026-12-01T07:00:00Z", "commit": "abc", "phases": [phase]}

    [row] = render_readme_table({"e2e_latency": e2e}).splitlines()[2:]

    assert "p50 24.0 / p99 61.0 ms over 5 runs (each run's p99 44.0–71.0) at" in row


def test_the_e2e_row_gives_the_time_the_load_client_read_the_frames_beside_their_arrival() -> None:
    """The figure is the frames' arrival at the clients' sockets; the row says so, and how
    much later the load client (900 browsers in one process) read them."""
    phase = {
        "phase": "shared",
        "commit_to_frame_ms": {"p50": 24.0, "p99": 48.0},
        "commit_to_read_ms": {"p50": 29.0, "p99": 57.5},
        "commit_to_frame_p99_ms_per_run": [44.0, 49.0],
        "commit_to_read_p99_ms_per_run": [52.0, 60.0],
    }
    e2e = {"when": "2026-12-01T07:00:00Z", "commit": "abc", "phases": [phase]}

    [row] = render_readme_table({"e2e_latency": e2e}).splitlines()[2:]

    assert "booking commit → browser frame at the client's socket p50 24.0 / p99 48.0 ms" in row
    assert "(each run's p99 44.0–49.0; as read by the load client p50 29.0 / p99 57.5) at" in row


def test_the_e2e_row_says_how_many_frames_were_not_stamped_per_segment() -> None:
    """Without the segment tap (no ``CAP_NET_RAW``) a frame read after the next one carries
    that one's stamp: the row says how many frames were stamped that way."""
    phase = {
        "phase": "shared",
        "frames_measured": 9000,
        "commit_to_frame_ms": {"p50": 24.0, "p99": 48.0},
        "commit_to_read_ms": {"p50": 29.0, "p99": 57.5},
    }
    rows = []
    for at_socket in (0, 9000):
        phase["frames_stamped_at_the_socket"] = at_socket
        e2e = {"when": "2026-12-01T07:00:00Z", "commit": "abc", "phases": [phase]}
        rows += render_readme_table({"e2e_latency": e2e}).splitlines()[2:]

    assert "stamped by the socket" not in rows[0]
    assert "; 9,000 of 9,000 frames stamped by the socket, not per segment) at" in rows[1]


def test_the_workers_row_says_when_the_run_went_ahead_of_other_work() -> None:
    """bench/workers.py --priority: a quiet-machine figure is labelled as one."""
    scaling = {
        "workers": 2,
        "deliveries_per_s_median_1": 300_000,
        "deliveries_per_s_median_2": 540_000,
        "measured_ratio": 1.8,
        "deliveries_lost": 0,
        "duplicates": 0,
    }
    stamp = {"when": "2026-12-01T10:00:00Z", "commit": "abc", "load_average": [4.0]}
    ahead = render_readme_table(
        {"workers": {**stamp, "scaling": scaling, "workload": {"priority": 10}}}
    )
    plain = render_readme_table({"workers": {**stamp, "scaling": scaling, "workload": {}}})
    assert "300,000 vs 540,000 deliveries/s (×1.80 measured, ahead of other work" in ahead
    assert "`--priority 10`" in ahead
    assert "ahead of other work" not in plain
    assert "0 lost, 0 duplicated" in plain
