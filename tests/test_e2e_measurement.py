"""``bench/e2e_latency.py`` measures without disturbing what it measures.

* It times each booking's broker stage without a consumer of its own reading the broker
  while bookings are timed: it notes the schedule topic's end offsets before a phase and
  reads the booking records' Kafka timestamps after it. (A live consumer in the bench was
  a third reader of the broker under test: Tansu's share rose from ~0.27 to ~0.35 cores
  and the phase's p99 with it.)
* Nothing blocks its event loop as a phase starts: the background load is produced from
  that loop, and a stall paused it and then sent the records it owed in one burst, right
  as the first booking was made. An ``httpx.AsyncClient`` costs 35–70 ms of blocking work
  to build (its TLS context), and the CPU figures walked ``/proc`` once per process; the
  first booking of every phase was the slowest (docs/scaling.md).
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from slotstream_testkit.kafka import KafkaEndpoint

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the bench scripts are not a package
from bench import fanout  # noqa: E402
from bench.e2e_latency import (  # noqa: E402
    Phase,
    Repetition,
    booking_stages,
    booking_timestamps,
    combine,
    end_offsets,
    run_phase,
    summary,
)


async def test_booking_records_are_read_after_the_phase_from_the_offsets_noted_before_it(
    kafka: KafkaEndpoint, unique_topic: str
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(unique_topic, 2, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, linger_ms=0)
    await producer.start()
    try:
        # booked before the phase: not this phase's record, although its slot is watched
        await producer.send_and_wait(
            unique_topic, b'{"id":"slot-c","status":"booked"}', partition=0, timestamp_ms=1_000
        )
        since = await end_offsets(kafka.bootstrap_servers, unique_topic)
        for n, (partition, value, stamp) in enumerate(
            [
                (0, b'{"id":"bg-0","pad":"xx"}', 2_000),
                (1, b'{"id":"slot-b","status":"booked"}', 2_500),
                (0, b'{"id":"slot-a","status":"available"}', 3_000),
                (1, b'{"id":"bg-1","pad":"xx"}', 3_500),
            ]
        ):
            await producer.send_and_wait(
                unique_topic, value, key=b"i%d" % n, partition=partition, timestamp_ms=stamp
            )
    finally:
        await producer.stop()

    found = await booking_timestamps(
        kafka.bootstrap_servers, since, {b"slot-a", b"slot-b", b"slot-c", b"slot-d"}, unique_topic
    )

    assert found == {b"slot-a": 3_000, b"slot-b": 2_500}  # slot-d was never booked


def test_a_bookings_stages_are_measured_from_its_record_timestamp() -> None:
    """commit 10 ms before the record's timestamp; frames 5, 6 and 30 ms after it through
    the edge, 4 ms after it at the client straight on a gateway."""
    produced_ms = 1_000_000
    committed_ns = (produced_ms - 10) * 1_000_000
    at = produced_ms * 1_000_000
    arrivals = [at + 5_000_000, at + 6_000_000, at + 30_000_000]

    stages = booking_stages(committed_ns, produced_ms, arrivals, [at + 4_000_000])

    assert stages == (10.0, 6.0, 30.0, 4.0)
    assert booking_stages(committed_ns, produced_ms, arrivals, [])[3] is None


def repetition(slow_frames: int, cores: float) -> Repetition:
    """One run of the shared phase: one booking's 100 frames, ``slow_frames`` of them 80 ms
    after the commit and the rest 10 ms."""
    phase = Phase("shared", booked=1)
    phase.commit_to_frame_ns = [80_000_000] * slow_frames + [10_000_000] * (100 - slow_frames)
    phase.commit_to_read_ns = [at + 5_000_000 for at in phase.commit_to_frame_ns]
    phase.response_to_frame_ns = list(phase.commit_to_frame_ns)
    phase.stages = [(3.0, 7.0, 7.0 + slow_frames, None)]
    figures = summary(phase, 10.0, 400_000, 100) | {
        "load_average_before": [1.0],
        "load_average_after": [1.5],
        "cores_used": {"edge": cores},
        "gateways": [{"fetch_delay_ms_p50": cores * 10}],
        "background_records_sent": 1_300,
    }
    return Repetition(workload={"clients": 100}, phases=[(phase, figures)])


def test_a_phase_repeated_on_fresh_stacks_pools_the_frames_of_every_run() -> None:
    """Two quiet runs and one where a booking met a busy moment: the p99 is that of all
    300 frames (5 slow ones: 80 ms), not a median of the runs' p99s (10 ms)."""
    results = combine([repetition(0, 0.5), repetition(0, 0.7), repetition(5, 0.6)])

    [shared] = results["phases"]
    assert shared["commit_to_frame_ms"] == {"p50": 10.0, "p99": 80.0, "max": 80.0}
    assert shared["commit_to_frame_p99_ms_per_run"] == [10.0, 10.0, 80.0]
    assert shared["commit_to_read_ms"] == {"p50": 15.0, "p99": 85.0, "max": 85.0}
    assert shared["commit_to_read_p99_ms_per_run"] == [15.0, 15.0, 85.0]
    assert (shared["bookings"], shared["frames_measured"]) == (3, 300)
    assert shared["cores_used"] == {"edge": 0.6}
    assert shared["gateways"] == [{"fetch_delay_ms_p50": 6.0}]
    assert shared["deliveries_per_s_measured"] == 40_000
    assert shared["background_records_sent"] == 3_900
    assert len(shared["runs"]) == 3
    assert results["workload"]["repetitions"] == 3


