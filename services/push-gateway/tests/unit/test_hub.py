from dataclasses import dataclass, field, replace

import orjson
import pytest

from push_gateway.domain.catch_up import CatchUpPlan, catch_up_frames
from push_gateway.domain.hub import NO_READERS, ChannelHub, Readers, Record, Writer, frame_body
from push_gateway.domain.positions import PartitionKey
from push_gateway.domain.ws_protocol import event_frame
from push_gateway.testing import (
    FakeRecord,
    booking_event,
    notification_event,
    record_of,
    resync_event,
    slot_event,
)
from slotstream_contracts.channels import Channel, ChannelKind
from slotstream_contracts.entities import Audience
from slotstream_contracts.topics import NOTIFICATIONS_TOPIC, SCHEDULE_TOPIC


@dataclass(eq=False)
class FakeSubscriber:
    partitions: tuple[PartitionKey, ...]
    frames: list[bytes] = field(default_factory=list)
    buffered: list[tuple[PartitionKey, Record]] = field(default_factory=list)
    resyncs: list[PartitionKey] = field(default_factory=list)
    readers: Readers = NO_READERS

    @property
    def writer(self) -> Writer:
        return self.frames.append

    def buffer(self, key: PartitionKey, record: Record) -> None:
        self.buffered.append((key, record))

    def on_resync(self, key: PartitionKey) -> None:
        self.resyncs.append(key)


class UnreadableValue:
    """A value the hub may keep (the ring stores it) but must never read or frame."""

    def __len__(self) -> int:
        raise AssertionError("value read for a record nobody subscribes to")

    def __contains__(self, item: object) -> bool:
        raise AssertionError("value searched for a record nobody subscribes to")

    def __bytes__(self) -> bytes:
        raise AssertionError("value read for a record nobody subscribes to")

    def __radd__(self, other: object) -> bytes:
        raise AssertionError("value framed for a record nobody subscribes to")


class UndecodableRecord:
    """A record whose value must not be touched (routing is by key only)."""

    def __init__(self, offset: int, key: bytes) -> None:
        self.offset = offset
        self.key = key
        self.headers = ()
        self.value = UnreadableValue()


@pytest.fixture
def hub() -> ChannelHub:
    hub = ChannelHub(
        {ChannelKind.SCHEDULE: SCHEDULE_TOPIC, ChannelKind.NOTIFICATIONS: NOTIFICATIONS_TOPIC},
        ring_size=8,
    )
    for p in range(3):
        hub.assign(SCHEDULE_TOPIC, p, 0, 3)
    hub.assign(NOTIFICATIONS_TOPIC, 0, 0, 1)
    return hub


def live(hub: ChannelHub, *channels: Channel) -> FakeSubscriber:
    sub = FakeSubscriber(tuple(sorted({hub.partition_key(c) for c in channels})))
    hub.attach(sub, channels)
    hub.go_live(sub)
    return sub


def ingest(hub: ChannelHub, instructor: str, records: list[FakeRecord]) -> None:
    hub.ingest(SCHEDULE_TOPIC, hub.partition_key(Channel.schedule(instructor))[1], records)


def test_every_subscriber_gets_the_same_frame_bytes(hub: ChannelHub) -> None:
    a, b = live(hub, Channel.schedule("i1")), live(hub, Channel.schedule("i1"))
    other = live(hub, Channel.schedule("i2"))
    ingest(hub, "i1", [record_of(slot_event("i1", "s1", 1), 0)])
    assert len(a.frames) == 1
    assert a.frames[0] is b.frames[0]  # encoded once, shared
    assert other.frames == []
    part = hub.partition_key(Channel.schedule("i1"))[1]
    assert a.frames[0].startswith(f"id: s{part}:0\nevent: slot\ndata: ".encode())
    assert hub.stats.deliveries == 2


def test_order_per_channel_is_the_log_order(hub: ChannelHub) -> None:
    sub = live(hub, Channel.schedule("i1"))
    ingest(hub, "i1", [record_of(slot_event("i1", "s1", v), v) for v in range(1, 6)])
    versions = [orjson.loads(f.split(b"data: ")[1])["version"] for f in sub.frames]
    assert versions == [1, 2, 3, 4, 5]


def test_record_without_subscriber_is_not_decoded(hub: ChannelHub) -> None:
    live(hub, Channel.schedule("i1"))
    records = [UndecodableRecord(n, b"nobody-here") for n in range(5)]
    ingest(hub, "nobody-here", records)  # type: ignore[arg-type]
    assert hub.stats.records == 5
    assert hub.stats.framed == 0


