"""In-memory fakes of every port. They record what happened, for tests and the benchmark."""

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from change_publisher.domain import lease as lease_rules
from change_publisher.domain.lease import Lease
from change_publisher.domain.records import OutgoingRecord
from change_publisher.ports import (
    ChangeBatch,
    Checkpoint,
    Fenced,
    HistoryLost,
    PendingBatch,
    SnapshotPart,
    SourceUnavailable,
    StreamPosition,
    watched,
)
from slotstream_contracts.changelog import ChangeHistoryLost, InvalidResumeToken, MemoryChangeLog
from slotstream_contracts.changes import (
    ChangeEvent,
    OperationType,
    ResumeToken,
    UpdateDescription,
)


class MemoryDatabase:
    """Documents by collection plus the change log that records every write (a fake Mongo
    with pre-images and ``updateLookup``: an update event shows the document as it is when
    read)."""

    def __init__(self, db: str = "slotstream", retain: int = 200_000) -> None:
        self.log = MemoryChangeLog(db, retain=retain, lookup=self._lookup)
        self.collections: dict[str, dict[str, dict[str, Any]]] = {}

    def _lookup(self, collection: str, document_id: str) -> dict[str, Any] | None:
        return self.collections.get(collection, {}).get(document_id)

    def transaction(self) -> AbstractContextManager[None]:
        """Writes inside share one cluster time, as a transaction's changes do."""
        return self.log.transaction()

    def drop(self) -> ChangeEvent:
        """Drop every collection (and the database): returns the ``invalidate``."""
        dropped = list(self.collections)
        self.collections.clear()
        return self.log.record_drop_database(dropped)

    def drop_collection(self, collection: str) -> ChangeEvent:
        """Drop one collection (its documents vanish without a ``delete`` each)."""
        self.collections.pop(collection, None)
        return self.log.record(OperationType.DROP, collection, None)

    def rename_collection(self, collection: str, to: str) -> ChangeEvent:
        """Rename ``collection`` to ``to``, replacing ``to`` if it exists (``dropTarget``):
        one ``rename`` change, as Mongo records it."""
        self.collections[to] = self.collections.pop(collection, {})
        return self.log.record(OperationType.RENAME, collection, None, to=to)

    def insert(self, collection: str, document: dict[str, Any]) -> ChangeEvent:
        docs = self.collections.setdefault(collection, {})
        docs[document["_id"]] = document
        return self.log.record(OperationType.INSERT, collection, document["_id"], document)

    def update(self, collection: str, document_id: str, fields: dict[str, Any]) -> ChangeEvent:
        """Set ``fields`` and bump ``version``, as the API does."""
        docs = self.collections[collection]
        before = docs[document_id]
        after = {**before, **fields, "version": before.get("version", 0) + 1}
        docs[document_id] = after
        return self.log.record(
            OperationType.UPDATE,
            collection,
            document_id,
            after,
            update=UpdateDescription(updated_fields={**fields, "version": after["version"]}),
        )

    def delete(self, collection: str, document_id: str, pre_image: bool = True) -> ChangeEvent:
        before = self.collections[collection].pop(document_id)
        return self.log.record(
            OperationType.DELETE,
            collection,
            document_id,
            None,
            before=before if pre_image else None,
        )


class MemoryChangeStream:
    def __init__(
        self,
        log: MemoryChangeLog,
        position: StreamPosition,
        limit: int,
        wait: float,
        collections: frozenset[str] | None = None,
    ) -> None:
        self._log = log
        self._collections = collections
        self._limit = limit
        self._wait = wait
        self._at = position.at
        self._after: ResumeToken | None = position.after
        if position.after is None and position.at is None:
            self._after = log.latest_token
        self.start_token = self._after
        self.closed = False
        self._invalidated = False

    async def next_batch(self) -> ChangeBatch:
        if self._invalidated:
            raise SourceUnavailable("the change stream was invalidated: reopen after its token")
        try:
            if self._at is not None:
                changes = self._log.read_from_time(self._at, self._limit)
                if not changes:
                    # Every later change has a larger cluster time: continue after the
                    # newest token instead of scanning by time.
                    self._at = None
                    self._after = self._log.latest_token
                    return ChangeBatch((), self._after)
                self._at = None
            else:
                changes = await self._log.wait_after(self._after, self._limit, self._wait)
        except (ChangeHistoryLost, InvalidResumeToken) as exc:
            raise HistoryLost(str(exc)) from exc
        for index, change in enumerate(changes):
            if change.operation_type is OperationType.INVALIDATE:
                changes = changes[: index + 1]  # the cursor ends with it
                self._invalidated = True
                break
        if changes:
            self._after = changes[-1].token
        if self._collections is not None:
            changes = [c for c in changes if watched(c, self._collections)]
        return ChangeBatch(changes, self._after)

    async def aclose(self) -> None:
        self.closed = True


