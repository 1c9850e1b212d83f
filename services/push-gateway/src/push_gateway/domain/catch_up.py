"""The frames that catch a stream up, in order: ``resync`` notices and snapshots (only the
last of them with an ``id``), the records between each snapshot and the stream's start,
replayed records, then the records buffered while it caught up; each record with the
position vector as its ``id``. No I/O: the caller gathered the replay and the snapshots and
writes the frames in one system call."""

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Final, NamedTuple, Protocol

import orjson

from push_gateway.domain.frames import event_body, json_frame, with_id
from push_gateway.domain.hub import (
    CONTROL_KEY_BYTES,
    PUBLIC,
    ChannelHub,
    Readers,
    Record,
    frame_body,
)
from push_gateway.domain.merge import newer_than_snapshot
from push_gateway.domain.positions import PartitionKey, format_position
from slotstream_contracts.channels import Channel, ChannelKind

#: snapshot frames (channel, position) kept with a shared snapshot for reuse
MAX_FRAMES_PER_SNAPSHOT: Final = 8


class SharedSnapshot(Protocol):
    """A schedule snapshot as streams share it (``adapters.snapshots.TakenSnapshot``)."""

    @property
    def since(self) -> int:
        """Every record of its partition up to this offset is reflected in it."""

    @property
    def encoded(self) -> bytes:
        """The snapshot's JSON, encoded once."""

    @property
    def versions(self) -> dict[str, int]:
        """Slot id → version, for merging buffered deltas."""

    @property
    def frames(self) -> dict[tuple[str, bytes | None], bytes]:
        """(channel name, frame id) → the complete snapshot frame (a cache it carries)."""


def snapshot_frame(channel: Channel, taken: SharedSnapshot, frame_id: bytes | None) -> bytes:
    """``{"channel": …, "schedule": …}`` around the snapshot JSON encoded once per fetch;
    the whole frame is kept with the snapshot, so the streams that share it at the same
    position (a connect storm's) share its bytes too instead of copying and checking them
    again each. ``frame_id`` None: a frame without ``id:`` (see :func:`catch_up_frames`)."""
    frames = taken.frames
    found = frames.get((channel.name, frame_id))
    if found is None:
        data = b'{"channel":' + orjson.dumps(channel.name) + b',"schedule":' + taken.encoded
        body = event_body(b"snapshot", data + b"}")
        found = body if frame_id is None else with_id(frame_id, body)
        if len(frames) >= MAX_FRAMES_PER_SNAPSHOT:
            frames.clear()
        frames[(channel.name, frame_id)] = found
    return found


class ChosenSnapshot(NamedTuple):
    """A shared snapshot chosen for one channel of a stream, with that channel's records
    between the snapshot and the stream's start, read from the ring when the snapshot was
    chosen: by the time the stream is written (after its other channels' fetches) the ring
    may have moved past them."""

    taken: SharedSnapshot
    gap: Sequence[Record]


def snapshot_gap(hub: ChannelHub, channel: Channel, since: int, start: int) -> list[Record] | None:
    """The channel's data records after ``since`` (a snapshot's) up to ``start`` (the
    stream's) from the ring; None when the ring no longer reaches back to ``since``, or
    when a ``stream.resync`` came in between: the snapshot is from before it, when the
    log could not be trusted, and the records since need not repeat every change (the
    caller takes a snapshot after it instead)."""
    if since >= start:
        return []
    keys = {channel.record_key, CONTROL_KEY_BYTES}
    records = hub.ring_since(hub.partition_key(channel), since, keys)
    if records is None:
        return None
    gap = [r for r in records if r.offset <= start]
    if any(r.key == CONTROL_KEY_BYTES for r in gap):
        return None
    return gap


def newer(record: Record, versions: dict[str, int]) -> bool:
    """Whether ``record`` changes something a snapshot with these versions does not show."""
    if record.value is None:
        return False
    return newer_than_snapshot((record.ce_type or b"").split(b".", 1)[0], record.value, versions)


@dataclass(slots=True)
class CatchUpPlan:
    """What catching a stream up gathered, per partition of its channels."""

    #: where the stream attached to the hub (its records after these are buffered)
    positions: dict[PartitionKey, int]
    #: the client's resume point, where it gave one that can be honoured
    resume: dict[PartitionKey, int] | None
    #: partitions whose channels get a ``resync`` frame (a resync record was read)
    announce: set[PartitionKey]
    #: partitions whose resume point could not be honoured: their schedule channels get a
    #: snapshot, their notification channels a ``resync`` (``history-unavailable``)
    lost: set[PartitionKey]
    #: partitions that start at ``positions`` (no replay)
    fresh: set[PartitionKey] = field(default_factory=set)
    #: records after the resume point up to ``positions``, from the ring or Kafka (the
    #: later ones are buffered: ``pending``)
    replay: dict[PartitionKey, list[Record]] = field(default_factory=dict)
    snapshots: Mapping[Channel, ChosenSnapshot] = field(default_factory=dict)