def test_a_private_record_nobody_here_reads_is_not_decoded(hub: ChannelHub) -> None:
    """The role a private record is for is read from its value only when the record's
    user has local subscribers."""
    reader(hub, "u1", STUDENTS)
    records = [UndecodableRecord(n, b"nobody-here") for n in range(5)]
    hub.ingest(NOTIFICATIONS_TOPIC, 0, records)  # type: ignore[arg-type]
    assert hub.stats.records == 5
    assert hub.stats.framed == 0


STUDENTS: Readers = frozenset({Audience.STUDENT})
INSTRUCTORS: Readers = frozenset({Audience.INSTRUCTOR})
ADMINS: Readers = frozenset(Audience)


def reader(hub: ChannelHub, user: str, readers: Readers) -> FakeSubscriber:
    """A live subscriber of ``users/{user}/notifications`` reading it as ``readers``."""
    channel = Channel.notifications(user)
    sub = FakeSubscriber((hub.partition_key(channel),), readers=readers)
    hub.attach(sub, [channel])
    hub.go_live(sub)
    return sub


def test_each_role_of_an_id_reads_its_own_records_and_admins_all(hub: ChannelHub) -> None:
    subs = {r: reader(hub, "u1", r) for r in (STUDENTS, INSTRUCTORS, ADMINS)}
    not_a_role = orjson.loads(record_of(notification_event("u1", "n-x", "?"), 3).value or b"")
    hub.ingest(
        NOTIFICATIONS_TOPIC,
        0,
        [
            record_of(notification_event("u1", "n-s", "mine", Audience.STUDENT), 0),
            record_of(notification_event("u1", "n-i", "yours", Audience.INSTRUCTOR), 1),
            record_of(notification_event("u1", "n-old", "everyone's"), 2),
            FakeRecord(
                3,
                b"u1",
                orjson.dumps({**not_a_role, "audience": ["student"]}),
                b"notification.created",
                b"n-x-v1",
            ),
        ],
    )
    ids = {
        r: [orjson.loads(f.split(b"data: ")[1])["id"] for f in s.frames] for r, s in subs.items()
    }
    assert ids == {
        STUDENTS: ["n-s-v1", "n-old-v1"],
        INSTRUCTORS: ["n-i-v1", "n-old-v1"],
        ADMINS: ["n-s-v1", "n-i-v1", "n-old-v1"],
    }
    assert hub.subscriber_counts() == {Channel.notifications("u1"): 3}
    for sub in subs.values():
        hub.detach(sub)
    assert hub.subscriber_counts() == {}


def test_live_and_replayed_private_frames_are_the_same_for_every_role(hub: ChannelHub) -> None:
    """A booking is one record per reader with one CloudEvents id: of u1 by u1 (one id,
    two people) both on ``users/u1/notifications``, of u1 by u2 one there and one on
    ``users/u2/notifications``. A stream gets each record its role reads once — an
    admin's all four — and a re-sent copy (same id, same role) never, live or replayed."""
    student, instructor = Audience.STUDENT, Audience.INSTRUCTOR
    records = [
        record_of(booking_event("u1", "b1", "s1", "u1", instructor), 0),
        record_of(booking_event("u1", "b1", "s1", "u1", student), 1),
        record_of(booking_event("u1", "b2", "s2", "u2", instructor), 2),
        record_of(booking_event("u1", "b2", "s2", "u2", student), 3),
    ]
    records += [replace(records[1], offset=4), replace(records[3], offset=5)]  # re-sent
    streams = {
        STUDENTS: ["u1"],
        INSTRUCTORS: ["u1"],
        ADMINS: ["u1", "u2"],
    }
    subs = {}
    for readers, users in streams.items():
        subs[readers] = FakeSubscriber((("n", 0),), readers=readers)
        hub.attach(subs[readers], [Channel.notifications(u) for u in users])
        hub.go_live(subs[readers])
    hub.ingest(NOTIFICATIONS_TOPIC, 0, records)
    for readers, users in streams.items():
        channels = tuple(Channel.notifications(u) for u in users)
        plan = CatchUpPlan({("n", 0): 5}, {("n", 0): -1}, set(), set())
        plan.replay[("n", 0)] = [r for r in records if r.key in {u.encode() for u in users}]
        replayed = catch_up_frames(hub, channels, {}, (), plan, readers)
        assert replayed == subs[readers].frames, readers
    offsets = {r: [f.split(b"\n")[0] for f in sub.frames] for r, sub in subs.items()}
    assert offsets == {
        STUDENTS: [b"id: n0:1"],
        INSTRUCTORS: [b"id: n0:0", b"id: n0:2"],
        ADMINS: [b"id: n0:0", b"id: n0:1", b"id: n0:2", b"id: n0:3"],
    }


