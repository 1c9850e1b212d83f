"""Crashes, a Kafka partition, slow clients, restarts, churn and a soak under load, with figures.

Each scenario: ``CHAOS_CLIENTS`` SSE clients (through the edge and straight to each
gateway, on both stream endpoints) connect, the load driver books and cancels through the
edge, the fault happens, and at the end every client's view must equal the API's final
state (status and version of every slot), no slot version may go backwards, and every
slot event in Kafka that a client should have had must have reached it (by CloudEvent
id). Figures go to test-output/chaos/<scenario>.json; docs/reliability.md explains them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from functools import partial
from typing import Any

import httpx
import orjson
import pytest

from .harness import (
    CHURN,
    CLIENTS,
    FAULT_AFTER,
    MIN_RATE,
    SECONDS,
    SOAK_SECONDS,
    ChaosStack,
    Endpoint,
    Marks,
    Result,
    SseClient,
    answers,
    counter,
    crash_and_recover,
    instructor_ids,
    make_clients,
    process_figures,
    report,
    run_scenario,
)

P99_FLOOR_MS = 300.0
#: seconds of baseline before the stalled client stops reading; the rest of the load
#: makes its backlog outgrow the buffers (cut 3.6 to 8.8 s later at 200 changes/s)
STALL_AFTER = 3.0

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120 + 4 * SECONDS)]


def assert_nothing_lost(result: Result) -> None:
    """The load ran at its rate (else the scenario proves less than its size says) and
    every client saw every change."""
    assert result.rate >= MIN_RATE, f"{result.rate} changes/s, below the floor {MIN_RATE}"
    assert result.lost == 0, result.extra["lost_examples"]
    assert result.mismatched_views == 0
    assert result.regressions == 0
    assert result.events_produced > 0
    assert result.changes > 0


async def test_publisher_killed_twice_resumes_from_its_checkpoint(
    chaos_stack: ChaosStack,
) -> None:
    health = f"{chaos_stack.publisher_url()}/healthz"

    async def fault(marks: Marks) -> dict[str, Any]:
        downtimes = []
        for n in range(2):
            await asyncio.sleep(random.uniform(0.5, 3.0))
            (marks.start if n == 0 else marks.end)()
            downtimes.append(
                round(await crash_and_recover(chaos_stack, "change-publisher", health), 1)
            )
        return {"publisher_restart_s": downtimes}

    result = await run_scenario("publisher-kill-9-x2", chaos_stack, fault)
    assert_nothing_lost(result)


async def test_gateway_killed_clients_resume_on_the_other(chaos_stack: ChaosStack) -> None:
    health = f"{chaos_stack.gateway_url(1)}/readyz"

    async def fault(marks: Marks) -> dict[str, Any]:
        marks.end()
        back = await crash_and_recover(chaos_stack, "push-gateway-1", health)
        return {"gateway_back_s": round(back, 1)}

    result = await run_scenario("gateway-kill-9", chaos_stack, fault)
    assert_nothing_lost(result)
    assert result.resync_snapshots == 0  # resumed from the log: no gap papered over


async def readiness(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        async with httpx.AsyncClient(timeout=1.0) as client:
            return (await client.get(url)).status_code == 200
    return False


async def test_kafka_unreachable_for_ten_seconds(chaos_stack: ChaosStack) -> None:
    urls = {
        "publisher": f"{chaos_stack.publisher_url()}/readyz",
        "gateway-1": f"{chaos_stack.gateway_url(1)}/readyz",
        "gateway-2": f"{chaos_stack.gateway_url(2)}/readyz",
    }

    async def fault(marks: Marks) -> dict[str, Any]:
        marks.start()
        chaos_stack.proxy.cut()
        unready: dict[str, bool] = dict.fromkeys(urls, False)
        cut_until = time.monotonic() + 10
        while time.monotonic() < cut_until:
            for name, url in urls.items():
                if not await readiness(url):
                    unready[name] = True
            await asyncio.sleep(0.5)
        chaos_stack.proxy.restore()
        marks.end()
        restored = time.monotonic()
        ready_after = {}
        for name, url in urls.items():
            await answers(url, 45)
            ready_after[name] = round(time.monotonic() - restored, 1)
        return {"unready_during_cut": unready, "ready_again_after_s": ready_after}

    result = await run_scenario("kafka-cut-10s", chaos_stack, fault)
    assert_nothing_lost(result)
    # The publisher's records wait for Kafka: it says so. (The gateways' readiness is
    # recorded but not asserted: see docs/reliability.md, open findings.)
    assert result.extra["unready_during_cut"]["publisher"], result.extra


async def test_stalled_and_slow_clients_do_not_hold_back_the_others(
    chaos_stack: ChaosStack,
) -> None:
    """One client of gateway 1 stops reading when the fault begins: the gateway cuts it
    once ``GATEWAY_MAX_PENDING_BYTES`` of output wait for it, and says why first (``bye
    slow-consumer``, behind the backlog). The client reads again as soon as the cut
    shows in the gateway's metrics, well within the gateway's close grace (5 s, then it
    aborts), so the bye reaches it unless the gateway did not send it."""
    clients = make_clients(chaos_stack, CLIENTS)
    channels = "&".join(
        f"channel=instructors%2F{i}%2Fschedule" for i in instructor_ids(chaos_stack)
    )
    gateway_1 = Endpoint("127.0.0.1", chaos_stack.ports.gateway_1, f"/v1/events?{channels}")
    gateway_2 = Endpoint("127.0.0.1", chaos_stack.ports.gateway_2, f"/v1/events?{channels}")
    stalled = SseClient("stalled", "instructors/*/schedule", [gateway_1], view=False)
    slow = SseClient("slow", "instructors/*/schedule", [gateway_2], view=False)
    for odd in (stalled, slow):
        odd.receive_buffer = 4096  # a small window: the gateway's buffer fills quickly
    pid = chaos_stack.pid("push-gateway-1")
    assert pid is not None
    metrics = f"{chaos_stack.gateway_url(1)}/metrics"
    before = process_figures(pid)
    stalled.start()
    slow.start()

    async def fault(marks: Marks) -> dict[str, Any]:
        cut_before = await counter(metrics, "gateway_slow_client_disconnects")
        marks.start()
        stalled.stall()
        slow.read_delay = 0.2
        # The load runs until SECONDS; the stalled client's backlog grows with it.
        give_up = (marks.start_at or 0.0) + SECONDS - STALL_AFTER - 1
        while time.monotonic() < give_up:
            if await counter(metrics, "gateway_slow_client_disconnects") > cut_before:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(
                f"gateway 1 cut no slow client within {give_up - (marks.start_at or 0.0):.0f}s "
                f"of the stalled client's last read ({stalled.state})"
            )
        cut_after = round(time.monotonic() - (marks.start_at or 0.0), 1)
        during = process_figures(pid)
        # The fault window closes before the stalled client reads again: it lives in this
        # process with the measured clients, and its burst of parsing is the harness's,
        # not the gateway's, latency.
        marks.end()
        stalled.unstall()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stalled.ended_by_server.wait(), 15)
        await stalled.stop()  # no reconnect: its first stream is the one judged
        return {
            "stalled_cut_after_s": cut_after,
            "stalled_stream_ended_by_gateway": stalled.ended_by_server.is_set(),
            "gateway_1_before": before,
            "gateway_1_during": during,
        }

    try:
        result = await run_scenario(
            "stalled-and-slow-client", chaos_stack, fault, clients=clients, fault_after=STALL_AFTER
        )
    finally:
        await stalled.stop()
        await slow.stop()
    byes = [f.data.decode() for f in stalled.frames if f.event == "bye"]
    result.extra["stalled_byes"] = byes
    result.extra["slow_byes"] = [f.data.decode() for f in slow.frames if f.event == "bye"]
    report(result)
    assert_nothing_lost(result)
    # The gateway ended the stalled client's stream, and its last frame says why.
    assert result.extra["stalled_stream_ended_by_gateway"], (stalled.errors, stalled.state)
    last = stalled.frames[-1]
    assert (last.event, orjson.loads(last.data)) == ("bye", {"reason": "slow-consumer"}), (
        stalled.frames[-3:],
        stalled.errors,
    )
    assert result.extra["slow_byes"] == []  # slow but keeping up: not cut
    assert result.p99_before_ms is not None
    assert result.p99_during_ms is not None
    # 2x the baseline, with a floor: on the shared 2-core machine this runs on, the p99 of
    # two quiet periods already differs by a few hundred ms (other builds run alongside).
    assert result.p99_during_ms <= 2 * max(result.p99_before_ms, P99_FLOOR_MS)
    extra = result.extra
    grown = extra["gateway_1_during"]["rss_kib"] - extra["gateway_1_before"]["rss_kib"]
    assert grown < 64 * 1024  # bounded: the stalled client's backlog is dropped, not kept


async def test_rolling_restart_of_both_gateways(chaos_stack: ChaosStack) -> None:
    async def fault(marks: Marks) -> dict[str, Any]:
        took = {}
        marks.start()
        for number in (1, 2):
            started = time.monotonic()
            await chaos_stack.in_spawner(partial(chaos_stack.start_gateway, number))
            took[f"gateway-{number}"] = round(time.monotonic() - started, 1)
            await asyncio.sleep(1)
        marks.end()
        return {"restart_s": took}

    result = await run_scenario("rolling-restart", chaos_stack, fault)
    assert_nothing_lost(result)


async def test_connection_churn_leaves_no_residue(chaos_stack: ChaosStack) -> None:
    pid = chaos_stack.pid("push-gateway-2")
    assert pid is not None
    port = chaos_stack.ports.gateway_2
    instructor = chaos_stack.user("instructor").id
    request = (
        f"GET /api/book-now/schedule-updates?instructorId={instructor} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()

    async def once(read_frame: bool) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            await reader.readuntil(b"\r\n\r\n")
            if read_frame:
                await reader.readuntil(b"\n\n")
        finally:
            writer.transport.abort()

    async def churn(count: int) -> int:
        failures = 0
        semaphore = asyncio.Semaphore(50)

        async def one(n: int) -> None:
            nonlocal failures
            async with semaphore:
                try:
                    await asyncio.wait_for(once(n % 2 == 0), 10)
                except (OSError, asyncio.IncompleteReadError, TimeoutError):
                    failures += 1

        await asyncio.gather(*(one(n) for n in range(count)))
        return failures

    await churn(200)  # warm up: lazily created state is not a leak
    await asyncio.sleep(2)
    before = process_figures(pid)
    started = time.monotonic()
    failures = await churn(CHURN)
    took = time.monotonic() - started
    after = before
    for _ in range(20):  # closed connections leave the hub within a moment
        await asyncio.sleep(0.5)
        after = process_figures(pid)
        if after["fds"] <= before["fds"]:
            break
    result = Result(
        scenario="connection-churn",
        size=f"{CHURN} connects/disconnects, 50 at a time",
        changes=0,
        events_produced=0,
        delivered=0,
        duplicated=0,
        lost=0,
        regressions=0,
        mismatched_views=0,
        resync_snapshots=0,
        p99_before_ms=None,
        p99_during_ms=None,
        recovery_s=None,
        seconds=round(took, 1),
        extra={"failures": failures, "before": before, "after": after},
    )
    report(result)
    assert failures == 0
    assert after["fds"] <= before["fds"]
    assert after["threads"] <= before["threads"]
    assert after["rss_kib"] - before["rss_kib"] < 32 * 1024


SERVICES = ("booking-api", "change-publisher", "push-gateway-1", "push-gateway-2")


def service_figures(stack: ChaosStack) -> dict[str, dict[str, int]]:
    pids = {name: stack.pid(name) for name in SERVICES}
    return {name: process_figures(pid) for name, pid in pids.items() if pid is not None}


@pytest.mark.timeout(180 + 2 * SOAK_SECONDS)
async def test_soak_under_steady_load(chaos_stack: ChaosStack) -> None:
    """No fault: the load and every client for ``CHAOS_SOAK_SECONDS`` (``make chaos``:
    10 minutes). Nothing lost at the rate asked for, and the services' descriptors and
    memory recorded after the first seconds of load and at its end: the gateways' must
    not grow with the time (the booking-api's memory backend keeps every booking)."""

    async def steady(marks: Marks) -> dict[str, Any]:
        marks.start()  # "p99 during": the load after its first FAULT_AFTER seconds
        start = service_figures(chaos_stack)
        await asyncio.sleep(SOAK_SECONDS - FAULT_AFTER)
        end = service_figures(chaos_stack)
        return {"services_start": start, "services_end": end}

    result = await run_scenario("soak", chaos_stack, steady, seconds=SOAK_SECONDS)
    assert_nothing_lost(result)
    start, end = result.extra["services_start"], result.extra["services_end"]
    for gateway in ("push-gateway-1", "push-gateway-2"):
        assert end[gateway]["rss_kib"] - start[gateway]["rss_kib"] < 64 * 1024, (start, end)
        assert end[gateway]["fds"] <= start[gateway]["fds"] + 8, (start, end)
