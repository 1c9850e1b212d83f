"""The ops endpoints report what the publisher is doing."""

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from change_publisher.adapters.memory import (
    MemoryChangeSource,
    MemoryCheckpointStore,
    MemoryDatabase,
)
from change_publisher.app import Components, create_app
from change_publisher.config import Settings
from change_publisher.ports import Checkpoint
from change_publisher.publisher import Role
from slotstream_contracts.documents import SLOTS

from ..conftest import NOW, Docs, PublisherFactory


async def test_health_ready_and_metrics(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> None:
    publisher = make_publisher()

    async def build(_settings: Settings) -> Components:
        return Components(publisher)

    app = create_app(Settings(), build=build)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://publisher") as client,
    ):
        for _ in range(200):
            if publisher.ready:
                break
            await asyncio.sleep(0.01)
        database.insert(SLOTS, Docs.slot())
        for _ in range(200):
            if publisher.metrics.events.labels("slot.created")._value.get():
                break
            await asyncio.sleep(0.01)
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        metrics = await client.get("/metrics")
    assert health.status_code == 200
    assert ready.status_code == 200
    assert ready.json()["role"] == "leader"
    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    events = {
        s.labels.get("type"): s.value
        for s in families["publisher_events"].samples
        if s.name == "publisher_events_total"
    }
    assert events == {"slot.created": 1.0}
    assert families["publisher_leader"].samples[0].value == 1.0
    assert "publisher_checkpoint_age_seconds" in families
    assert "publisher_in_flight" in families
    assert publisher.role is Role.STOPPED  # the lifespan stopped it


async def test_readyz_is_503_while_not_leading_or_standing_by(
    make_publisher: PublisherFactory,
) -> None:
    publisher = make_publisher()

    async def build(_settings: Settings) -> Components:
        return Components(publisher)

    app = create_app(Settings(), build=build)
    app.state.publisher = publisher  # before the lifespan: still starting
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://publisher"
    ) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["role"] == "starting"


async def test_history_lost_under_policy_fail_asks_the_process_to_exit_with_1(
    make_publisher: PublisherFactory, checkpoints: MemoryCheckpointStore
) -> None:
    database = MemoryDatabase(retain=1)
    for n in range(3):
        database.insert(SLOTS, Docs.slot(f"s{n}"))
    await checkpoints.save(
        "test", Checkpoint({"_data": "0000000000000001"}, None, epoch=0, saved_at=NOW)
    )
    publisher = make_publisher(
        source=MemoryChangeSource(database, wait=0.05), history_lost_policy="fail"
    )
    fatal = asyncio.Event()

    async def build(_settings: Settings) -> Components:
        return Components(publisher)

    app = create_app(Settings(), build=build, on_fatal=fatal.set)
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(fatal.wait(), 5)
    assert app.state.exit_code == 1
