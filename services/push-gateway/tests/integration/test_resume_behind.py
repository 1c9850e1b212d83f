"""A client resumes on a gateway whose fetches are behind the one that served it: real
Tansu, two gateway servers, the second's long-poll held for seconds (as Tansu holds a
fetch until its deadline), so its view of the log's end predates the client's id."""

import asyncio
from collections.abc import Iterator

import pytest
from fastapi import FastAPI

from push_gateway.app import build_server
from push_gateway.config import GatewayKafkaSettings
from push_gateway.gateway import Gateway
from push_gateway.testing import slot_event
from slotstream_contracts.settings import TopicSettings
from slotstream_testkit.kafka import KafkaEndpoint

from .conftest import FakeBookingApi, ServerThread, gateway_settings
from .test_gateways import PAGE, Stream, get, producer, publish

pytestmark = pytest.mark.integration

#: the held-back gateway's long-poll once idle: records reach it up to this late
BEHIND_WAIT_MS = 2000


@pytest.fixture(scope="module")
def ahead_and_behind(
    kafka: KafkaEndpoint, topics: TopicSettings, booking_api: FakeBookingApi
) -> Iterator[tuple[ServerThread, ServerThread]]:
    slow = GatewayKafkaSettings(
        bootstrap_servers=kafka.bootstrap_servers,
        fetch_max_wait_ms=1000,
        fetch_moderate_max_wait_ms=1000,
        fetch_idle_max_wait_ms=BEHIND_WAIT_MS,
    )
    started: list[ServerThread] = []
    try:
        for kafka_settings in (None, slow):
            settings = gateway_settings(kafka, topics, booking_api)
            if kafka_settings is not None:
                settings = settings.model_copy(update={"kafka": kafka_settings})
            started.append(ServerThread(build_server(settings), settings.port).start("/readyz"))
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()


def gateway_of(server: ServerThread) -> Gateway:
    app = server.server.config.app
    assert isinstance(app, FastAPI)
    gateway: Gateway = app.state.gateway
    return gateway


async def next_fetch_sent(server: ServerThread) -> None:
    """Until the gateway's ingest sends its next fetch, which the broker then holds."""
    app = server.server.config.app
    assert isinstance(app, FastAPI)
    fetcher = app.state.ingest.fetcher
    assert fetcher is not None  # the lean fetch loop
    rounds = fetcher.counters.rounds
    async with asyncio.timeout(BEHIND_WAIT_MS / 1000 + 5):
        while fetcher.counters.rounds == rounds:  # noqa: ASYNC110
            await asyncio.sleep(0.002)


async def test_a_resume_on_a_gateway_behind_is_replayed_not_refused(
    kafka: KafkaEndpoint,
    topics: TopicSettings,
    ahead_and_behind: tuple[ServerThread, ServerThread],
) -> None:
    ahead, behind = ahead_and_behind
    gateway = gateway_of(behind)
    params = {"instructorId": "behind1"}
    await asyncio.sleep(1.5)  # nothing produced: the gateway behind long-polls as idle
    async with producer(kafka) as p:
        async with Stream(ahead.url + PAGE, params) as first:
            await first.wait_for("snapshot", 1)
            await next_fetch_sent(behind)  # produced now, the records reach it seconds late
            await publish(p, topics.schedule, [slot_event("behind1", "s1", v) for v in (1, 2)])
            seen = await first.wait_for("slot", 2)
    letter, offset = seen[0].id.split(":")
    _, end = gateway.catch_up.bounds.bounds(topics.schedule, int(letter[1:]))
    assert end <= int(offset), "the gateway behind had fetched the records already"
    resumed = Stream(behind.url + PAGE, params, {"Last-Event-ID": seen[0].id})
    async with resumed:
        await resumed.wait_for("slot", 1, within=BEHIND_WAIT_MS / 1000 + 5)
    # what follows the id, replayed: not a snapshot (a ``resync`` for notifications)
    events = [e for e in resumed.events if e.event != "presence"]
    assert [(e.event, e.id) for e in events[:1]] == [("slot", seen[1].id)]
    assert resumed.data("slot")[0]["version"] == 2
    assert gateway.stats.resumes_refused == 0
    metrics = (await get(behind.url + "/metrics")).text
    assert "gateway_resume_end_lookups_total 1.0" in metrics
    assert "gateway_resumes_waiting 0.0" in metrics
