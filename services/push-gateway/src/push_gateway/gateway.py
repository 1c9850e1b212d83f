"""The gateway service: accepts SSE streams, has each one caught up (snapshot or resume,
``adapters/catch_up.py``), then hands it to the hub for live delivery; closes, expires and
drains them. Admission limits: ``domain/limits.py``; heartbeats and presence run beside
it (``adapters/heartbeats.py``, ``adapters/presence_fanout.py``); ``app.py`` wires them."""

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Sequence, Sized
from functools import partial
from typing import Final

import structlog

from push_gateway.adapters.catch_up import CatchUp
from push_gateway.adapters.heartbeats import Heartbeats
from push_gateway.adapters.presence_fanout import PresenceFanOut
from push_gateway.adapters.snapshots import SnapshotNotFound, SnapshotUnavailable, TakenSnapshot
from push_gateway.adapters.tickets import TicketRedeemer, TicketServiceUnavailable
from push_gateway.config import Settings
from push_gateway.domain.channel_sets import SharedChannels
from push_gateway.domain.frames import ByeReason
from push_gateway.domain.hub import ChannelHub
from push_gateway.domain.limits import Admission
from push_gateway.domain.positions import PartitionKey
from push_gateway.domain.requests import (
    Problem,
    StreamRequest,
    authorize,
    parse_stream_request,
    readers_of,
    unauthorized,
)
from push_gateway.domain.responses import ResponseHeads
from push_gateway.domain.stats import GatewayStats
from push_gateway.stream import NO_RESYNC, SseConnection, StreamState

log = structlog.get_logger(__name__)

#: all that a stream waiting for a shared snapshot fetch still needs of its request: only
#: streams without a ticket or resume point wait (see ``CatchUp.fetch_under_way``), and
#: the rest of the request was applied when the stream was accepted
PLAIN_REQUEST: Final = StreamRequest(channels=(), resume_from=None)


