"""The ids of a catch-up's frames, whichever frame a client's connection is cut after.

A catch-up is written at once but may be megabytes (snapshots); a connection may break
anywhere in it, and the client then resumes from the last ``id`` it received. So no id may
say a partition is covered (``domain/positions.py``) before every ``snapshot`` and
``resync`` frame for it has been sent.
"""

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from push_gateway.adapters.snapshots import TakenSnapshot
from push_gateway.domain.catch_up import CatchUpPlan, ChosenSnapshot, catch_up_frames
from push_gateway.domain.hub import NO_READERS, ChannelHub, Record
from push_gateway.domain.positions import PartitionKey, parse_position
from push_gateway.testing import record_of, slot, slot_event, snapshot
from slotstream_contracts.channels import Channel, ChannelKind
from slotstream_contracts.topics import NOTIFICATIONS_TOPIC, SCHEDULE_TOPIC

INSTRUCTORS = ("i1", "i2", "i3", "i5")  # on schedule partitions 0, 1, 1, 0
USERS = ("u1", "u2", "u3")
POSITION = 40


def hub_of(notification_partitions: int) -> ChannelHub:
    hub = ChannelHub(
        {ChannelKind.SCHEDULE: SCHEDULE_TOPIC, ChannelKind.NOTIFICATIONS: NOTIFICATIONS_TOPIC},
        ring_size=64,
    )
    for p in range(2):
        hub.assign(SCHEDULE_TOPIC, p, POSITION + 1, 2)
    for p in range(notification_partitions):
        hub.assign(NOTIFICATIONS_TOPIC, p, POSITION + 1, notification_partitions)
    return hub


def taken(instructor: str, since: int) -> TakenSnapshot:
    schedule = snapshot(instructor, [slot(instructor, f"{instructor}-a", 3)])
    return TakenSnapshot(
        schedule,
        since,
        0.0,
        encoded=orjson.dumps(schedule.model_dump(mode="json")),
        versions={s.id: s.version for s in schedule.slots},
    )


@st.composite
def catch_ups(draw: st.DrawFn) -> tuple[ChannelHub, tuple[Channel, ...], CatchUpPlan, list[bytes]]:
    hub = hub_of(draw(st.integers(1, 2)))
    instructors = draw(st.lists(st.sampled_from(INSTRUCTORS), unique=True, max_size=4))
    users = draw(st.lists(st.sampled_from(USERS), unique=True, max_size=2))
    channels = tuple(Channel.schedule(i) for i in instructors) + tuple(
        Channel.notifications(u) for u in users
    )
    if not channels:
        channels = (Channel.schedule("i1"),)
    partitions = sorted({hub.partition_key(c) for c in channels})
    positions = {k: hub.position(k) for k in partitions}
    resume: dict[PartitionKey, int] | None = None
    if draw(st.booleans()):
        resume = {k: positions[k] - draw(st.integers(0, 5)) for k in partitions}
        fresh = set(draw(st.sets(st.sampled_from(partitions))))
    else:
        fresh = set(partitions)
    announce = {k for k in fresh if draw(st.booleans())}
    lost = {k for k in fresh - announce if resume is not None and draw(st.booleans())}
    plan = CatchUpPlan(positions, resume, announce, lost, fresh)
    for key in partitions:
        if key in fresh or resume is None:
            continue
        plan.replay[key] = [
            record_of(slot_event(c.owner_id, f"{c.owner_id}-a", 4 + offset), offset)
            for offset in range(resume[key] + 1, positions[key] + 1)
            for c in channels
            if c.kind is ChannelKind.SCHEDULE and hub.partition_key(c) == key
        ]
    chosen: dict[Channel, ChosenSnapshot] = {}
    for channel in channels:
        key = hub.partition_key(channel)
        if channel.kind is ChannelKind.SCHEDULE and key in fresh:
            since = positions[key] - draw(st.integers(0, 3))
            gap: list[Record] = [
                record_of(slot_event(channel.owner_id, f"{channel.owner_id}-b", 1), offset)
                for offset in range(since + 1, positions[key] + 1)
            ]
            chosen[channel] = ChosenSnapshot(taken(channel.owner_id, since), gap)
    plan.snapshots = chosen
    frames = catch_up_frames(hub, channels, {}, (), plan, NO_READERS)
    return hub, channels, plan, frames


def parsed(frame: bytes) -> tuple[str | None, str, dict[str, object]]:
    fields = dict(line.split(": ", 1) for line in frame.decode().strip("\n").split("\n"))
    return fields.get("id"), fields["event"], orjson.loads(fields["data"])


@settings(max_examples=300, deadline=None)
@given(catch_ups())
def test_no_id_covers_a_partition_before_its_snapshot_and_resync_frames(
    case: tuple[ChannelHub, tuple[Channel, ...], CatchUpPlan, list[bytes]],
) -> None:
    """Every id sent before a partition's last ``snapshot`` or ``resync`` frame names it at
    the client's own resume point (resuming from it brings that frame again), or the frame
    has no id (the client keeps the one it had)."""
    hub, channels, plan, frames = case
    by_name = {c.name: c for c in channels}
    shown = [parsed(f) for f in frames]
    for n, (frame_id, _, _) in enumerate(shown):
        if frame_id is None:
            continue
        vector = parse_position(frame_id)
        for later_id, event, data in shown[n + 1 :]:
            if event not in ("snapshot", "resync"):
                continue
            key = hub.partition_key(by_name[str(data["channel"])])
            at_resume = plan.resume[key] if plan.resume and key in plan.resume else None
            assert vector.get(key) == at_resume, (frame_id, event, data["channel"], later_id)
