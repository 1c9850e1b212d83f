"""Resumes that wait for this gateway to read as far as another gateway already delivered
(``CatchUp.wait_for_position``): woken by the hub's ingest, not by polling it."""

import asyncio
import time
from dataclasses import dataclass, field

from pydantic import SecretStr

from push_gateway.adapters.catch_up import CatchUp
from push_gateway.adapters.kafka import FakeHistory
from push_gateway.adapters.presence import FakePresenceBus, PresenceTable
from push_gateway.adapters.snapshots import CoalescingSnapshots, FakeSnapshotSource
from push_gateway.adapters.tickets import FakeTicketRedeemer
from push_gateway.app import build_gateway
from push_gateway.config import Settings
from push_gateway.domain.hub import ChannelHub
from push_gateway.domain.positions import PartitionKey
from push_gateway.stream import StreamState
from push_gateway.testing import record_of, slot_event
from slotstream_contracts.auth import JwtSettings
from slotstream_contracts.channels import ChannelKind
from slotstream_contracts.topics import NOTIFICATIONS_TOPIC, SCHEDULE_TOPIC

JWT = JwtSettings(secret=SecretStr("unit-secret-5e0b9c2d7f1a4e8b6c3d9a0f"), leeway_seconds=0)
S0: PartitionKey = ("s", 0)
S1: PartitionKey = ("s", 1)


class CountingHub(ChannelHub):
    """Counts the position checks made by anyone but the ingest."""

    checks = 0

    def position(self, key: PartitionKey) -> int:
        self.checks += 1
        return super().position(key)


@dataclass
class Resuming:
    """What a waiting resume is to the catch-up: its partitions and whether it is open."""

    partitions: tuple[PartitionKey, ...]
    state: StreamState = field(default=StreamState.CATCHING_UP)


def catch_up(hub: ChannelHub, timeout: float = 10) -> CatchUp:
    settings = Settings(catch_up_timeout_seconds=timeout, jwt=JWT)
    return build_gateway(
        settings,
        hub,
        CoalescingSnapshots(FakeSnapshotSource({})),
        FakeHistory(),
        FakePresenceBus("g1", PresenceTable(10)),
        tickets=FakeTicketRedeemer(),
    ).catch_up


def counting_hub() -> CountingHub:
    hub = CountingHub(
        {ChannelKind.SCHEDULE: SCHEDULE_TOPIC, ChannelKind.NOTIFICATIONS: NOTIFICATIONS_TOPIC},
        ring_size=8,
    )
    for p in range(2):
        hub.assign(SCHEDULE_TOPIC, p, 0, 2)
    hub.assign(NOTIFICATIONS_TOPIC, 0, 0, 1)
    return hub


def read(hub: ChannelHub, partition: int, offsets: range) -> None:
    """The ingest hands the hub a batch of records of a schedule partition."""
    records = [record_of(slot_event("i1", "s1", o + 1), o) for o in offsets]
    hub.ingest(SCHEDULE_TOPIC, partition, records)


async def turns(count: int = 3) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_a_reconnect_storm_onto_a_gateway_behind_costs_nothing_until_it_reads_on() -> None:
    """500 streams resume past this gateway's position. While nothing arrives for their
    partition (records of another one do) the waits cost no check and no CPU; then they are
    all let through by the batch that reaches their position."""
    hub = counting_hub()
    waits = catch_up(hub)
    read(hub, 0, range(3))  # read here up to offset 2; another gateway delivered 5
    tasks = [
        asyncio.create_task(waits.wait_for_position(Resuming((S0,)), {S0: 5})) for _ in range(500)
    ]
    await turns()
    hub.checks = 0
    cpu = time.process_time()
    for offset in range(3, 13):
        await asyncio.sleep(0.03)
        read(hub, 1, range(offset, offset + 1))  # the other partition moves on
    read(hub, 0, range(3, 5))  # offsets 3-4: not far enough yet
    await asyncio.sleep(0.03)
    spent = time.process_time() - cpu
    assert hub.checks == 0, f"{hub.checks} position checks, {spent:.3f} s CPU in 0.33 s"
    assert not any(task.done() for task in tasks)

    read(hub, 0, range(5, 6))
    await turns()
    assert all(task.done() for task in tasks)
    assert {tuple(t.result().items()) for t in tasks} == {((S0, 5),)}  # type: ignore[union-attr]


