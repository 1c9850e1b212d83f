"""Composition root: settings → adapters → publisher, run inside the HTTP app's lifespan."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from fastapi import FastAPI
from pymongo import AsyncMongoClient

from change_publisher.adapters.feed import FeedChangeSource
from change_publisher.adapters.file import FileCheckpointStore
from change_publisher.adapters.kafka import KafkaEventProducer
from change_publisher.adapters.memory import MemoryCheckpointStore, MemoryLeaseStore
from change_publisher.adapters.mongo import (
    Document,
    MongoChangeSource,
    MongoCheckpointStore,
    MongoLeaseStore,
)
from change_publisher.api import ops
from change_publisher.config import Settings
from change_publisher.domain.records import Router
from change_publisher.ports import ChangeSource, CheckpointStore, LeaseStore
from change_publisher.publisher import KafkaUnreachable, Publisher, PublisherOptions
from slotstream_contracts.settings import KAFKA_UNREACHABLE_EXIT_CODE

log = structlog.get_logger("change_publisher")


@dataclass
class Components:
    publisher: Publisher
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def publisher_options(settings: Settings) -> PublisherOptions:
    return PublisherOptions(
        stream_name=settings.stream_name,
        instance_id=settings.instance_id,
        collections=tuple(settings.collections),
        start_mode=settings.start_mode,
        history_lost_policy=settings.history_lost_policy,
        max_in_flight=settings.max_in_flight,
        checkpoint_interval=settings.checkpoint_interval,
        lease_ttl=settings.lease_ttl,
        backoff_initial=settings.backoff_initial,
        backoff_max=settings.backoff_max,
        max_record_bytes=settings.max_record_bytes,
        ack_stall_seconds=settings.ack_stall_seconds,
        stop_drain_seconds=settings.stop_drain_seconds,
        kafka_start_timeout=settings.kafka.start_timeout_seconds,
        bootstrap_servers=settings.kafka.bootstrap_servers,
    )


async def build_components(settings: Settings) -> Components:
    """The real adapters the settings ask for."""
    closers: list[Callable[[], Awaitable[None]]] = []
    kinds = (
        settings.source,
        settings.effective_checkpoint_store(),
        settings.effective_lease_store(),
    )
    client: AsyncMongoClient[Document] | None = None
    if "mongo" in kinds:
        # DATETIME_AUTO: a date outside years 1-9999 decodes as a DatetimeMS (the document
        # is then dead-lettered as invalid) instead of failing the decoding of its batch.
        client = AsyncMongoClient(
            settings.mongo_url, tz_aware=True, datetime_conversion="DATETIME_AUTO"
        )
        closers.append(client.close)
    source: ChangeSource
    if settings.source == "mongo":
        assert client is not None
        source = MongoChangeSource(
            client,
            settings.mongo_db,
            settings.collections,
            pre_images=settings.pre_images,
            limit=settings.read_batch,
        )
    else:
        token = settings.feed_token.get_secret_value() if settings.feed_token else None
        source = FeedChangeSource(
            settings.feed_url,
            token,
            limit=settings.read_batch,
            wait=settings.feed_wait,
            collections=settings.collections,
        )
    closers.insert(0, source.close)
    checkpoints: CheckpointStore
    stored_epoch: int | None = None
    kind = settings.effective_checkpoint_store()
    if kind == "mongo":
        assert client is not None
        checkpoints = MongoCheckpointStore(client[settings.mongo_db])
    elif kind == "file":
        assert settings.checkpoint_file is not None
        checkpoints = FileCheckpointStore(settings.checkpoint_file)
        stored_epoch = checkpoints.stored_epoch(settings.stream_name)
    else:
        checkpoints = MemoryCheckpointStore()
    leases: LeaseStore
    if settings.effective_lease_store() == "mongo":
        assert client is not None
        leases = MongoLeaseStore(client[settings.mongo_db])
    else:
        # A restarted process must lead with a newer epoch than the one its file
        # checkpoint was written with, or the file would fence it out.
        leases = MemoryLeaseStore(first_epoch=(stored_epoch or 0) + 1)
    producer = KafkaEventProducer(
        settings.kafka,
        enable_idempotence=settings.enable_idempotence,
        compression=settings.compression,
        max_batch_size=settings.max_batch_size,
    )
    publisher = Publisher(
        publisher_options(settings),
        source=source,
        checkpoints=checkpoints,
        leases=leases,
        producer=producer,
        router=Router(settings.effective_topic_map(), settings.topics.deadletter),
    )
    return Components(publisher, closers)


Builder = Callable[[Settings], Awaitable[Components]]


def create_app(
    settings: Settings | None = None,
    *,
    build: Builder = build_components,
    on_fatal: Callable[[], None] | None = None,
) -> FastAPI:
    """The ops HTTP app; its lifespan runs the publisher. ``on_fatal`` is called when the
    publisher stops on its own: the process exits 1 (history lost under policy ``fail``) or
    69 (Kafka not reachable within ``PUBLISHER_KAFKA__START_TIMEOUT_SECONDS``)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        current = settings or Settings()
        components = await build(current)
        publisher = components.publisher
        app.state.publisher = publisher
        app.state.exit_code = 0

        def finished(task: "asyncio.Task[None]") -> None:
            if task.cancelled() or task.exception() is None:
                return
            error = task.exception()
            if isinstance(error, KafkaUnreachable):  # its one line is said (``startup.py``)
                app.state.exit_code = KAFKA_UNREACHABLE_EXIT_CODE
            else:
                log.error("publisher failed", error=repr(error))
                app.state.exit_code = 1
            if on_fatal is not None:
                on_fatal()

        task = asyncio.create_task(publisher.run(), name="publisher")
        task.add_done_callback(finished)
        try:
            yield
        finally:
            publisher.stop()
            with contextlib.suppress(Exception):
                await task
            for close in components.closers:
                with contextlib.suppress(Exception):
                    await close()

    app = FastAPI(title="Slotstream change-publisher", lifespan=lifespan, docs_url=None)
    app.include_router(ops.router)
    return app