def test_resent_change_is_delivered_once(hub: ChannelHub) -> None:
    sub = live(hub, Channel.schedule("i1"))
    event = slot_event("i1", "s1", 2)
    ingest(hub, "i1", [record_of(event, 0), record_of(event, 1)])
    assert len(sub.frames) == 1
    assert hub.stats.duplicates == 1


def test_malformed_record_is_dropped_not_sent(hub: ChannelHub) -> None:
    sub = live(hub, Channel.schedule("i1"))
    bad = FakeRecord(0, b"i1", b'{"x":"a\nb"}', b"slot.updated", b"x")
    unknown = FakeRecord(1, b"i1", b"{}", b"weird.type")
    ingest(hub, "i1", [bad, unknown])
    assert sub.frames == []
    assert hub.stats.malformed == 2


def test_pending_subscriber_buffers_until_live(hub: ChannelHub) -> None:
    channel = Channel.schedule("i1")
    sub = FakeSubscriber((hub.partition_key(channel),))
    hub.attach(sub, [channel])
    ingest(hub, "i1", [record_of(slot_event("i1", "s1", 1), 0)])
    assert sub.frames == []
    assert len(sub.buffered) == 1
    hub.go_live(sub)
    ingest(hub, "i1", [record_of(slot_event("i1", "s1", 2), 1)])
    assert len(sub.frames) == 1
    assert len(sub.buffered) == 1


def test_detached_subscriber_gets_nothing_and_channel_is_forgotten(hub: ChannelHub) -> None:
    channel = Channel.schedule("i1")
    sub = live(hub, channel)
    hub.detach(sub)
    ingest(hub, "i1", [record_of(slot_event("i1", "s1", 1), 0)])
    assert sub.frames == []
    assert hub.subscriber_counts() == {}


def test_connection_on_two_partitions_gets_a_position_vector(hub: ChannelHub) -> None:
    schedule, notes = Channel.schedule("i1"), Channel.notifications("u1")
    sub = live(hub, schedule, notes)
    ingest(hub, "i1", [record_of(slot_event("i1", "s1", 1), 41)])
    s_part = hub.partition_key(schedule)[1]
    assert sub.frames[0].startswith(f"id: n0:-1.s{s_part}:41\n".encode())


def test_resync_record_reaches_subscribers_of_that_partition(hub: ChannelHub) -> None:
    sub = live(hub, Channel.schedule("i1"))
    key = hub.partition_key(Channel.schedule("i1"))
    other_part = (key[1] + 1) % 3
    hub.ingest(SCHEDULE_TOPIC, other_part, [record_of(resync_event("r0"), 0)])
    assert sub.resyncs == []
    hub.ingest(SCHEDULE_TOPIC, key[1], [record_of(resync_event("r1"), 0)])
    assert sub.resyncs == [key]


def test_ring_serves_resumes_until_it_wraps(hub: ChannelHub) -> None:
    key = hub.partition_key(Channel.schedule("i1"))
    ingest(hub, "i1", [record_of(slot_event("i1", "s1", v + 1), v) for v in range(6)])
    found = hub.ring_since(key, 3, {b"i1"})
    assert found is not None
    assert [r.offset for r in found] == [4, 5]
    ingest(hub, "i1", [record_of(slot_event("i1", "s1", v + 1), v) for v in range(6, 20)])
    assert hub.ring_since(key, 3, {b"i1"}) is None  # ring holds 8: offsets 12..19
    assert hub.ring_floor(key) == 12
    found = hub.ring_since(key, 11, {b"i1"})
    assert found is not None
    assert len(found) == 8


def test_a_booking_left_on_the_schedule_topic_is_never_framed_for_a_public_channel(
    hub: ChannelHub,
) -> None:
    """Bookings are private (issue 10, item 1): one written to the schedule topic by an
    older publisher names its student, so neither live delivery nor a replay of the ring
    or of Kafka frames it on ``instructors/{id}/schedule``."""
    legacy = record_of(booking_event("i1", "b1", "s1", "student-7"), 0)
    public = live(hub, Channel.schedule("i1"))
    ingest(hub, "i1", [legacy, record_of(slot_event("i1", "s1", 2), 1)])
    assert len(public.frames) == 1
    assert b"student-7" not in b"".join(public.frames)
    key = hub.partition_key(Channel.schedule("i1"))
    replayed = hub.ring_since(key, -1, {b"i1"})
    assert replayed is not None
    assert [frame_body(r, key[0], NO_READERS) is None for r in replayed] == [True, False]


