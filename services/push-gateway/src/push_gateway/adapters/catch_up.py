"""Catching a stream up: from the ring buffer, from Kafka (older resume points) and from
shared snapshots of the booking-api, then one write of everything gathered
and of the records the hub buffered meanwhile (the frames: ``domain/catch_up.py``)."""

import asyncio
from collections.abc import Iterable
from functools import partial
from typing import Protocol

import structlog

from push_gateway.adapters.kafka import History, HistoryBusy, HistoryGone, LogBounds
from push_gateway.adapters.position_waits import PositionWaits
from push_gateway.adapters.snapshots import CoalescingSnapshots, TakenSnapshot
from push_gateway.config import Settings
from push_gateway.domain.catch_up import (
    CatchUpPlan,
    ChosenSnapshot,
    catch_up_frames,
    snapshot_gap,
)
from push_gateway.domain.hub import CONTROL_KEY_BYTES, ChannelHub, Record
from push_gateway.domain.positions import SCHEDULE_LETTER, PartitionKey
from push_gateway.domain.requests import StreamRequest
from push_gateway.domain.responses import ResponseHeads
from push_gateway.domain.stats import GatewayStats
from push_gateway.stream import NO_PENDING, SseConnection, StreamState
from slotstream_contracts.channels import Channel, ChannelKind

log = structlog.get_logger(__name__)


class Waiting(Protocol):
    """A stream as :meth:`CatchUp.wait_for_position` sees it."""

    @property
    def partitions(self) -> tuple[PartitionKey, ...]: ...
    @property
    def state(self) -> StreamState: ...


