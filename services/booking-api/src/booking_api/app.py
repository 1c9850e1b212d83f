"""Composition root: build settings, storage, service and HTTP app; wire, nothing more."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from pymongo.errors import PyMongoError
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from booking_api.adapters.memory import MemoryStorage
from booking_api.adapters.tickets import ticket_store_for
from booking_api.api import internal, ops, routes, tickets
from booking_api.api.deps import AppParts, Runtime
from booking_api.api.metrics import Metrics
from booking_api.api.middleware import RequestContextMiddleware
from booking_api.api.problems import domain_problem, install_problem_handlers
from booking_api.auth import TokenVerifier
from booking_api.config import Settings
from booking_api.domain.errors import StorageUnavailable
from booking_api.ports import Storage
from booking_api.repair import SlotRepair
from booking_api.service import BookingService, Clock, utc_now
from booking_api.startup import MongoStartup, mongo_hosts

log = structlog.get_logger("booking_api.app")


def _open_storage(settings: Settings) -> Storage:
    if settings.storage == "memory":
        return _memory_storage(settings)
    from booking_api.adapters.mongo import MongoStorage

    return MongoStorage(
        settings.mongo_url.get_secret_value(),
        settings.mongo_db,
        settings.mongo_timeout_ms,
        notification_retention=settings.notification_retention,
    )


def _memory_storage(settings: Settings) -> MemoryStorage:
    return MemoryStorage(settings.mongo_db, notification_retention=settings.notification_retention)


def create_app(
    settings: Settings | None = None,
    storage: Storage | None = None,
    clock: Clock = utc_now,
    open_storage: Callable[[Settings], Storage] = _open_storage,
) -> FastAPI:
    """The booking-api. ``storage`` replaces the one the settings describe, ready at once
    (tests); ``open_storage`` makes the one a start opens (tests: a MongoDB that answers
    late)."""
    settings = settings or Settings()
    startup = MongoStartup(
        mongo_hosts(settings.mongo_url.get_secret_value()),
        settings.mongo_start_timeout_seconds,
        settings.mongo_timeout_ms / 1000,
    )
    parts = AppParts(
        settings=settings,
        tokens=TokenVerifier(settings.jwt),
        metrics=Metrics(),
        startup=startup,
    )

    def wire(store: Storage) -> Runtime:
        memory = store if isinstance(store, MemoryStorage) else None
        service = BookingService(store, clock)
        return Runtime(settings, store, service, memory, ticket_store_for(store))

    # The memory store needs no I/O to open, so it is ready without a lifespan (ASGI tests).
    given = storage or (_memory_storage(settings) if settings.storage == "memory" else None)
    if given is not None:
        parts.runtime = wire(given)

    def repair(runtime: Runtime) -> SlotRepair:
        metrics = parts.metrics
        return SlotRepair(
            runtime.service,
            grace=settings.repair_grace,
            interval_seconds=settings.repair_interval_seconds,
            batch=settings.repair_batch,
            on_repaired=lambda done: metrics.slots_repaired.labels(why=done.why.value).inc(),
            on_failed=metrics.slot_repair_failures.inc,
        )

    async def open_when_reachable(runtime: Runtime) -> None:
        """Open the store, then run the repair on it until cancelled (shutdown)."""
        if await startup.run([runtime.storage.start, runtime.tickets.start]):
            parts.runtime = runtime
            log.info("booking_api.started", storage=settings.storage)
            await repair(runtime).run()

    async def stop(task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if parts.runtime is not None:  # in memory, or given: nothing to wait for
            await parts.runtime.storage.start()
            await parts.runtime.tickets.start()
            log.info("booking_api.started", storage=settings.storage)
            repairing = asyncio.create_task(repair(parts.runtime).run(), name="slot-repair")
            try:
                yield
            finally:
                await stop(repairing)
            return
        # MongoDB may not answer yet: the server serves (``/healthz`` 200, ``/readyz`` and
        # the API 503) while the store is started in the background; ``parts.runtime`` is
        # set, and the API ready, once its indexes exist; the repair starts then.
        runtime = wire(open_storage(settings))
        opening = asyncio.create_task(open_when_reachable(runtime), name="storage")
        try:
            yield
        finally:
            await stop(opening)
            parts.runtime = None
            await runtime.storage.close()

    app = FastAPI(
        title="Slotstream booking API",
        version="0.1.0",
        summary="Instructors, slots, bookings and notifications",
        docs_url="/api/docs" if settings.docs_enabled else None,
        redoc_url=None,
        openapi_url="/api/openapi.json" if settings.docs_enabled else None,
        lifespan=lifespan,
        # Metrics are Prometheus (/metrics); FastAPI's native OpenTelemetry stays off, so
        # it does not even check for configured providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.parts = parts
    install_problem_handlers(app)

    async def on_internal_refused(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, internal.InternalRefused)
        return exc.response

    app.add_exception_handler(internal.InternalRefused, on_internal_refused)

    async def on_storage_error(request: Request, exc: Exception) -> Response:
        # A database that does not answer is the service's trouble, not the caller's: 503
        # (retry later), never a 500 and never a partial write (see service.py).
        log.warning("storage.failed", error=type(exc).__name__, path=request.url.path)
        unavailable = StorageUnavailable(
            f"storage unavailable ({type(exc).__name__}); retry shortly"
        )
        return domain_problem(unavailable, request.url.path)

    app.add_exception_handler(PyMongoError, on_storage_error)
    app.include_router(routes.router)
    app.include_router(ops.router)
    app.include_router(tickets.router)  # both storage modes: the gateways redeem tickets
    if settings.storage == "memory" or isinstance(storage, MemoryStorage):
        app.include_router(internal.router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "If-Match",
                "X-Request-ID",
            ],
            expose_headers=["X-Request-ID", "ETag", "Retry-After", "Idempotent-Replayed"],
        )
    app.add_middleware(
        RequestContextMiddleware, metrics=parts.metrics, max_body_bytes=settings.max_body_bytes
    )
    return app