def test_a_booking_on_the_notifications_topic_reaches_the_private_channel(
    hub: ChannelHub,
) -> None:
    private = live(hub, Channel.notifications("student-7"))
    record = record_of(booking_event("i1", "b1", "s1", "student-7"), 0)
    hub.ingest(
        NOTIFICATIONS_TOPIC,
        0,
        [FakeRecord(0, b"student-7", record.value, record.ce_type, record.ce_id)],
    )
    assert len(private.frames) == 1
    assert b"event: booking" in private.frames[0]
    key = hub.partition_key(Channel.notifications("student-7"))
    assert frame_body(record, key[0], NO_READERS) is not None


@dataclass(eq=False)
class FakeWsSubscriber(FakeSubscriber):
    websocket: bool = True


def test_frames_are_exactly_id_event_and_data_lines(hub: ChannelHub) -> None:
    """The bytes a client parses, for each kind of subscriber of one record: an SSE stream
    on one partition (id = the record's position), one on two partitions (id = the
    vector), and a WebSocket subscription (the same event and id in a JSON text frame)."""
    schedule, notes = Channel.schedule("i1"), Channel.notifications("u1")
    single, vector = live(hub, schedule), live(hub, schedule, notes)
    ws = FakeWsSubscriber((hub.partition_key(schedule),))
    hub.attach(ws, [schedule])
    hub.go_live(ws)
    event = slot_event("i1", "s1", 2)
    ingest(hub, "i1", [record_of(event, 41)])
    part = hub.partition_key(schedule)[1]
    data = event.to_json()
    assert single.frames == [b"id: s%d:41\nevent: slot\ndata: %s\n\n" % (part, data)]
    assert vector.frames == [b"id: n0:-1.s%d:41\nevent: slot\ndata: %s\n\n" % (part, data)]
    assert ws.frames == [event_frame(b"slot", data, b"s%d:41" % part)]
    assert hub.stats.framed == 1
    assert hub.stats.deliveries == 3


def test_each_check_counts_what_it_dropped(hub: ChannelHub) -> None:
    """A copy of an unframable record is a duplicate, and a record of a type the topic does
    not carry is malformed whatever its id (the order of the hub's checks)."""
    sub = live(hub, Channel.schedule("i1"))
    broken = FakeRecord(0, b"i1", b'{"x":"a\rb"}', b"slot.updated", b"e")
    wrong = FakeRecord(2, b"i1", b"{}", b"booking.created", b"e")
    no_type = FakeRecord(3, b"i1", b"{}", ce_id=b"f")
    ingest(hub, "i1", [broken, FakeRecord(1, b"i1", b"{}", b"slot.updated", b"e"), wrong, no_type])
    assert sub.frames == []
    assert (hub.stats.malformed, hub.stats.duplicates, hub.stats.framed) == (3, 1, 0)


@pytest.mark.parametrize(
    "value",
    [b'{"id":"x","data":\xff\xfe}', b'{"id":"x",', b'"text"', b"[1,2]", b"\xef\xbb\xbf{}"],
    ids=["not-utf8", "not-json", "a-string", "an-array", "utf8-bom"],
)
def test_a_value_that_is_no_utf8_json_object_is_never_framed(hub: ChannelHub, value: bytes) -> None:
    """The ``data`` of an SSE frame and of a WebSocket message is the record's value as it
    is: one that is not a UTF-8 JSON object would reach the page unparsable (on a
    WebSocket, invalid UTF-8 fails the whole connection), live or replayed from the ring."""
    schedule = Channel.schedule("i1")
    sse = live(hub, schedule)
    ws = FakeWsSubscriber((hub.partition_key(schedule),))
    hub.attach(ws, [schedule])
    hub.go_live(ws)
    bad = FakeRecord(0, b"i1", value, b"slot.updated", b"x")
    ingest(hub, "i1", [bad])
    assert (sse.frames, ws.frames) == ([], [])
    assert hub.stats.malformed == 1
    assert frame_body(bad, "s", NO_READERS) is None  # replays (ring, Kafka) skip it too