async def test_each_waiting_resume_is_let_through_by_the_batch_that_reaches_it() -> None:
    """Woken in the loop turn the hub reads its position: none of them later, none sooner,
    a stream waiting on two partitions once both are read."""
    hub = counting_hub()
    waits = catch_up(hub)
    first = asyncio.create_task(waits.wait_for_position(Resuming((S0,)), {S0: 2}))
    second = asyncio.create_task(waits.wait_for_position(Resuming((S0,)), {S0: 6}))
    both = asyncio.create_task(waits.wait_for_position(Resuming((S0, S1)), {S0: 4, S1: 1}))
    await turns()
    read(hub, 0, range(5))  # up to offset 4
    await turns()
    assert (first.done(), second.done(), both.done()) == (True, False, False)
    assert first.result() == {S0: 2}
    read(hub, 1, range(2))
    await turns()
    assert (second.done(), both.done()) == (False, True)
    assert both.result() == {S0: 4, S1: 1}
    read(hub, 0, range(5, 7))
    await turns()
    assert second.result() == {S0: 6}


async def test_a_wait_across_a_restart_of_its_partition_gives_up() -> None:
    """The ingest moved past records it could not read (``hub.restart``): the offsets
    another gateway delivered may now name other records (the log was cut back and grows
    again), so the stream starts fresh instead of being replayed from the client's id."""
    hub = counting_hub()
    waits = catch_up(hub)
    read(hub, 0, range(6))  # up to offset 5; another gateway delivered 8
    wait = asyncio.create_task(waits.wait_for_position(Resuming((S0,)), {S0: 8}))
    await turns()
    hub.restart(SCHEDULE_TOPIC, 0, 3)  # cut back: the next record is at offset 3
    read(hub, 0, range(3, 10))  # other records at offsets 3-9
    assert await asyncio.wait_for(wait, 1) is None


async def test_a_restart_of_a_partition_not_waited_for_gives_up_the_wait_too() -> None:
    """The id's other partition was read far enough already (nothing to wait for there),
    but the ingest restarts it while the stream waits for the first: its offset may now
    name another record, so the whole id starts fresh."""
    hub = counting_hub()
    waits = catch_up(hub)
    read(hub, 0, range(3))  # up to offset 2; another gateway delivered 4
    read(hub, 1, range(6))  # up to offset 5: the id's 3 is here
    wait = asyncio.create_task(waits.wait_for_position(Resuming((S0, S1)), {S0: 4, S1: 3}))
    await turns()
    hub.restart(SCHEDULE_TOPIC, 1, 2)  # cut back: the next record is at offset 2
    read(hub, 1, range(2, 6))  # other records at offsets 2-5
    read(hub, 0, range(3, 6))
    assert await asyncio.wait_for(wait, 1) is None


async def test_a_wait_ends_with_its_timeout_or_its_stream() -> None:
    hub = counting_hub()
    waits = catch_up(hub, timeout=0.2)
    started = time.monotonic()
    assert await waits.wait_for_position(Resuming((S0,)), {S0: 3}) is None
    assert 0.2 <= time.monotonic() - started < 1
    assert len(waits.waits) == 0

    waits = catch_up(hub)
    stream = Resuming((S0,))
    wait = asyncio.create_task(waits.wait_for_position(stream, {S0: 3}))
    await turns()
    stream.state = StreamState.CLOSED
    read(hub, 0, range(4))  # the batch that lets it through finds it closed
    assert await asyncio.wait_for(wait, 1) is None

    cancelled = [
        asyncio.create_task(waits.wait_for_position(Resuming((S0, S1)), {S0: 9, S1: 1}))
        for _ in range(50)
    ]
    await turns()
    assert len(waits.waits) == 50
    for task in cancelled:
        task.cancel()  # how the gateway ends the catch-up of a stream that closed
    await asyncio.gather(*cancelled, return_exceptions=True)
    assert len(waits.waits) == 0
    read(hub, 1, range(2))
    await turns()
    assert all(task.cancelled() for task in cancelled)
