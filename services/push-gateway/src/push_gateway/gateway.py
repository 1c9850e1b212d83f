"""The gateway service: accepts SSE streams, catches each one up (snapshot or resume), then
hands it to the hub for live delivery. Also heartbeats, presence and graceful shutdown."""

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from typing import Any, Final

import orjson
import structlog

from push_gateway.adapters.kafka import FakeLogBounds, History, HistoryBusy, HistoryGone, LogBounds
from push_gateway.adapters.presence import PresenceBus
from push_gateway.adapters.snapshots import (
    CoalescingSnapshots,
    SnapshotNotFound,
    SnapshotUnavailable,
    TakenSnapshot,
)
from push_gateway.adapters.tickets import TicketRedeemer, TicketServiceUnavailable
from push_gateway.config import Settings
from push_gateway.domain.frames import (
    HEARTBEAT,
    event_body,
    json_frame,
    retry_frame,
    with_id,
)
from push_gateway.domain.hub import (
    CONTROL_KEY_BYTES,
    ChannelHub,
    Record,
    Writer,
    frame_body,
    record_headers,
)
from push_gateway.domain.limits import ClientAddresses, StreamCounts, TokenBuckets, retry_after
from push_gateway.domain.merge import newer_than_snapshot
from push_gateway.domain.positions import PartitionKey, format_position
from push_gateway.domain.requests import (
    Problem,
    StreamRequest,
    authorize,
    parse_stream_request,
    unauthorized,
)
from push_gateway.domain.ws_protocol import sse_to_ws
from push_gateway.stream import NO_PENDING, NO_RESYNC, SseConnection, StreamState
from push_gateway.timing import sleep_to_grid
from slotstream_contracts.channels import Channel, ChannelKind

log = structlog.get_logger(__name__)

LAG_POLL_SECONDS: Final = 0.01
#: presence writes between yields to the event loop (~2 ms of writes)
WRITES_PER_STEP: Final = 256
#: heartbeats go out in this many steps per period (10,000 streams: ~170 writes a step)
HEARTBEAT_STEPS: Final = 60
#: distinct channels whose one shared ``Channel`` object is remembered
MAX_SHARED_CHANNELS: Final = 100_000
#: snapshot frames (channel, position) kept with a shared snapshot for reuse
MAX_FRAMES_PER_SNAPSHOT: Final = 8


#: all that a stream waiting for a shared snapshot fetch still needs of its request: only
#: streams without a ticket or resume point wait (see ``Gateway._fetch_under_way``), and
#: the rest of the request was applied when the stream was accepted
PLAIN_REQUEST: Final = StreamRequest(channels=(), resume_from=None)


@dataclass
class GatewayStats:
    accepted: int = 0
    rejected: int = 0
    slow_disconnects: int = 0
    snapshot_requests: int = 0
    snapshot_failures: int = 0
    resumes_ring: int = 0
    resumes_kafka: int = 0
    resumes_gone: int = 0
    resumes_refused: int = 0
    resumes_busy: int = 0
    limited: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("ip-rate", "ip-streams", "user-streams"), 0)
    )
    token_expiries: int = 0