class Gateway:
    """A stream's life: admitted (or answered with a problem), caught up, live, closed;
    and the gateway's: background work started, then every stream drained."""

    def __init__(
        self,
        settings: Settings,
        hub: ChannelHub,
        *,
        admission: Admission,
        catch_up: CatchUp,
        heartbeats: Heartbeats,
        presence: PresenceFanOut,
        heads: ResponseHeads,
        stats: GatewayStats,
        tickets: TicketRedeemer,
    ) -> None:
        self.settings = settings
        self.tickets = tickets
        self.hub = hub
        self.admission = admission
        self.catch_up = catch_up
        self.heartbeats = heartbeats
        self.presence = presence
        self.heads = heads
        self.connections: set[SseConnection] = set()
        #: the open WebSockets (``api/ws.py`` puts its set here): with the SSE streams they
        #: make up the count that ``max_connections`` caps
        self.websockets: Sized = ()
        self.accepting = True
        self.stats = stats
        self._tasks: set[asyncio.Task[None]] = set()
        #: a stream → its catch-up task while one runs (cancelled when the stream closes)
        self._serving: dict[SseConnection, asyncio.Task[None]] = {}
        self._background: list[asyncio.Task[None]] = []
        # one object each, shared by every stream (not a channel or a bound method per stream)
        self._channels = SharedChannels()
        self._on_close = self._closed
        self._on_resync = self._resync
        #: a snapshot fetch under way → the new streams waiting for it (see _serve_soon)
        self._waiting: dict[asyncio.Future[TakenSnapshot], list[SseConnection]] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def start_background(self) -> None:
        self._background = [
            asyncio.create_task(self.heartbeats.run(self.connections), name="sse-heartbeats"),
            asyncio.create_task(self.presence.run(), name="presence"),
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
        admission = self.admission
        ip = admission.client_ip(peer, headers)
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
            admission.admit_ip(ip, time.monotonic())
            self.admit_stream()
            request = parse_stream_request(
                path,
                query_string,
                headers,
                self.settings.jwt,
                self.settings.max_channels_per_connection,
            )
            user = admission.admit_user(request)
        except Problem as problem:
            origin = next((v.decode("latin-1") for k, v in headers if k == b"origin"), None)
            self.reject(transport, problem, path, origin)
            return None
        channels = self._channels.shared(request.channels)
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
        connection.readers = readers_of(request.principal)
        admission.hold(ip, user)
        self.connections.add(connection)
        self.stats.accepted += 1
        self._schedule_expiry(connection, request)
        self._serve_soon(connection, request)
        return connection

    def admit_stream(self) -> None:
        """Raise the 503 once this gateway holds ``max_connections`` streams, SSE streams and
        WebSockets together."""
        limit = self.settings.max_connections
        if len(self.connections) + len(self.websockets) >= limit:
            raise Problem(
                503,
                "Service Unavailable",
                f"this gateway holds its maximum of {limit} streams",
                (("retry-after", "5"),),
            )

    def _serve_soon(
        self, connection: SseConnection, request: StreamRequest, start_fetch: bool = True
    ) -> None:
        """Serve a new stream at once when nothing needs waiting for; when all it lacks is a
        snapshot another stream's fetch is already bringing, wait for that fetch with a
        done-callback — no task, no coroutine frames: in a connect storm hundreds of streams
        per channel wait at once, and their tasks' frames (several kB each) set the process's
        peak memory, which it keeps; otherwise a task (:meth:`_serve`)."""
        catch_up = self.catch_up
        if connection.state is StreamState.CLOSED or catch_up.serve_at_once(connection, request):
            return
        under_way = catch_up.fetch_under_way(connection, request, start_fetch)
        if under_way is None:
            self._serve_in_task(connection, request)
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
            # the per-user limit, now it is known
            user = self.admission.admit_user(redeemed_request)
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
            connection.readers = readers_of(redeemed.principal)
            if user is not None:
                self.admission.hold_user(user)
            self._schedule_expiry(connection, redeemed_request)
            return redeemed_request
        self.reject(connection.transport, problem, "stream", connection.origin)
        connection.close(None)
        return None

    def serve_subscription(self, connection: SseConnection, request: StreamRequest) -> None:
        """Catch up and go live as :meth:`open_stream` does, for a connection made elsewhere
        (one WebSocket subscription, see ``api/ws.py``)."""
        self._serve_in_task(connection, request)

    def reject(
        self, transport: asyncio.Transport, problem: Problem, path: str, origin: str | None
    ) -> None:
        self.stats.rejected += 1
        log.info("stream rejected", status=problem.status, detail=problem.detail, path=path)
        transport.write(self.heads.problem(problem, path, origin))
        transport.close()

    def _stream_head(self, connection: SseConnection) -> bytes:
        return self.heads.stream_head(connection.origin)

    def _serve_in_task(
        self,
        connection: SseConnection,
        request: StreamRequest | None,
        resync_positions: dict[PartitionKey, int] | None = None,
    ) -> None:
        """:meth:`_serve` in a task of its own, which ends when the stream does (see
        :meth:`_closed`): a stream gone while its snapshot is fetched (a WebSocket's
        unsubscribe) must not keep its task until the fetch is over."""
        task = asyncio.create_task(self._serve(connection, request, resync_positions))
        self._tasks.add(task)
        self._serving[connection] = task
        task.add_done_callback(partial(self._served, connection))

    def _served(self, connection: SseConnection, task: "asyncio.Task[None]") -> None:
        """One callback for both records of a finished catch-up task (a stream that was
        resynced meanwhile has a newer task: its entry stays)."""
        self._tasks.discard(task)
        if self._serving.get(connection) is task:
            del self._serving[connection]

    def _expire(self, connection: SseConnection) -> None:
        connection.expiry = None
        if connection.state is StreamState.CLOSED:
            return
        self.stats.token_expiries += 1
        if not connection.headers_sent:  # still catching up: open the stream to say why
            connection.output(self._stream_head(connection))
            connection.headers_sent = True
        connection.close("token-expired")

    def _closed(self, connection: SseConnection, reason: ByeReason | None) -> None:
        if connection.expiry is not None:
            connection.expiry.cancel()
            connection.expiry = None
        task = self._serving.pop(connection, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()  # the catch-up of a stream that is gone (it may be closing itself)
        self.connections.discard(connection)
        self.hub.detach(connection)
        self.admission.release(connection.client_ip, connection.user)
        if reason == "slow-consumer":
            self.stats.slow_disconnects += 1
            log.info("slow client disconnected", channels=[str(c) for c in connection.channels])

    def _resync(self, connection: SseConnection) -> None:
        """A live connection got a resync control record: back to buffering, re-snapshot."""
        connection.state = StreamState.CATCHING_UP
        self.hub.to_pending(connection)
        positions = {k: self.hub.position(k) for k in connection.partitions}
        self._serve_in_task(connection, None, positions)

    # -- catching up ---------------------------------------------------------------------------
    async def _serve(
        self,
        connection: SseConnection,
        request: StreamRequest | None,
        resync_positions: dict[PartitionKey, int] | None = None,
    ) -> None:
        catch_up = self.catch_up
        try:
            if request is not None and request.ticket is not None:
                request = await self._redeem(connection, request)
                if request is None:
                    return
            lost: set[PartitionKey] = set()
            if request is not None:
                resume = request.resume_from
                if resume is not None:
                    resume, lost = await catch_up.checked_resume(connection, resume)
                    honoured = resume
                    resume = await catch_up.wait_for_position(connection, honoured)
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
            client_resume = request is not None
            while True:
                connection.resync_requested = NO_RESYNC
                await catch_up.catch_up(
                    connection, positions, resume, announce, lost, client_resume
                )
                client_resume = False  # the rounds after: a resync during the catch-up
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