class MemoryChangeSource:
    """The change source over a ``MemoryDatabase`` (the fake change source of the tests)."""

    def __init__(
        self,
        database: MemoryDatabase,
        limit: int = 1000,
        wait: float = 0.5,
        collections: Iterable[str] | None = None,
    ) -> None:
        self.database = database
        self._collections = frozenset(collections) if collections is not None else None
        self._limit = limit
        self._wait = wait
        self.opened: list[StreamPosition] = []

    async def open(self, position: StreamPosition) -> MemoryChangeStream:
        self.opened.append(position)
        return MemoryChangeStream(
            self.database.log, position, self._limit, self._wait, self._collections
        )

    async def snapshot(self, collection: str) -> SnapshotPart:
        operation_time = self.database.log.cluster_time
        documents = list(self.database.collections.get(collection, {}).values())
        return SnapshotPart(operation_time, _iterate(documents))

    async def close(self) -> None:
        return None


async def _iterate(documents: Iterable[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for document in documents:
        yield document


class MemoryCheckpointStore:
    """Checkpoints in a dict, with epoch fencing; ``saves`` records every accepted write.

    ``hold()`` makes saves wait (a process about to die between send and checkpoint) until
    ``release_hold()``.
    """

    def __init__(self) -> None:
        self.checkpoints: dict[str, Checkpoint] = {}
        self.saves: list[Checkpoint] = []
        self.refused: list[Checkpoint] = []
        self._open = asyncio.Event()
        self._open.set()

    def hold(self) -> None:
        self._open.clear()

    def release_hold(self) -> None:
        self._open.set()

    async def load(self, name: str) -> Checkpoint | None:
        return self.checkpoints.get(name)

    async def save(self, name: str, checkpoint: Checkpoint) -> None:
        await self._open.wait()
        stored = self.checkpoints.get(name)
        if not lease_rules.checkpoint_allowed(stored.epoch if stored else None, checkpoint.epoch):
            self.refused.append(checkpoint)
            raise Fenced(f"checkpoint of epoch {checkpoint.epoch} refused: stored {stored}")
        self.checkpoints[name] = checkpoint
        self.saves.append(checkpoint)

    async def close(self) -> None:
        return None


class MemoryLeaseStore:
    """Leases in a dict on the monotonic clock. ``cut_off(holder)`` makes that holder's
    calls fail, like a replica that lost its connection to the database. ``first_epoch``:
    the epoch of the first grant (above what a previous process wrote with)."""

    def __init__(self, first_epoch: int = 1) -> None:
        self._first_epoch = first_epoch
        self.leases: dict[str, Lease] = {}
        self.grants: list[Lease] = []
        self._cut: set[str] = set()

    def cut_off(self, holder: str) -> None:
        self._cut.add(holder)

    def reconnect(self, holder: str) -> None:
        self._cut.discard(holder)

    def _check(self, holder: str) -> None:
        if holder in self._cut:
            raise ConnectionError(f"lease store unreachable for {holder}")

    async def acquire(self, name: str, holder: str, ttl: float) -> Lease | None:
        self._check(holder)
        current = self.leases.get(name)
        if current is None and self._first_epoch > 1:
            current = Lease(name, "", self._first_epoch - 1, 0.0)  # expired: next epoch
        granted = lease_rules.grant(current, name, holder, time.monotonic(), ttl)
        if granted is not None:
            if current is None or granted.epoch != current.epoch:
                self.grants.append(granted)
            self.leases[name] = granted
        return granted

    async def renew(self, lease: Lease, ttl: float) -> Lease | None:
        self._check(lease.holder)
        renewed = lease_rules.renew(self.leases.get(lease.name), lease, time.monotonic(), ttl)
        if renewed is not None:
            self.leases[lease.name] = renewed
        return renewed

    async def release(self, lease: Lease) -> None:
        self._check(lease.holder)
        current = self.leases.get(lease.name)
        if current is not None and current.holder == lease.holder:
            if current.epoch == lease.epoch:
                self.leases[lease.name] = Lease(lease.name, lease.holder, lease.epoch, 0.0)

    async def close(self) -> None:
        return None


class MemoryProducer:
    """Records every record it is given; acknowledges at once unless told to fail."""

    def __init__(self, partitions: int = 4) -> None:
        self.records: list[OutgoingRecord] = []
        self.failures: list[Exception] = []
        self._partitions = partitions
        self._held: list[asyncio.Future[Any]] | None = None
        self.started = False

    def fail_next(self, error: Exception) -> None:
        self.failures.append(error)

    def hold(self) -> None:
        """Leave later sends unacknowledged (Kafka unreachable) until ``release()``."""
        self._held = []

    def release(self) -> None:
        held, self._held = self._held or [], None
        for future in held:
            if not future.done():  # given up by stop()
                future.set_result(None)

    async def start(self) -> None:
        self.started = True

    async def stop(self, drain_seconds: float) -> None:
        held = [future for future in self._held or () if not future.done()]
        if held:
            await asyncio.wait(held, timeout=drain_seconds)
        for future in held:
            if not future.done():
                future.set_exception(TimeoutError("not acknowledged before the stop"))
        self.started = False

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[PendingBatch]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.failures:
            future.set_exception(self.failures.pop(0))
        else:
            self.records.extend(records)
            if self._held is not None:
                self._held.append(future)
            else:
                future.set_result(None)
        return [PendingBatch(future, range(len(records)))]

    async def partitions(self, topic: str) -> list[int]:  # noqa: ARG002 - every topic alike
        return list(range(self._partitions))

    async def probe(self) -> None:
        return None
