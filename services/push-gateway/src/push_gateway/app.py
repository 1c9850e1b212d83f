"""Composition root: build settings' clients, the hub and the gateway, and wire them."""

import asyncio
import contextlib
import gc
import importlib
import resource
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final

import httpx
import structlog
import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client.registry import CollectorRegistry
from pydantic import SecretStr

from push_gateway.adapters.catch_up import CatchUp
from push_gateway.adapters.heartbeats import Heartbeats
from push_gateway.adapters.kafka import FakeLogBounds, History, KafkaHistory, KafkaIngest, LogBounds
from push_gateway.adapters.keepalive import KeepAliveClient
from push_gateway.adapters.presence import KafkaPresenceBus, PresenceBus
from push_gateway.adapters.presence_fanout import PresenceFanOut
from push_gateway.adapters.snapshots import (
    MAX_FETCHES_IN_FLIGHT,
    CoalescingSnapshots,
    HttpSnapshotSource,
    SnapshotSource,
)
from push_gateway.adapters.sockets import COMPILED as SOCKET_WRITES
from push_gateway.adapters.sockets import deliver
from push_gateway.adapters.tickets import (
    MAX_REDEMPTIONS_IN_FLIGHT,
    BoundedTickets,
    HttpTicketRedeemer,
    TicketRedeemer,
)
from push_gateway.api.protocol import close_unfinished_heads, protocol_for
from push_gateway.api.routes import router
from push_gateway.api.ws import WebSocketGateway
from push_gateway.config import Settings
from push_gateway.domain.hub import ChannelHub
from push_gateway.domain.layout import LayoutChange
from push_gateway.domain.limits import Admission
from push_gateway.domain.responses import ResponseHeads
from push_gateway.domain.stats import GatewayStats
from push_gateway.gateway import Gateway
from push_gateway.metrics import GatewayCollector
from push_gateway.startup import KafkaStartup, Start
from push_gateway.timing import TICK_SECONDS, sleep_to_grid
from push_gateway.workers import InstanceCollector, worker_index
from push_gateway.ws_metrics import WebSocketCollector
from slotstream_contracts.channels import ChannelKind
from slotstream_contracts.settings import KAFKA_UNREACHABLE_EXIT_CODE

log = structlog.get_logger(__name__)

#: (young, middle, old) collection thresholds: CPython's are (700, 10, 10)
GC_THRESHOLDS: Final = (700, 10, 1000)
#: the exit status after a partition count change (sysexits' EX_TEMPFAIL, "try again"):
#: not 0, so every supervisor (Compose, Kubernetes, ``make demo``, ``GATEWAY_WORKERS``)
#: starts the gateway again, which then reads the new layout
RESTART_EXIT_CODE: Final = 75