def catch_up_frames(
    hub: ChannelHub,
    channels: tuple[Channel, ...],
    channel_of_key: Mapping[tuple[str, bytes], Channel],
    pending: Iterable[tuple[PartitionKey, Record]],
    plan: CatchUpPlan,
    readers: Readers,
) -> list[bytes]:
    """The frames of a stream of ``channels``: a ``resync`` frame per channel of
    ``announce`` (and per notification channel of ``lost``) and the snapshots, then the
    plan's replay, then ``pending`` (the records the hub buffered meanwhile), each record
    at most once and none that a snapshot already shows; of the private records only
    those for the roles the stream reads (``readers``) — the replay holds every role's.
    "At most once" as live delivery has it (``ChannelHub._dispatch``): per channel, by
    CloudEvents id and, for a private record, audience — a booking is one record per
    reader with one id, and a stream of its instructor's and its student's channels (an
    admin's) is sent both live, as one of an id that is both roles reads both.

    Every ``id`` must be a position the client can resume from without missing anything
    (``domain/positions.py``), whichever frame its connection is cut after; a catch-up may
    be megabytes of snapshots. A fresh partition (no replay) is covered only once all its
    ``resync`` and ``snapshot`` frames have arrived, so of those frames only the last
    carries an id, and they come before the replayed records, whose ids name the fresh
    partitions as covered: a client cut off before the last of them keeps the id it had,
    and resuming from it brings them all again (the same resync, history gone, or no id
    at all: a new stream)."""
    positions, resume, announce, lost = plan.positions, plan.resume, plan.announce, plan.lost
    fresh, replay, snapshots = plan.fresh, plan.replay, plan.snapshots
    out: list[bytes] = []
    vector = {k: (resume[k] if resume and k in resume else positions[k]) for k in positions}
    #: (topic letter, record key: the channel), then what live delivery tells copies by
    seen: set[tuple[str, bytes | None, object]] = set()

    def emit(key: PartitionKey, record: Record) -> None:
        vector[key] = record.offset
        framed = frame_body(record, key[0], readers)
        if framed is None:
            return
        body, audience = framed
        ce_id = record.ce_id
        if ce_id is not None:
            copy = (key[0], record.key, ce_id if audience is PUBLIC else (ce_id, audience))
            if copy in seen:
                return
            seen.add(copy)
        out.append(with_id(format_position(vector), body))

    for key in fresh:
        vector[key] = positions[key]
    # the frames that cover the fresh partitions: only the last one carries the id
    covers: list[Callable[[bytes | None], bytes]] = []
    for channel in channels:
        key = hub.partition_key(channel)
        if key in announce:
            payload: dict[str, object] = {"channel": channel.name, "reason": "resync"}
            covers.append(partial(json_frame, "resync", payload))
        elif key in lost and channel.kind is ChannelKind.NOTIFICATIONS:
            payload = {"channel": channel.name, "reason": "history-unavailable"}
            covers.append(partial(json_frame, "resync", payload))
    versions: dict[Channel, dict[str, int]] = {}
    by_partition: dict[PartitionKey, list[tuple[Channel, ChosenSnapshot]]] = {}
    for channel, chosen in snapshots.items():
        by_partition.setdefault(hub.partition_key(channel), []).append((channel, chosen))
    for key, chosen_here in by_partition.items():
        # everything up to the oldest snapshot's start is covered; the records between
        # a (shared, older) snapshot and this connection's start follow it
        vector[key] = min(positions[key], *(c.taken.since for _, c in chosen_here))
        for channel, (taken, _) in chosen_here:
            versions[channel] = taken.versions
            covers.append(partial(snapshot_frame, channel, taken))
    for n, cover in enumerate(covers, 1):
        out.append(cover(format_position(vector) if n == len(covers) else None))
    for key, chosen_here in by_partition.items():
        gap = sorted(
            (
                (r.offset, channel, r)
                for channel, (_, since_taken) in chosen_here
                for r in since_taken
            ),
            key=lambda item: item[0],
        )
        for _, channel, record in gap:
            if not newer(record, versions[channel]):
                vector[key] = record.offset
                continue
            emit(key, record)
        vector[key] = positions[key]
    for key, records in replay.items():
        for record in records:
            emit(key, record)
        vector[key] = positions[key]
    for key, record in pending:
        owner = channel_of_key.get((key[0], record.key or b""))
        if owner is not None and owner in versions:
            if not newer(record, versions[owner]):
                vector[key] = record.offset
                continue
        emit(key, record)
    return out