class Gateway:
    def __init__(
        self,
        settings: Settings,
        hub: ChannelHub,
        snapshots: CoalescingSnapshots,
        history: History,
        presence: PresenceBus,
        bounds: LogBounds | None = None,
        *,
        tickets: TicketRedeemer,
    ) -> None:
        self.settings = settings
        self.tickets = tickets
        self.hub = hub
        self.snapshots = snapshots
        self.history = history
        self.presence = presence
        #: where each partition's log starts and ends (the ingest's view; tests: the hub's)
        self.bounds = bounds or FakeLogBounds(hub)
        self.client_ip = ClientAddresses(settings.trusted_proxies)
        self.streams_per_ip = StreamCounts(settings.max_streams_per_ip)
        self.streams_per_user = StreamCounts(settings.max_streams_per_user)
        self.connect_rate = TokenBuckets(
            settings.connect_rate_per_ip, settings.connect_burst_per_ip
        )
        self.connections: set[SseConnection] = set()
        self.accepting = True
        self.stats = GatewayStats()
        self._tasks: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._last_presence: dict[str, int] = {}
        #: per channel, the writers that were sent its last presence count
        self._told: dict[str, set[Writer]] = {}
        self._allowed_origins = frozenset(settings.cors_origins)
        #: allowed origin (None: no CORS headers) → the bytes that open its streams
        self._stream_heads: dict[str | None, bytes] = {}
        # one object each, shared by every stream (not a channel or a bound method per stream)
        self._channels: dict[Channel, Channel] = {}
        self._channel_sets: dict[tuple[Channel, ...], tuple[Channel, ...]] = {}
        self._on_close = self._closed
        self._on_resync = self._resync
        #: a snapshot fetch under way → the new streams waiting for it (see _serve_soon)
        self._waiting: dict[asyncio.Future[TakenSnapshot], list[SseConnection]] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def start_background(self) -> None:
        self._background = [
            asyncio.create_task(self._heartbeats(), name="sse-heartbeats"),
            asyncio.create_task(self._presence_loop(), name="presence"),
        ]

    async def shutdown(self) -> None:
        """Stop accepting; tell every client to come back soon (to another instance)."""
        self.accepting = False
        for task in self._background:
            task.cancel()
        for connection in list(self.connections):
            jitter = random.randint(0, self.settings.shutdown_retry_jitter_ms)
            connection.close("shutdown", retry_ms=self.settings.shutdown_retry_ms + jitter)
        for task in list(self._tasks) + self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        log.info("gateway drained", connections=len(self.connections))

    # -- accepting a stream -----------------------------------------------------------------
    def open_stream(
        self,
        transport: asyncio.Transport,
        path: str,
        query_string: bytes,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> SseConnection | None:
        """Validate a stream request; answer problems right away, else start catching up.

        Returns the connection that now owns the transport (the caller installs it as the
        transport's protocol), or None when the request was answered and closed.
        """
        peer = transport.get_extra_info("peername")
        ip = self.client_ip(peer, headers)
        user: str | None = None
        try:
            if not self.accepting:
                raise Problem(
                    503, "Service Unavailable", "gateway is shutting down", (("retry-after", "1"),)
                )
            if not self.hub.assigned:
                raise Problem(
                    503, "Service Unavailable", "gateway is starting", (("retry-after", "1"),)
                )
            self._admit_ip(ip)
            if len(self.connections) >= self.settings.max_connections:
                raise Problem(
                    503,
                    "Service Unavailable",
                    f"this gateway holds its maximum of {self.settings.max_connections} streams",
                    (("retry-after", "5"),),
                )
            request = parse_stream_request(
                path,
                query_string,
                headers,
                self.settings.jwt,
                self.settings.max_channels_per_connection,
            )
            user = self._admit_user(request)
        except Problem as problem:
            origin = next((v.decode("latin-1") for k, v in headers if k == b"origin"), None)
            self.reject(transport, problem, path, origin)
            return None
        channels = self._channel_set(request.channels)
        connection = SseConnection(
            transport,
            channels,
            {c: self.hub.partition_key(c) for c in channels},
            on_close=self._on_close,
            on_resync=self._on_resync,
            max_pending_bytes=self.settings.max_pending_bytes,
            origin=request.origin,
        )
        connection.client_ip = ip
        connection.user = user
        self.streams_per_ip.add(ip)
        if user is not None:
            self.streams_per_user.add(user)
        self.connections.add(connection)
        self.stats.accepted += 1
        self._schedule_expiry(connection, request)
        self._serve_soon(connection, request)
        return connection

    def _serve_soon(
        self, connection: SseConnection, request: StreamRequest, start_fetch: bool = True
    ) -> None:
        """Serve a new stream at once when nothing needs waiting for; when all it lacks is a
        snapshot another stream's fetch is already bringing, wait for that fetch with a
        done-callback — no task, no coroutine frames: in a connect storm hundreds of streams
        per channel wait at once, and their tasks' frames (several kB each) set the process's
        peak memory, which it keeps; otherwise a task (:meth:`_serve`)."""
        if connection.state is StreamState.CLOSED or self._serve_at_once(connection, request):
            return
        under_way = self._fetch_under_way(connection, request, start_fetch)
        if under_way is None:
            self._spawn(self._serve(connection, request))
            return
        # one callback per fetch and a list of the streams waiting for it, not a closure and
        # a callback entry per stream: those were ~0.5 kB each, freed after the fetch but
        # leaving the heap fragmented where the storm's long-lived streams were allocated
        waiting = self._waiting.get(under_way)
        if waiting is None:
            waiting = self._waiting[under_way] = []
            under_way.add_done_callback(self._serve_waiting)
        waiting.append(connection)

    def _serve_waiting(self, fetched: "asyncio.Future[TakenSnapshot]") -> None:
        # no new fetch from here: after a failed one, _serve fetches (with retries) and
        # answers the failure, as for any stream
        for connection in self._waiting.pop(fetched, ()):
            self._serve_soon(connection, PLAIN_REQUEST, start_fetch=False)

    def _fetch_under_way(
        self, connection: SseConnection, request: StreamRequest, start: bool
    ) -> asyncio.Future[TakenSnapshot] | None:
        """The snapshot fetch a stream that :meth:`_serve_at_once` could not serve may wait
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

    def _channel(self, channel: Channel) -> Channel:
        """The one ``Channel`` object streams of this channel share."""
        found = self._channels.get(channel)
        if found is None:
            if len(self._channels) >= MAX_SHARED_CHANNELS:
                self._channels.clear()
            found = self._channels[channel] = channel
        return found

    def _channel_set(self, channels: tuple[Channel, ...]) -> tuple[Channel, ...]:
        """The one tuple of shared ``Channel`` objects streams of these channels share."""
        found = self._channel_sets.get(channels)
        if found is None:
            if len(self._channel_sets) >= MAX_SHARED_CHANNELS:
                self._channel_sets.clear()
            found = tuple(self._channel(c) for c in channels)
            self._channel_sets[found] = found
        return found

    def _serve_at_once(self, connection: SseConnection, request: StreamRequest) -> bool:
        """Catch a new stream up and make it live right here, without a task, when it needs
        nothing to wait for: no ticket, no resume point, and every snapshot it needs shared
        and recent (in a connect storm all but the first stream of each channel). False
        (nothing done) otherwise: :meth:`_serve` does it in a task. Same frames either way."""
        if request.ticket is not None or request.resume_from is not None:
            return False
        hub = self.hub
        snapshots: dict[Channel, TakenSnapshot] = {}
        for channel in connection.channels:
            if channel.kind is not ChannelKind.SCHEDULE:
                continue
            taken = self.snapshots.recent(channel.owner_id)
            if taken is None:
                return False
            key = hub.partition_key(channel)
            if taken.since < hub.position(key) and hub.ring_since(key, taken.since, set()) is None:
                return False  # the ring no longer reaches back to it: _serve fetches anew
            snapshots[channel] = taken
        try:
            positions = hub.attach(connection, connection.channels)
            self.stats.snapshot_requests += len(snapshots)
            fresh = set(connection.partitions)
            self._write_catch_up(connection, positions, None, set(), set(), fresh, {}, snapshots)
            connection.state = StreamState.LIVE
            hub.go_live(connection)
        except Exception:
            log.exception("stream failed")
            connection.close("internal-error", retry_ms=self.settings.retry_ms)
        return True

    def _schedule_expiry(self, connection: SseConnection, request: StreamRequest) -> None:
        if request.token_expires_at is not None:
            # a private stream must not outlive its token: the client re-authenticates
            connection.expiry = asyncio.get_running_loop().call_later(
                max(0.0, request.token_expires_at - time.time()), self._expire, connection
            )

    async def _redeem(
        self, connection: SseConnection, request: StreamRequest
    ) -> StreamRequest | None:
        """The request with the principal of its stream ticket, redeemed at the booking-api
        (once); None when the request was answered with a problem instead."""
        assert request.ticket is not None
        try:
            redeemed = await self.tickets.redeem(request.ticket)
            if redeemed is None:
                raise unauthorized("unknown, used or expired stream ticket")
            authorize(request.channels, redeemed.principal)
            redeemed_request = dataclasses.replace(
                request,
                principal=redeemed.principal,
                token_expires_at=redeemed.token_expires_at + self.settings.jwt.leeway_seconds,
                ticket=None,
            )
            user = self._admit_user(redeemed_request)  # the per-user limit, now it is known
        except TicketServiceUnavailable as exc:
            log.warning("ticket redemption failed", error=str(exc))
            problem = Problem(
                503,
                "Service Unavailable",
                "cannot check the stream ticket now; retry",
                (("retry-after", "1"),),
            )
        except Problem as refused:
            problem = refused
        else:
            if connection.state is StreamState.CLOSED:
                return None
            connection.user = user
            if user is not None:
                self.streams_per_user.add(user)
            self._schedule_expiry(connection, redeemed_request)
            return redeemed_request
        self.reject(connection.transport, problem, "stream", connection.origin)
        connection.close(None)
        return None

    def _admit_ip(self, ip: str) -> None:
        """Per-client-IP limits: the connect rate (token bucket), then concurrent streams."""
        settings = self.settings
        wait = self.connect_rate.take(ip, time.monotonic())
        if wait:
            raise self._too_many(
                "ip-rate",
                f"more than {settings.connect_burst_per_ip} stream requests from one address "
                f"in a burst, or {settings.connect_rate_per_ip:g}/s sustained",
                wait,
            )
        if self.streams_per_ip.full(ip):
            raise self._too_many(
                "ip-streams", f"one address may hold at most {settings.max_streams_per_ip} streams"
            )

    def _admit_user(self, request: StreamRequest) -> str | None:
        """Streams with a private channel count against their user (the token's ``sub``)."""
        if request.principal is None or not any(c.is_private for c in request.channels):
            return None
        user = request.principal.user_id
        if self.streams_per_user.full(user):
            raise self._too_many(
                "user-streams",
                f"one user may hold at most {self.settings.max_streams_per_user} private streams",
            )
        return user

    def _too_many(self, limit: str, detail: str, wait: float | None = None) -> Problem:
        """A 429; without ``wait`` (a stream limit) come back after the usual ``retry:``."""
        self.stats.limited[limit] += 1
        seconds = self.settings.retry_ms / 1000 if wait is None else wait
        return Problem(429, "Too Many Requests", detail, (("retry-after", retry_after(seconds)),))

    def serve_subscription(self, connection: SseConnection, request: StreamRequest) -> None:
        """Catch up and go live as :meth:`open_stream` does, for a connection made elsewhere
        (one WebSocket subscription, see ``api/ws.py``)."""
        self._spawn(self._serve(connection, request))

    def reject(
        self, transport: asyncio.Transport, problem: Problem, path: str, origin: str | None
    ) -> None:
        self.stats.rejected += 1
        log.info("stream rejected", status=problem.status, detail=problem.detail, path=path)
        body = orjson.dumps(problem.body(path))
        head = [
            f"HTTP/1.1 {problem.status} {HTTPStatus(problem.status).phrase}",
            "content-type: application/problem+json",
            f"content-length: {len(body)}",
            "cache-control: no-store",
            "connection: close",
            *(f"{k}: {v}" for k, v in problem.headers),
            *self._cors_lines(origin),
        ]
        transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        transport.close()

    def _cors_lines(self, origin: str | None) -> list[str]:
        if origin is None or origin not in self._allowed_origins:
            return []
        return [
            f"access-control-allow-origin: {origin}",
            "access-control-allow-credentials: true",
            "vary: Origin",
        ]

    def _stream_head(self, connection: SseConnection) -> bytes:
        """The response head and ``retry:`` frame; built once per allowed origin."""
        origin = connection.origin if connection.origin in self._allowed_origins else None
        cached = self._stream_heads.get(origin)
        if cached is not None:
            return cached
        head = [
            "HTTP/1.1 200 OK",
            "content-type: text/event-stream; charset=utf-8",
            "cache-control: no-store",
            "x-accel-buffering: no",
            "connection: close",
            *self._cors_lines(origin),
        ]
        built = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + retry_frame(
            self.settings.retry_ms
        )
        self._stream_heads[origin] = built
        return built

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _expire(self, connection: SseConnection) -> None:
        connection.expiry = None
        if connection.state is StreamState.CLOSED:
            return
        self.stats.token_expiries += 1
        if not connection.headers_sent:  # still catching up: open the stream to say why
            connection.output(self._stream_head(connection))
            connection.headers_sent = True
        connection.close("token-expired")

    def _closed(self, connection: SseConnection, reason: str | None) -> None:
        if connection.expiry is not None:
            connection.expiry.cancel()
            connection.expiry = None
        self.connections.discard(connection)
        self.hub.detach(connection)
        self.streams_per_ip.remove(connection.client_ip)
        if connection.user is not None:
            self.streams_per_user.remove(connection.user)
        if reason == "slow-consumer":
            self.stats.slow_disconnects += 1
            log.info("slow client disconnected", channels=[str(c) for c in connection.channels])

    def _resync(self, connection: SseConnection) -> None:
        """A live connection got a resync control record: back to buffering, re-snapshot."""
        connection.state = StreamState.CATCHING_UP
        self.hub.to_pending(connection)
        positions = {k: self.hub.position(k) for k in connection.partitions}
        self._spawn(self._serve(connection, None, positions))

    # -- catching up ---------------------------------------------------------------------------
    async def _serve(
        self,
        connection: SseConnection,
        request: StreamRequest | None,
        resync_positions: dict[PartitionKey, int] | None = None,
    ) -> None:
        try:
            if request is not None and request.ticket is not None:
                request = await self._redeem(connection, request)
                if request is None:
                    return
            lost: set[PartitionKey] = set()
            if request is not None:
                resume = request.resume_from
                if resume is not None:
                    resume, lost = self._checked_resume(connection, resume)
                    honoured = resume
                    resume = await self._wait_for_position(connection, honoured)
                    if resume is None:
                        lost |= set(honoured)
                if connection.state is StreamState.CLOSED:
                    return
                positions = self.hub.attach(connection, connection.channels)
                announce: set[PartitionKey] = set()
            else:
                assert resync_positions is not None
                announce = set(connection.resync_requested)
                positions = resync_positions
                resume = {k: v for k, v in positions.items() if k not in announce}
            while True:
                connection.resync_requested = NO_RESYNC
                await self._catch_up(connection, positions, resume, announce, lost)
                lost = set()
                if connection.state is StreamState.CLOSED:
                    return
                if not connection.resync_requested:
                    connection.state = StreamState.LIVE
                    self.hub.go_live(connection)
                    return
                announce = set(connection.resync_requested)
                positions = {k: self.hub.position(k) for k in connection.partitions}
                resume = {k: v for k, v in positions.items() if k not in announce}
        except SnapshotNotFound as exc:
            if connection.headers_sent:
                connection.close("instructor-unknown")
            else:
                self.reject(
                    connection.transport,
                    Problem(404, "Not Found", f"no instructor {exc.args[0]!r}"),
                    "stream",
                    connection.origin,
                )
                connection.close(None)
        except (SnapshotUnavailable, TimeoutError) as exc:
            self.stats.snapshot_failures += 1
            log.warning("catch-up failed", error=repr(exc))
            if not connection.headers_sent:
                connection.output(self._stream_head(connection))
                connection.headers_sent = True
            connection.close("snapshot-unavailable", retry_ms=self.settings.retry_ms)
        except Exception:
            log.exception("stream failed")
            connection.close("internal-error", retry_ms=self.settings.retry_ms)

    def _checked_resume(
        self, connection: SseConnection, resume: dict[PartitionKey, int]
    ) -> tuple[dict[PartitionKey, int], set[PartitionKey]]:
        """Split a client's resume point into the components that can be honoured and the
        partitions whose history it cannot have: ahead of the log (not an id any gateway
        wrote), before its start, or more than ``max_resume_lag`` records behind its end.
        Those start fresh — a snapshot, or a ``resync`` frame for notifications — at once:
        an anonymous client must not be able to make the gateway read (or wait for) history
        of its choosing."""
        honoured: dict[PartitionKey, int] = {}
        lost: set[PartitionKey] = set()
        for key in connection.partitions:
            if key not in resume:
                continue
            after = resume[key]
            start, end = self.bounds.bounds(self.hub.topic_of(key), key[1])
            if after >= end or after < start - 1 or end - 1 - after > self.settings.max_resume_lag:
                lost.add(key)
            else:
                honoured[key] = after
        if lost:
            self.stats.resumes_refused += len(lost)
            log.info("resume point refused", partitions=sorted(f"{k[0]}{k[1]}" for k in lost))
        return honoured, lost

    async def _wait_for_position(
        self, connection: SseConnection, resume: dict[PartitionKey, int]
    ) -> dict[PartitionKey, int] | None:
        """A client resuming from a gateway that is ahead of this one waits until this one
        has read that far (else it would receive records it already has)."""
        deadline = time.monotonic() + self.settings.catch_up_timeout_seconds
        known = {k: v for k, v in resume.items() if k in connection.partitions}
        while any(self.hub.position(k) < v for k, v in known.items()):
            if time.monotonic() > deadline or connection.state is StreamState.CLOSED:
                return None  # give up on resuming: a fresh snapshot is always correct
            await asyncio.sleep(LAG_POLL_SECONDS)
        return known

    async def _catch_up(
        self,
        connection: SseConnection,
        positions: dict[PartitionKey, int],
        resume: dict[PartitionKey, int] | None,
        announce: set[PartitionKey],
        lost: set[PartitionKey],
    ) -> None:
        """Snapshot and/or replay, then the records buffered meanwhile; all written at once.

        ``lost``: partitions whose resume point could not be honoured; their schedule
        channels get a snapshot, their notification channels a ``resync`` frame with
        reason ``history-unavailable`` (the client reloads its notifications)."""
        hub = self.hub
        fresh: set[PartitionKey] = set(announce) | lost
        replay: dict[PartitionKey, list[Record]] = {}
        reads: dict[PartitionKey, tuple[int, int]] = {}
        for key in connection.partitions:
            if resume is None or key not in resume or key in fresh:
                fresh.add(key)
                continue
            keys = connection.keys_of_partition[key]
            after = resume[key]
            ring = hub.ring_since(key, after, keys)
            if ring is None:
                floor = hub.ring_floor(key)
                reads[key] = (after + 1, floor)
                ring = hub.ring_since(key, floor - 1, keys) or []
            else:
                self.stats.resumes_ring += 1
            replay[key] = ring
        for key, (first, stop) in reads.items():
            # control records too, as ring replays have them: a resync in the missed range
            # means the replay cannot be trusted
            wanted = {CONTROL_KEY_BYTES, *connection.keys_of_partition[key]}
            try:
                older = await self.history.read(hub.topic_of(key), key[1], first, stop, wanted)
                replay[key] = older + replay[key]
                self.stats.resumes_kafka += 1
            except HistoryGone as exc:
                log.info("resume point not read from Kafka", reason=str(exc))
                if isinstance(exc, HistoryBusy):
                    self.stats.resumes_busy += 1
                else:
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
        snapshots = await self._snapshots(snapshot_channels, positions, announce)
        if connection.state is StreamState.CLOSED:
            return
        self._write_catch_up(
            connection, positions, resume, announce, lost, fresh, replay, snapshots
        )

    def _write_catch_up(
        self,
        connection: SseConnection,
        positions: dict[PartitionKey, int],
        resume: dict[PartitionKey, int] | None,
        announce: set[PartitionKey],
        lost: set[PartitionKey],
        fresh: set[PartitionKey],
        replay: dict[PartitionKey, list[Record]],
        snapshots: dict[Channel, TakenSnapshot],
    ) -> None:
        """Write what :meth:`_catch_up` gathered, and the records buffered meanwhile, in one
        ``transport.write``."""
        hub = self.hub
        out: list[bytes] = []
        if not connection.headers_sent:
            out.append(self._stream_head(connection))
        vector = {k: (resume[k] if resume and k in resume else positions[k]) for k in positions}
        seen: set[bytes] = set()

        def emit(key: PartitionKey, record: Record) -> None:
            vector[key] = record.offset
            body = frame_body(record, key[0])
            _, ce_id = record_headers(record)
            if body is None or (ce_id is not None and ce_id in seen):
                return
            if ce_id is not None:
                seen.add(ce_id)
            out.append(with_id(format_position(vector), body))

        for key, records in replay.items():
            for record in records:
                emit(key, record)
            vector[key] = positions[key]
        for key in fresh:
            vector[key] = positions[key]
        for channel in connection.channels:
            key = hub.partition_key(channel)
            if key in announce:
                payload: dict[str, object] = {"channel": channel.name, "reason": "resync"}
                out.append(json_frame("resync", payload, format_position(vector)))
            elif key in lost and channel.kind is ChannelKind.NOTIFICATIONS:
                payload = {"channel": channel.name, "reason": "history-unavailable"}
                out.append(json_frame("resync", payload, format_position(vector)))
        versions: dict[Channel, dict[str, int]] = {}
        by_partition: dict[PartitionKey, list[tuple[Channel, TakenSnapshot]]] = {}
        for channel, taken in snapshots.items():
            by_partition.setdefault(hub.partition_key(channel), []).append((channel, taken))
        for key, taken_here in by_partition.items():
            # everything up to the oldest snapshot's start is covered; the records between
            # a (shared, older) snapshot and this connection's start come from the ring
            vector[key] = min(positions[key], *(t.since for _, t in taken_here))
            gap: list[tuple[int, Channel, Record]] = []
            for channel, taken in taken_here:
                versions[channel] = taken.versions
                out.append(snapshot_frame(channel, taken, format_position(vector)))
                if taken.since < positions[key]:
                    records = hub.ring_since(key, taken.since, {channel.record_key}) or []
                    gap += [
                        (r.offset, channel, r)
                        for r in records
                        if r.offset <= positions[key] and r.key != CONTROL_KEY_BYTES
                    ]
            for _, channel, record in sorted(gap, key=lambda item: item[0]):
                if not self._newer(record, versions[channel]):
                    vector[key] = record.offset
                    continue
                emit(key, record)
            vector[key] = positions[key]
        for key, record in connection.pending:
            owner = connection.channel_of_key.get((key[0], record.key or b""))
            if owner is not None and owner in versions:
                if not self._newer(record, versions[owner]):
                    vector[key] = record.offset
                    continue
            emit(key, record)
        connection.pending = NO_PENDING
        connection.headers_sent = True
        connection.output(b"".join(out))

    @staticmethod
    def _newer(record: Record, versions: dict[str, int]) -> bool:
        if record.value is None:
            return False
        ce_type, _ = record_headers(record)
        return newer_than_snapshot((ce_type or b"").split(b".", 1)[0], record.value, versions)

    async def _snapshots(
        self,
        channels: list[Channel],
        positions: dict[PartitionKey, int],
        resynced: set[PartitionKey],
    ) -> dict[Channel, TakenSnapshot]:
        if not channels:
            return {}
        self.stats.snapshot_requests += len(channels)
        hub = self.hub

        async def one(channel: Channel) -> TakenSnapshot:
            key = hub.partition_key(channel)
            # after a resync only a snapshot taken after it will do
            taken = await self.snapshots.fetch(
                channel.owner_id,
                partial(hub.position, key),
                fresh_after=positions[key] + 1 if key in resynced else None,
            )
            if taken.since < positions[key] and hub.ring_since(key, taken.since, set()) is None:
                # the ring no longer reaches back to that snapshot: take a newer one
                taken = await self.snapshots.fetch(
                    channel.owner_id, partial(hub.position, key), fresh_after=positions[key]
                )
            return taken

        async with asyncio.timeout(self.settings.snapshot_timeout_seconds * 3):
            # the first alone: a request naming unknown instructors fails on its first
            # 404 (then cached) instead of sending one booking-api request per channel
            found = [await one(channels[0])]
            found += await asyncio.gather(*(one(c) for c in channels[1:]))
        return dict(zip(channels, found, strict=True))

    # -- periodic work --------------------------------------------------------------------------
    async def _heartbeats(self) -> None:
        """A ``heartbeat`` event (one shared frame, see ``HEARTBEAT``) each
        ``heartbeat_seconds`` to every stream that needs one (:meth:`send_heartbeats`),
        spread over the period in ``HEARTBEAT_STEPS`` small steps: 10,000 writes at once held
        the loop ~100 ms, and everything fetched meanwhile waited. A new stream gets its
        first within two periods."""
        pause = self.settings.heartbeat_seconds / HEARTBEAT_STEPS
        while True:
            connections = list(self.connections)
            share = -(-len(connections) // HEARTBEAT_STEPS)  # ceiling
            for step in range(HEARTBEAT_STEPS):
                await sleep_to_grid(pause)  # with the other periodic timers: one wake-up
                self.send_heartbeats(
                    connections[step * share : (step + 1) * share], time.monotonic()
                )

    def send_heartbeats(self, connections: Sequence[SseConnection], now: float) -> int:
        """Write the heartbeat to those of ``connections`` that were sent no event in the
        half period before ``now`` (``time.monotonic()``); returns how many got one.

        A live stream whose channels had an event framed since then is skipped: that event
        already told its client's watchdog (any frame resets it) and the proxies in between
        (any byte) that the stream is alive, and a heartbeat costs a system call, as much
        as a delivery. So a busy stream gets none, and no stream is silent for more than
        1.5 periods."""
        recent = now - self.settings.heartbeat_seconds / 2
        framed_since = self.hub.framed_since
        sent = 0
        for connection in connections:
            state = connection.state
            if not connection.headers_sent or state is StreamState.CLOSED:
                continue
            if state is StreamState.LIVE and framed_since(connection, recent):
                continue
            connection.output(HEARTBEAT)
            sent += 1
        return sent

    async def _presence_loop(self) -> None:
        while True:
            try:
                local = {
                    c.name: n
                    for c, n in self.hub.subscriber_counts().items()
                    if c.kind is ChannelKind.SCHEDULE and n > 0
                }
                await self.presence.publish(local)
                if self.settings.presence_events:
                    await self._send_presence()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("presence update failed", error=repr(exc))
            await sleep_to_grid(self.settings.presence_interval_seconds)

    async def _send_presence(self) -> None:
        totals = self.presence.cluster_counts()
        written = 0
        for channel in self.hub.subscriber_counts():
            if channel.kind is not ChannelKind.SCHEDULE:
                continue
            count = totals.get(channel.name, 0)
            writers = self.hub.live_subscribers(channel)
            ws_writers = self.hub.live_ws_subscribers(channel)
            everyone = {*writers, *ws_writers}
            if self._last_presence.get(channel.name) == count:
                # Unchanged: only subscribers that joined since the last send (a reload or
                # a reconnect that took another's place) still need to hear it.
                told = self._told.get(channel.name, set())
                writers = [w for w in writers if w not in told]
                ws_writers = [w for w in ws_writers if w not in told]
                if not writers and not ws_writers:
                    continue
            self._last_presence[channel.name] = count
            self._told[channel.name] = everyone
            frame = json_frame("presence", {"channel": channel.name, "count": count})
            for write in writers:
                write(frame)
            if ws_writers:
                ws_frame = sse_to_ws(frame)
                for write in ws_writers:
                    write(ws_frame)
            written += len(writers) + len(ws_writers)
            if written >= WRITES_PER_STEP:
                written = 0
                await asyncio.sleep(0)  # let live events through between channels
        live = {c.name for c in self.hub.subscriber_counts()}
        for name in list(self._last_presence):
            if name not in live:
                del self._last_presence[name]
                self._told.pop(name, None)

    def presence_of(self, channel: Channel) -> int:
        return self.presence.cluster_counts().get(channel.name, 0)


def snapshot_frame(channel: Channel, taken: TakenSnapshot, frame_id: bytes) -> bytes:
    """``{"channel": …, "schedule": …}`` around the snapshot JSON encoded once per fetch;
    the whole frame is kept with the snapshot, so the streams that share it at the same
    position (a connect storm's) share its bytes too instead of copying and checking them
    again each."""
    frames = taken.frames
    found = frames.get((channel.name, frame_id))
    if found is None:
        data = b'{"channel":' + orjson.dumps(channel.name) + b',"schedule":' + taken.encoded
        found = with_id(frame_id, event_body(b"snapshot", data + b"}"))
        if len(frames) >= MAX_FRAMES_PER_SNAPSHOT:
            frames.clear()
        frames[(channel.name, frame_id)] = found
    return found