def create_app(
    settings: Settings,
    *,
    snapshot_source: SnapshotSource | None = None,
    history: History | None = None,
    presence: PresenceBus | None = None,
    tickets: TicketRedeemer | None = None,
) -> FastAPI:
    """The FastAPI app (non-stream routes) with the gateway on ``app.state.gateway``.

    Stream requests never reach this app: :func:`build_server` installs the protocol that
    hands them to the gateway. Tests may pass fakes for the outbound ports.
    """
    topics = settings.topics
    hub = ChannelHub(
        {ChannelKind.SCHEDULE: topics.schedule, ChannelKind.NOTIFICATIONS: topics.notifications},
        settings.ring_buffer_size,
        deliver,
    )
    http_client = httpx.AsyncClient(
        base_url=settings.booking_api_url,
        timeout=httpx.Timeout(settings.snapshot_timeout_seconds, pool=30.0),
        limits=httpx.Limits(
            max_connections=MAX_REDEMPTIONS_IN_FLIGHT,
            max_keepalive_connections=MAX_REDEMPTIONS_IN_FLIGHT,
        ),
    )
    booking_api = KeepAliveClient(
        settings.booking_api_url, settings.snapshot_timeout_seconds, MAX_FETCHES_IN_FLIGHT
    )
    kafka_presence = (
        KafkaPresenceBus(
            settings.kafka,
            topics.presence,
            settings.instance_id,
            ttl_seconds=settings.presence_interval_seconds * 3 + 5,
            interval_seconds=settings.presence_interval_seconds,
        )
        if presence is None
        else None
    )
    ingest = KafkaIngest(
        settings.kafka,
        (topics.schedule, topics.notifications),
        hub,
        backfill=settings.ring_buffer_size,
    )
    kafka_history = (
        KafkaHistory(
            settings.kafka,
            max_reads=settings.max_history_reads,
            wait_seconds=settings.history_wait_seconds,
        )
        if history is None
        else None
    )
    gateway = build_gateway(
        settings,
        hub,
        CoalescingSnapshots(
            snapshot_source or HttpSnapshotSource(booking_api),
            reuse_seconds=settings.snapshot_reuse_seconds,
            unknown_ttl_seconds=settings.unknown_instructor_ttl_seconds,
        ),
        history or kafka_history,  # type: ignore[arg-type]
        presence or kafka_presence,  # type: ignore[arg-type]
        bounds=ingest,
        tickets=tickets or HttpTicketRedeemer(http_client, _secret(settings.internal_token)),
    )
    starts: list[Start] = []
    if kafka_presence is not None:
        starts.append((kafka_presence.start, kafka_presence.close))
    starts.append((ingest.start, ingest.stop))
    startup = KafkaStartup(settings.kafka, starts)
    websockets = WebSocketGateway(gateway)
    registry = CollectorRegistry()
    registry.register(GatewayCollector(gateway, ingest))
    registry.register(InstanceCollector(settings.instance_id, worker_index()))
    registry.register(WebSocketCollector(websockets))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        raise_open_file_limit()
        log.info(
            "stream writes",
            mode="send(2) on the socket" if SOCKET_WRITES else "transport.write (not compiled)",
        )
        # Kafka may not answer yet: the server serves (``/healthz`` 200, ``/readyz`` 503)
        # while the clients are started in the background, presence's first, so that the
        # ingest, whose start assigns the hub (ready), is the last to succeed
        connecting = asyncio.create_task(startup.run(), name="kafka-startup")
        gateway.start_background()
        websockets.start_background()
        # httpx's connection layer loads its async backend (anyio, ~1 MB) on the first
        # snapshot fetch: load it now, with the start-up heap frozen below
        importlib.import_module("httpcore._backends.anyio")
        importlib.import_module("anyio._backends._asyncio")
        # Everything allocated so far (modules, models, clients) lives for the whole run:
        # keep it out of the cyclic GC's full passes, which otherwise scan it again and
        # again while thousands of connections and ring-buffer records churn.
        gc.collect()
        gc.freeze()
        # A full collection scans every live connection (~100-150 ms with 10,000 streams,
        # all of it an event-loop stall, measured as gateway_gc_pause_seconds); make them
        # rare. Young garbage is still collected as often as by default.
        gc.set_threshold(GC_THRESHOLDS[0], GC_THRESHOLDS[1], GC_THRESHOLDS[2])
        try:
            yield
        finally:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
            await websockets.shutdown()
            await gateway.shutdown()
            await ingest.stop()
            if kafka_history is not None:
                await kafka_history.close()
            if kafka_presence is not None:
                await kafka_presence.stop()
            await http_client.aclose()
            await booking_api.aclose()

    app = FastAPI(title="Slotstream push-gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gateway
    app.state.websockets = websockets
    app.state.ingest = ingest
    app.state.startup = startup
    app.state.registry = registry
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["GET"],
            allow_headers=["Authorization", "Last-Event-ID"],
        )
    app.include_router(router)
    return app