class CatchUp:
    """Brings an attached stream from its resume point (or nothing) to the hub's positions:
    a replay from the ring or Kafka, snapshots, ``resync`` notices; the gateway then makes
    it live. Counts snapshot requests and resumes in ``stats``."""

    def __init__(
        self,
        settings: Settings,
        hub: ChannelHub,
        snapshots: CoalescingSnapshots,
        history: History,
        bounds: LogBounds,
        heads: ResponseHeads,
        stats: GatewayStats,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.snapshots = snapshots
        self.history = history
        #: where each partition's log starts and ends (the ingest's view; tests: the hub's)
        self.bounds = bounds
        self.heads = heads
        self.stats = stats
        self.waits = PositionWaits(hub)

    def _stream_head(self, connection: SseConnection) -> bytes:
        return self.heads.stream_head(connection.origin)

    def serve_at_once(self, connection: SseConnection, request: StreamRequest) -> bool:
        """Catch a new stream up and make it live right here, without a task, when it needs
        nothing to wait for: no ticket, no resume point, and every snapshot it needs shared
        and recent (in a connect storm all but the first stream of each channel). False
        (nothing done) otherwise: the gateway's ``_serve`` does it in a task. Same frames
        either way."""
        if request.ticket is not None or request.resume_from is not None:
            return False
        hub = self.hub
        snapshots: dict[Channel, ChosenSnapshot] = {}
        for channel in connection.channels:
            if channel.kind is not ChannelKind.SCHEDULE:
                continue
            taken = self.snapshots.recent(channel.owner_id)
            if taken is None:
                return False
            start = hub.position(hub.partition_key(channel))
            gap = snapshot_gap(hub, channel, taken.since, start)
            if gap is None:
                return False  # the ring no longer reaches back to it: _serve fetches anew
            snapshots[channel] = ChosenSnapshot(taken, gap)
        try:
            positions = hub.attach(connection, connection.channels)
            self.stats.snapshot_requests += len(snapshots)
            fresh = set(connection.partitions)
            plan = CatchUpPlan(positions, None, set(), set(), fresh, snapshots=snapshots)
            self.write(connection, plan)
            connection.state = StreamState.LIVE
            hub.go_live(connection)
        except Exception:
            log.exception("stream failed")
            connection.close("internal-error", retry_ms=self.settings.retry_ms)
        return True

    def fetch_under_way(
        self, connection: SseConnection, request: StreamRequest, start: bool
    ) -> asyncio.Future[TakenSnapshot] | None:
        """The snapshot fetch a stream that :meth:`serve_at_once` could not serve may wait
        for: the one in flight for a schedule channel without a recent snapshot — with
        ``start``, started now if none is, so the streams of that channel read in the same
        loop turn (a connect storm's) wait on it too."""
        if request.ticket is not None or request.resume_from is not None:
            return None
        snapshots = self.snapshots
        for channel in connection.channels:
            owner = channel.owner_id
            if channel.kind is ChannelKind.SCHEDULE and snapshots.recent(owner) is None:
                if not start or snapshots.known_unknown(owner):
                    return snapshots.in_flight(owner)
                key = self.hub.partition_key(channel)
                return snapshots.start(owner, partial(self.hub.position, key))
        return None

    async def checked_resume(
        self, connection: SseConnection, resume: dict[PartitionKey, int]
    ) -> tuple[dict[PartitionKey, int], set[PartitionKey]]:
        """Split a client's resume point into the components that can be honoured and the
        partitions whose history it cannot have: ahead of the log (not an id any gateway
        wrote), before its start, or more than ``max_resume_lag`` records behind its end.
        Those start fresh — a snapshot, or a ``resync`` frame for notifications — at once:
        an anonymous client must not be able to make the gateway read (or wait for) history
        of its choosing.

        This gateway knows the log's end from its own fetches, which may be behind another
        gateway's: a component at or past it that is otherwise valid is checked against the
        broker's end (``LogBounds.log_end``: one request per partition at a time, spaced,
        shared by all resumes, so no client makes the gateway hammer the broker) and, if the
        log has it, honoured: ``wait_for_position`` then waits, bounded, for this gateway to
        read that far. A partition the ingest restarted (``hub.restart``) while the broker
        was asked is refused: the offsets checked may now name other records.

        An id names exactly the partitions of its stream's channels. One naming others was
        written for another channel set or partition layout (partitions were added since:
        a channel's earlier records are on another partition than its next ones), and one
        with a refused component may be too; then every partition starts fresh. A replay
        reads each of its partitions for all the stream's channels of that topic
        (``stream._layout``), so where the channels of one stream exchanged partitions the
        records of both layouts are replayed."""
        honoured: dict[PartitionKey, int] = {}
        lost: set[PartitionKey] = set()
        past: list[PartitionKey] = []  # at or past this gateway's end: perhaps not the log's
        partitions = connection.partitions
        for key in partitions:
            if key not in resume:
                lost.add(key)
                continue
            after = resume[key]
            start, end = self.bounds.bounds(self.hub.topic_of(key), key[1])
            if after >= end:
                past.append(key)
            elif self._within(after, start, end):
                honoured[key] = after
            else:
                lost.add(key)
        if past and not lost and len(resume) == len(partitions):
            bounds, hub = self.bounds, self.hub
            restarts = self._restarts(partitions)
            ends = await asyncio.gather(
                *(bounds.log_end(hub.topic_of(key), key[1]) for key in past)
            )
            # a partition restarted meanwhile (``hub.restart``) may have other records at
            # the offsets checked: before the lookup and after it
            lost.update(
                key
                for key, before, after in zip(
                    partitions, restarts, self._restarts(partitions), strict=True
                )
                if after != before
            )
            for key, log_end in zip(past, ends, strict=True):
                start = bounds.bounds(hub.topic_of(key), key[1])[0]
                after = resume[key]
                if log_end is not None and after < log_end and self._within(after, start, log_end):
                    honoured[key] = after
                else:
                    lost.add(key)
        else:
            lost.update(past)
        if lost or len(resume) != len(partitions):
            lost = set(partitions)
            honoured = {}
        if lost:
            self.stats.resumes_refused += len(lost)
            log.info("resume point refused", partitions=sorted(f"{k[0]}{k[1]}" for k in lost))
        return honoured, lost

    def _restarts(self, keys: Iterable[PartitionKey]) -> list[int]:
        """Each partition's restart count (``hub.restarts``), to be compared across an
        ``await``: one that changed may name other records at the offsets checked."""
        return [self.hub.restarts(key) for key in keys]

    def _within(self, after: int, start: int, end: int) -> bool:
        """A resume from ``after`` (``< end``) reads no record before the log's start and at
        most ``max_resume_lag`` records."""
        return start - 1 <= after and end - 1 - after <= self.settings.max_resume_lag

    async def wait_for_position(
        self, connection: Waiting, resume: dict[PartitionKey, int]
    ) -> dict[PartitionKey, int] | None:
        """A client resuming from a gateway that is ahead of this one waits until this one
        has read that far (else it would receive records it already has). None: not read
        within ``catch_up_timeout_seconds``, the ingest restarted one of the partitions
        meanwhile (one waited for or not), or the stream closed; it starts fresh (a
        snapshot is always correct)."""
        known = {k: v for k, v in resume.items() if k in connection.partitions}
        restarts = self._restarts(known)
        try:
            async with asyncio.timeout(self.settings.catch_up_timeout_seconds):
                reached = await self.waits.reached(known)
        except TimeoutError:
            return None
        if not reached or connection.state is StreamState.CLOSED:
            return None
        if self._restarts(known) != restarts:
            return None
        return known

    async def catch_up(
        self,
        connection: SseConnection,
        positions: dict[PartitionKey, int],
        resume: dict[PartitionKey, int] | None,
        announce: set[PartitionKey],
        lost: set[PartitionKey],
        client_resume: bool,
    ) -> None:
        """Snapshot and/or replay, then the records buffered meanwhile; all written at once.

        ``lost``: partitions whose resume point could not be honoured; their schedule
        channels get a snapshot, their notification channels a ``resync`` frame with
        reason ``history-unavailable`` (the client reloads its notifications).
        ``client_resume``: the replay is a client's resume (``Last-Event-ID``, ``since``),
        counted in ``gateway_resumes_total``; a live stream's resync replays too, uncounted."""
        hub = self.hub
        plan = CatchUpPlan(positions, resume, announce, lost, fresh=set(announce) | lost)
        fresh, replay = plan.fresh, plan.replay
        reads: dict[PartitionKey, tuple[int, int]] = {}
        for key in connection.partitions:
            if resume is None or key not in resume or key in fresh:
                fresh.add(key)
                continue
            keys = connection.keys_of_partition[key]
            after, last = resume[key], positions[key]
            # Replay up to the stream's position only: the records after it are buffered
            # (``pending``, since ``attach``/``to_pending``). A live stream's resync is
            # caught up in a task, so the ring may be read after more records came; read
            # unbounded, those were written twice (once without a ``ce_id`` to tell them
            # apart) and the second copy's id went back.
            ring = hub.ring_since(key, after, keys)
            if ring is None:
                stop = min(hub.ring_floor(key), last + 1)
                if after + 1 < stop:
                    reads[key] = (after + 1, stop)
                ring = hub.ring_since(key, stop - 1, keys) or []
            elif client_resume:
                self.stats.resumes_ring += 1
            replay[key] = [r for r in ring if r.offset <= last]
        for key, (first, stop) in reads.items():
            # control records too, as ring replays have them: a resync in the missed range
            # means the replay cannot be trusted
            wanted = {CONTROL_KEY_BYTES, *connection.keys_of_partition[key]}
            try:
                older = await self.history.read(hub.topic_of(key), key[1], first, stop, wanted)
                replay[key] = older + replay[key]
                if client_resume:
                    self.stats.resumes_kafka += 1
            except HistoryGone as exc:
                log.info("resume point not read from Kafka", reason=str(exc))
                if client_resume and isinstance(exc, HistoryBusy):
                    self.stats.resumes_busy += 1
                elif client_resume:
                    self.stats.resumes_gone += 1
                fresh.add(key)
                lost.add(key)
                del replay[key]
        for key, records in list(replay.items()):
            if any(r.key == CONTROL_KEY_BYTES for r in records):
                fresh.add(key)  # a resync happened in the missed range: start over
                announce.add(key)
                del replay[key]

        snapshot_channels = [
            c
            for c in connection.channels
            if c.kind is ChannelKind.SCHEDULE and hub.partition_key(c) in fresh
        ]
        plan.snapshots = await self._snapshots(snapshot_channels, positions, announce)
        if connection.state is StreamState.CLOSED:
            return
        self.write(connection, plan)

    def write(self, connection: SseConnection, plan: CatchUpPlan) -> None:
        """Write what :meth:`catch_up` gathered, and the records buffered meanwhile, in one
        write, which the slow-consumer limit does not count (``output_catch_up``)."""
        out: list[bytes] = []
        if not connection.headers_sent:
            out.append(self._stream_head(connection))
        pending: Iterable[tuple[PartitionKey, Record]] = connection.pending
        if connection.resync_requested and pending:
            # A resync came while the stream caught up: its next round (``Gateway._serve``)
            # writes ``resync`` and a snapshot fetched after it, which shows the schedule
            # records buffered until then. Written now, their ids would pass the resync:
            # a client cut off before that round resumed past it, without the snapshot.
            resynced = connection.resync_requested
            pending = [
                (key, record)
                for key, record in pending
                if key not in resynced or key[0] != SCHEDULE_LETTER
            ]
        out += catch_up_frames(
            self.hub,
            connection.channels,
            connection.channel_of_key,
            pending,
            plan,
            connection.readers,
        )
        connection.pending = NO_PENDING
        connection.headers_sent = True
        connection.output_catch_up(b"".join(out), self.settings.max_pending_bytes)

    async def _snapshots(
        self,
        channels: list[Channel],
        positions: dict[PartitionKey, int],
        resynced: set[PartitionKey],
    ) -> dict[Channel, ChosenSnapshot]:
        """A snapshot per channel, each with its gap to the stream's start taken from the
        ring at once: the other channels' fetches may take long enough for the ring to
        move past it."""
        if not channels:
            return {}
        self.stats.snapshot_requests += len(channels)
        hub = self.hub

        async def one(channel: Channel) -> ChosenSnapshot:
            key = hub.partition_key(channel)
            # after a resync only a snapshot taken after it will do
            taken = await self.snapshots.fetch(
                channel.owner_id,
                partial(hub.position, key),
                fresh_after=positions[key] + 1 if key in resynced else None,
            )
            gap = snapshot_gap(hub, channel, taken.since, positions[key])
            if gap is None:
                # the ring no longer reaches back to that snapshot: take one from the
                # stream's start or later, which leaves no gap
                taken = await self.snapshots.fetch(
                    channel.owner_id, partial(hub.position, key), fresh_after=positions[key]
                )
                gap = []
            return ChosenSnapshot(taken, gap)

        # The booking-api requests this stream starts go one at a time, here: the stream
        # fails on the first 404 (then cached), so a request naming unknown instructors
        # costs one booking-api request, whatever known ones come before them. Snapshots
        # that are shared (recent, or a fetch under way) cost none: awaited meanwhile.
        snapshots = self.snapshots
        shared = [
            c
            for c in channels
            if snapshots.recent(c.owner_id) is not None
            or snapshots.in_flight(c.owner_id) is not None
        ]
        async with asyncio.timeout(self.settings.snapshot_timeout_seconds * 3):
            awaiting_shared = asyncio.gather(*(one(c) for c in shared))
            try:
                found = {c: await one(c) for c in channels if c not in shared}
                found.update(zip(shared, await awaiting_shared, strict=True))
            finally:
                if not awaiting_shared.done():
                    awaiting_shared.cancel()
                elif not awaiting_shared.cancelled():
                    awaiting_shared.exception()  # retrieved: the first failure was raised
        return {channel: found[channel] for channel in channels}
