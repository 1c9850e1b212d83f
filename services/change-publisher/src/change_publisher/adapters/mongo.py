"""MongoDB adapters: the change stream source, the checkpoint store and the lease store.

The checkpoint and lease documents live in the watched database (collections
``publisher_checkpoints`` and ``publisher_leases``); the change stream's ``$match`` only
lets the configured collections through, so they never feed back into the stream.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

from bson import Timestamp
from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError
from pymongo.write_concern import WriteConcern

from change_publisher.domain.lease import Lease
from change_publisher.ports import (
    ChangeBatch,
    Checkpoint,
    Fenced,
    HistoryLost,
    SnapshotPart,
    SourceUnavailable,
    StreamPosition,
)
from slotstream_contracts.changes import ChangeEvent, ClusterTime, ResumeToken

CHECKPOINTS: Final = "publisher_checkpoints"
LEASES: Final = "publisher_leases"
#: ChangeStreamHistoryLost, ChangeStreamFatalError, InvalidResumeToken, CappedPositionLost.
_HISTORY_LOST_CODES: Final = frozenset({286, 280, 260, 136})
_MAJORITY: Final = WriteConcern("majority")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

Document = dict[str, Any]


def _history_lost(exc: PyMongoError) -> bool:
    return isinstance(exc, OperationFailure) and exc.code in _HISTORY_LOST_CODES


def parse_change(raw: Document, db: str) -> ChangeEvent:
    """A change stream document as a ``ChangeEvent`` (BSON timestamp → {t, i})."""
    cluster_time = raw.get("clusterTime")
    if isinstance(cluster_time, Timestamp):
        raw = {**raw, "clusterTime": {"t": cluster_time.time, "i": cluster_time.inc}}
    if "ns" not in raw:  # invalidate events carry no namespace
        raw = {**raw, "ns": {"db": db}}
    return ChangeEvent.model_validate(raw)


class _Idle:
    __slots__ = ("token",)

    def __init__(self, token: ResumeToken | None) -> None:
        self.token = token


class MongoChangeStream:
    """A database change stream read by a background task into a bounded queue, so the
    publisher gets whatever is buffered as one batch without polling private cursor state."""

    def __init__(self, stream: AsyncChangeStream[Document], db: str, limit: int) -> None:
        self._stream = stream
        self._db = db
        self._limit = limit
        self._queue: asyncio.Queue[ChangeEvent | _Idle | BaseException] = asyncio.Queue(
            maxsize=limit * 2
        )
        self._error: BaseException | None = None
        token = stream.resume_token  # the opening aggregate's postBatchResumeToken
        self.start_token: ResumeToken | None = dict(token) if token is not None else None
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                raw = await self._stream.try_next()
                if raw is None:
                    token = self._stream.resume_token
                    await self._queue.put(_Idle(dict(token) if token is not None else None))
                    continue
                await self._queue.put(parse_change(raw, self._db))
                if raw.get("operationType") == "invalidate":
                    # The server closed the cursor: a later read must not wait forever.
                    await self._queue.put(
                        SourceUnavailable("the change stream was invalidated: reopen after it")
                    )
                    return
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await self._queue.put(exc)

    async def next_batch(self) -> ChangeBatch:
        changes: list[ChangeEvent] = []
        resume: ResumeToken | None = None
        if self._error is not None:
            self._raise(self._error)
        item = await self._queue.get()
        while True:
            if isinstance(item, BaseException):
                if not changes:
                    self._raise(item)
                self._error = item  # deliver the changes before it first
                break
            if isinstance(item, _Idle):
                resume = item.token
                break
            changes.append(item)
            if len(changes) >= self._limit or self._queue.empty():
                break
            item = self._queue.get_nowait()
        return ChangeBatch(changes, resume)

    @staticmethod
    def _raise(error: BaseException) -> NoReturn:
        if isinstance(error, SourceUnavailable):
            raise error
        if isinstance(error, PyMongoError) and _history_lost(error):
            raise HistoryLost(str(error)) from error
        raise SourceUnavailable(f"change stream failed: {error!r}") from error

    async def aclose(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        with contextlib.suppress(PyMongoError):
            await self._stream.close()


class MongoChangeSource:
    def __init__(
        self,
        client: AsyncMongoClient[Document],
        db: str,
        collections: Sequence[str],
        *,
        pre_images: bool = False,
        limit: int = 1000,
        max_await_ms: int = 500,
    ) -> None:
        self._client = client
        self._db_name = db
        self._db: AsyncDatabase[Document] = client[db]
        self._collections = list(collections)
        self._pre_images = pre_images
        self._limit = limit
        self._max_await_ms = max_await_ms

    async def open(self, position: StreamPosition) -> MongoChangeStream:
        pipeline = [
            {
                "$match": {
                    "$or": [
                        {"ns.coll": {"$in": self._collections}},
                        {"operationType": {"$in": ["invalidate", "dropDatabase"]}},
                    ]
                }
            }
        ]
        options: dict[str, Any] = {
            "full_document": "updateLookup",
            "max_await_time_ms": self._max_await_ms,
            "batch_size": self._limit,
        }
        if self._pre_images:
            options["full_document_before_change"] = "whenAvailable"
        if position.after is not None:
            # startAfter (not resumeAfter) also accepts the token of an invalidate event.
            options["start_after"] = position.after
        elif position.at is not None:
            options["start_at_operation_time"] = Timestamp(position.at.t, position.at.i)
        try:
            stream = await self._db.watch(pipeline, **options)
        except PyMongoError as exc:
            if _history_lost(exc):
                raise HistoryLost(str(exc)) from exc
            raise SourceUnavailable(f"cannot open the change stream: {exc!r}") from exc
        return MongoChangeStream(stream, self._db_name, self._limit)

    async def snapshot(self, collection: str) -> SnapshotPart:
        try:
            async with self._client.start_session() as session:
                reply = await self._db.command("ping", session=session)
                stamp = reply.get("operationTime") or session.operation_time
        except PyMongoError as exc:
            raise SourceUnavailable(f"cannot capture the operation time: {exc!r}") from exc
        if not isinstance(stamp, Timestamp):
            raise SourceUnavailable("no operationTime: change streams need a replica set")
        return SnapshotPart(ClusterTime(t=stamp.time, i=stamp.inc), self._documents(collection))

    async def _documents(self, collection: str) -> AsyncIterator[Document]:
        try:
            async for document in self._db[collection].find({}, batch_size=self._limit):
                yield document
        except PyMongoError as exc:
            raise SourceUnavailable(f"snapshot of {collection} failed: {exc!r}") from exc

    async def close(self) -> None:
        return None


class MongoCheckpointStore:
    """One document per stream; a write from an older lease epoch is refused (fencing)."""

    def __init__(self, database: AsyncDatabase[Document]) -> None:
        self._collection = database.get_collection(CHECKPOINTS, write_concern=_MAJORITY)

    async def load(self, name: str) -> Checkpoint | None:
        doc = await self._collection.find_one({"_id": name})
        if doc is None:
            return None
        at = doc.get("at")
        saved_at: datetime = doc["savedAt"]
        return Checkpoint(
            token=doc.get("token"),
            at=ClusterTime(t=at["t"], i=at["i"]) if at else None,
            epoch=int(doc["epoch"]),
            saved_at=saved_at if saved_at.tzinfo else saved_at.replace(tzinfo=UTC),
        )

    async def save(self, name: str, checkpoint: Checkpoint) -> None:
        values = {
            "token": checkpoint.token,
            "at": {"t": checkpoint.at.t, "i": checkpoint.at.i} if checkpoint.at else None,
            "epoch": checkpoint.epoch,
            "savedAt": checkpoint.saved_at,
        }
        try:
            await self._collection.update_one(
                {"_id": name, "epoch": {"$lte": checkpoint.epoch}},
                {"$set": values},
                upsert=True,
            )
        except DuplicateKeyError as exc:
            raise Fenced(f"checkpoint {name}: a newer epoch than {checkpoint.epoch} wrote") from exc

    async def close(self) -> None:
        return None


class MongoLeaseStore:
    """The lease document, timed by the server's clock (``$$NOW``), so replicas' clocks
    need not agree. See ``domain.lease`` for the rules these updates implement."""

    def __init__(self, database: AsyncDatabase[Document]) -> None:
        self._collection = database.get_collection(LEASES, write_concern=_MAJORITY)

    @staticmethod
    def _lease(doc: Document) -> Lease:
        expires: datetime = doc["expiresAt"]
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        return Lease(doc["_id"], doc["holder"], int(doc["epoch"]), expires.timestamp())

    async def acquire(self, name: str, holder: str, ttl: float) -> Lease | None:
        # MongoDB refuses $expr in the filter of an upsert (error 224), so the document is
        # created first (expired, epoch 0), then taken by a conditional update.
        try:
            await self._collection.update_one(
                {"_id": name},
                {"$setOnInsert": {"holder": None, "epoch": 0, "expiresAt": _EPOCH}},
                upsert=True,
            )
        except DuplicateKeyError:
            pass  # another replica created it at the same moment
        still_mine = {"$and": [{"$eq": ["$holder", holder]}, {"$gt": ["$expiresAt", "$$NOW"]}]}
        doc = await self._collection.find_one_and_update(
            {
                "_id": name,
                "$expr": {"$or": [{"$eq": ["$holder", holder]}, {"$lte": ["$expiresAt", "$$NOW"]}]},
            },
            [
                {
                    "$set": {
                        "epoch": {"$cond": [still_mine, "$epoch", {"$add": ["$epoch", 1]}]},
                        "holder": holder,
                        "expiresAt": {"$add": ["$$NOW", int(ttl * 1000)]},
                    }
                }
            ],
            return_document=ReturnDocument.AFTER,
        )
        return None if doc is None else self._lease(doc)

    async def renew(self, lease: Lease, ttl: float) -> Lease | None:
        doc = await self._collection.find_one_and_update(
            {"_id": lease.name, "holder": lease.holder, "epoch": lease.epoch},
            [{"$set": {"expiresAt": {"$add": ["$$NOW", int(ttl * 1000)]}}}],
            return_document=ReturnDocument.AFTER,
        )
        return None if doc is None else self._lease(doc)

    async def release(self, lease: Lease) -> None:
        await self._collection.update_one(
            {"_id": lease.name, "holder": lease.holder, "epoch": lease.epoch},
            [{"$set": {"expiresAt": "$$NOW"}}],
        )

    async def close(self) -> None:
        return None