def build_gateway(
    settings: Settings,
    hub: ChannelHub,
    snapshots: CoalescingSnapshots,
    history: History,
    presence: PresenceBus,
    bounds: LogBounds | None = None,
    *,
    tickets: TicketRedeemer,
) -> Gateway:
    """The gateway and its collaborators (admission limits, catch-up, heartbeats, presence
    fan-out), sharing one set of stream counters. ``bounds``: where each partition's log
    starts and ends (the ingest's view; tests: the hub's, ``FakeLogBounds``)."""
    stats = GatewayStats()
    heads = ResponseHeads(settings.cors_origins, settings.retry_ms)
    admission = Admission(
        settings.trusted_proxies,
        max_streams_per_ip=settings.max_streams_per_ip,
        max_streams_per_user=settings.max_streams_per_user,
        connect_rate_per_ip=settings.connect_rate_per_ip,
        connect_burst_per_ip=settings.connect_burst_per_ip,
        subscribe_rate_per_connection=settings.ws_subscribe_rate,
        subscribe_burst_per_connection=settings.ws_subscribe_burst,
        subscribe_rate_per_ip=settings.ws_subscribe_rate_per_ip,
        subscribe_burst_per_ip=settings.ws_subscribe_burst_per_ip,
        retry_ms=settings.retry_ms,
        limited=stats.limited,
    )
    catch_up = CatchUp(
        settings, hub, snapshots, history, bounds or FakeLogBounds(hub), heads, stats
    )
    return Gateway(
        settings,
        hub,
        admission=admission,
        catch_up=catch_up,
        heartbeats=Heartbeats(hub, settings.heartbeat_seconds),
        presence=PresenceFanOut(
            hub,
            presence,
            interval_seconds=settings.presence_interval_seconds,
            send_events=settings.presence_events,
        ),
        heads=heads,
        stats=stats,
        tickets=BoundedTickets(tickets),
    )


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def raise_open_file_limit() -> None:
    """Every stream is an open socket: lift the soft ``RLIMIT_NOFILE`` (often 1024) to the
    hard limit, so ``GATEWAY_MAX_CONNECTIONS`` and not the descriptor table is the cap."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit", soft=soft, hard=hard, error=str(exc))
            return
    log.info("open-file limit", soft=hard, was=soft)


class _Server(uvicorn.Server):
    """uvicorn's server, its housekeeping tick on the gateway's timer grid; it also stops
    the gateway for a restart when the partition layout it reads changed, and closes
    connections that send no complete request head in time."""

    def __init__(
        self,
        config: uvicorn.Config,
        on_stopped: Callable[[], None],
        layout_changes: Callable[[], list[LayoutChange]],
        startup: KafkaStartup,
        head_timeout_seconds: float,
        max_head_bytes: int,
        stats: GatewayStats,
    ) -> None:
        super().__init__(config)
        self._on_stopped = on_stopped
        self._layout_changes = layout_changes
        self._startup = startup
        self._head_timeout_seconds = head_timeout_seconds
        self._max_head_bytes = max_head_bytes
        self._stats = stats
        #: ``stats.heads_refused`` at the last sweep (:meth:`close_unfinished_heads`)
        self._heads_refused_logged = 0
        #: a partition count changed: :meth:`run` exits with ``RESTART_EXIT_CODE``
        self.restart_requested = False

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        super().run(sockets)
        if self.restart_requested:
            raise SystemExit(RESTART_EXIT_CODE)
        if self._startup.gave_up:
            raise SystemExit(KAFKA_UNREACHABLE_EXIT_CODE)

    def check_layout(self) -> None:
        """A data topic's partition count is no longer the one read (partitions added):
        the keys that now hash to a new partition would never reach this gateway's streams,
        so it stops as on SIGTERM (every stream gets ``retry`` + ``bye``, its client resumes
        on another gateway) and :meth:`run` exits for a restart with the new layout."""
        if self.restart_requested:
            return
        changes = self._layout_changes()
        for change in changes:
            log.error(
                "partition count of a data topic changed: restarting to read the new layout",
                topic=change.topic,
                partitions_read=change.assigned,
                partitions_now=change.found,
                exit_code=RESTART_EXIT_CODE,
            )
        if changes:
            self.restart_requested = True
            self.should_exit = True

    def close_unfinished_heads(self) -> None:
        """Close the connections still without a complete first request head
        ``GATEWAY_REQUEST_HEAD_TIMEOUT_SECONDS`` after they were made (one line for all
        those of a sweep): neither protocol has a timer before the first request, and such
        connections count against no limit. Logs, too, how many heads were refused ``431``
        since the last sweep (one line, whatever their number)."""
        deadline = time.monotonic() - self._head_timeout_seconds
        closed, waiting = close_unfinished_heads(self.server_state.connections, deadline)
        self._stats.heads_waiting = waiting
        if closed:
            self._stats.head_timeouts += closed
            log.info(
                "request head timeout: connections closed",
                connections=closed,
                timeout_seconds=self._head_timeout_seconds,
            )
        # the 431s since the last sweep in one line: a client sending huge heads as fast
        # as it can must not flood the log
        refused = self._stats.heads_refused - self._heads_refused_logged
        if refused:
            self._heads_refused_logged += refused
            log.info(
                "request heads too large: answered 431",
                requests=refused,
                max_head_bytes=self._max_head_bytes,
            )

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown, then ``on_stopped`` (the Unix socket's file removed): after
        a signal uvicorn re-raises it once served, which ends the process there."""
        try:
            await super().shutdown(sockets)
        finally:
            self._on_stopped()

    async def main_loop(self) -> None:
        """uvicorn's loop (exit checks, the ``Date`` header once a second) every
        ``TICK_SECONDS`` on the grid the gateway's other periodic timers share, instead of
        its own 0.1 s timer: ten fewer wake-ups a second of an idle process, for exits
        noticed within 0.25 s instead of 0.1 s. Once a second it checks the partition
        layout (:meth:`check_layout`), whether the start-up gave up on Kafka, and closes
        connections whose request head is overdue (:meth:`close_unfinished_heads`)."""
        ticks_per_second = max(1, round(1 / TICK_SECONDS))
        counter = 0
        should_exit = await self.on_tick(0)
        while not should_exit:
            counter = (counter + 1) % ticks_per_second
            await sleep_to_grid(TICK_SECONDS)
            if counter == 0:
                self.check_layout()
                self.close_unfinished_heads()
                # Kafka stayed unreachable for GATEWAY_KAFKA__START_TIMEOUT_SECONDS (said)
                self.should_exit = self.should_exit or self._startup.gave_up
            # uvicorn refreshes the Date header when the counter is a multiple of 10
            should_exit = await self.on_tick(0 if counter == 0 else 1)


def build_server(
    settings: Settings, app: FastAPI | None = None, on_stopped: Callable[[], None] = lambda: None
) -> uvicorn.Server:
    """A uvicorn server (uvloop, httptools) whose HTTP protocol hands streams to the gateway;
    ``on_stopped`` runs once it has stopped serving."""
    app = app or create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=protocol_for(app.state.gateway, app.state.websockets, settings.max_request_head_bytes),
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
        timeout_graceful_shutdown=5,
        backlog=settings.backlog,
    )
    gateway: Gateway = app.state.gateway
    return _Server(
        config,
        on_stopped,
        app.state.ingest.layout_changes,
        app.state.startup,
        settings.request_head_timeout_seconds,
        settings.max_request_head_bytes,
        gateway.stats,
    )