class StandInStack:
    def mint(self, user_id: str, role: str, name: str) -> str:
        return f"token-{user_id}-{role}-{name}"


class StandInClients:
    """The load client process, answering as if every client got the frame 20 ms after
    the slot's commit (one of them stamped by its socket: the segment tap missed it)."""

    async def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        return {"watching": command["watch"]}

    async def receive(self) -> dict[str, Any]:
        at = COMMITTED_NS + 20_000_000
        return {
            "missed": 0,
            "arrivals": [at, at],
            "direct": [at],
            "read": [at, at],
            "stamped_at_the_socket": 1,
        }


UPDATED_AT = "2026-12-01T20:13:20+00:00"
COMMITTED_NS = int(datetime.fromisoformat(UPDATED_AT).timestamp()) * 1_000_000_000


def booking_site(request: httpx.Request) -> httpx.Response:
    """The edge's booking endpoint and the booking-api's schedule, in one stand-in."""
    if request.method == "POST" and request.url.path == "/api/bookings":
        return httpx.Response(201, json={"slotId": "slot-1"})
    if request.url.path == "/api/instructors/i1/schedule":
        return httpx.Response(200, json={"slots": [{"id": "slot-1", "updatedAt": UPDATED_AT}]})
    return httpx.Response(404)


async def test_a_phase_builds_no_http_client_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The edge and booking-api clients are built once, before any background load runs;
    building one inside a phase blocked the loop that produces that load."""
    transport = httpx.MockTransport(booking_site)
    edge = httpx.AsyncClient(transport=transport, base_url="http://edge")
    api = httpx.AsyncClient(transport=transport, base_url="http://api")

    def no_new_client(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("an HTTP client was built while bookings are timed")

    monkeypatch.setattr(httpx, "AsyncClient", no_new_client)
    phase = Phase("shared")

    async with edge, api:
        await run_phase(
            StandInStack(),  # type: ignore[arg-type]
            phase,
            StandInClients(),  # type: ignore[arg-type]
            edge,
            api,
            [("i1", "slot-1")],
            0.0,
        )

    assert (phase.booked, phase.failed, len(phase.frames)) == (1, 0, 1)
    assert phase.commit_to_frame_ns == [20_000_000, 20_000_000]
    assert phase.commit_to_read_ns == [20_000_000, 20_000_000]
    assert phase.stamped_at_the_socket == 1


def test_the_cpu_of_every_process_tree_is_read_in_one_walk_of_proc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listings: list[str] = []
    listdir = os.listdir

    def counted(path: str) -> list[str]:
        listings.append(path)
        return listdir(path)

    monkeypatch.setattr(os, "listdir", counted)

    found = fanout.tree_cpu_seconds_by_name({"this": os.getpid(), "init": 1})

    assert listings == ["/proc"]
    assert set(found) == {"this", "init"}
    assert found["init"] >= found["this"] > 0  # pid 1's tree holds this process
