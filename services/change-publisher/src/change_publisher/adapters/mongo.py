"""MongoDB adapters: the change stream source, the checkpoint store and the lease store.

The checkpoint and lease documents live in the watched database (collections
``publisher_checkpoints`` and ``publisher_leases``); the change stream's ``$match`` only
lets the configured collections through, so they never feed back into the stream.

A stored document the driver cannot decode (invalid UTF-8 in a string, say) must not stall
the stream: the driver fails the whole batch that holds it, and reopening at the same
position would fail the same way forever. So the change stream then re-reads from the last
change it passed decoding change by change, and hands the one that does not decode on as an
``UndecodableChange`` (dead-lettered); a snapshot decodes document by document. Dates
outside years 1-9999 are no such error: the client decodes them as ``DatetimeMS``
(``datetime_conversion="DATETIME_AUTO"``), so the document fails validation and is
dead-lettered like any other invalid document.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

import pymongo
from bson import Timestamp, decode
from bson.codec_options import CodecOptions
from bson.errors import InvalidBSON
from bson.raw_bson import RawBSONDocument
from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError
from pymongo.write_concern import WriteConcern

from change_publisher.domain.lease import Lease
from change_publisher.domain.mapping import UndecodableChange, UndecodableDocument
from change_publisher.ports import (
    ChangeBatch,
    Checkpoint,
    Fenced,
    HistoryLost,
    SnapshotPart,
    SourceUnavailable,
    StreamPosition,
)
from slotstream_contracts.changes import ChangeEvent, ClusterTime, OperationType, ResumeToken

CHECKPOINTS: Final = "publisher_checkpoints"
LEASES: Final = "publisher_leases"
#: ChangeStreamHistoryLost, ChangeStreamFatalError, InvalidResumeToken, CappedPositionLost.
_HISTORY_LOST_CODES: Final = frozenset({286, 280, 260, 136})
_MAJORITY: Final = WriteConcern("majority")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: the share of the lease TTL a lease acquisition may take (the publisher waits half)
ACQUIRE_TTL_SHARE: Final = 0.4

Document = dict[str, Any]


def _history_lost(exc: PyMongoError) -> bool:
    return isinstance(exc, OperationFailure) and exc.code in _HISTORY_LOST_CODES


def parse_change(raw: Document, db: str, model: type[ChangeEvent] = ChangeEvent) -> ChangeEvent:
    """A change stream document as a ``ChangeEvent`` (BSON timestamp → {t, i})."""
    cluster_time = raw.get("clusterTime")
    if isinstance(cluster_time, Timestamp):
        raw = {**raw, "clusterTime": {"t": cluster_time.time, "i": cluster_time.inc}}
    if "ns" not in raw:  # invalidate events carry no namespace
        raw = {**raw, "ns": {"db": db}}
    return model.model_validate(raw)


#: What the server itself writes into a change stream document: what is left to show of a
#: change whose stored documents do not decode at all.
_METADATA: Final = ("_id", "operationType", "clusterTime", "wallTime", "ns", "documentKey")


def _lenient(codec: CodecOptions[Document]) -> CodecOptions[Document]:
    """``codec`` decoding invalid UTF-8 as backslash escapes (for the dead letter only)."""
    return codec.with_options(unicode_decode_error_handler="backslashreplace")


def decode_change(raw: RawBSONDocument, codec: CodecOptions[Document], db: str) -> ChangeEvent:
    """One change read raw; an ``UndecodableChange`` (to dead-letter) if it does not decode."""
    try:
        return parse_change(decode(raw.raw, codec), db)
    except InvalidBSON as exc:
        error = f"the change does not decode: {exc}"
    try:
        document = decode(raw.raw, _lenient(codec))
    except InvalidBSON:  # not only bad UTF-8: keep what the server wrote
        document = {}
        for name in _METADATA:
            with contextlib.suppress(KeyError, InvalidBSON):
                value = raw[name]
                document[name] = (
                    decode(value.raw, _lenient(codec))
                    if isinstance(value, RawBSONDocument)
                    else value
                )
    return parse_change({**document, "error": error}, db, UndecodableChange)


def decode_document(raw: RawBSONDocument, codec: CodecOptions[Document]) -> Document:
    """One stored document read raw; an ``UndecodableDocument`` if it does not decode."""
    try:
        return decode(raw.raw, codec)
    except InvalidBSON as exc:
        error = f"the document does not decode: {exc}"
    document_id: Any = None
    with contextlib.suppress(InvalidBSON):
        document_id = decode(raw.raw, _lenient(codec)).get("_id")
    return UndecodableDocument(document_id, error)


class _Idle:
    __slots__ = ("token",)

    def __init__(self, token: ResumeToken | None) -> None:
        self.token = token


#: Opens a driver change stream at a position: ``careful`` to get raw documents (decoded
#: change by change); returns the stream and whether it is careful.
Watch = Callable[[StreamPosition, bool], Awaitable[tuple[AsyncChangeStream[Any], bool]]]


class MongoChangeStream:
    """A database change stream read by a background task into a bounded queue, so the
    publisher gets whatever is buffered as one batch without polling private cursor state.

    The driver decodes each batch as a whole. When a change in it does not decode, the
    driver raises InvalidBSON and closes the cursor; the stream then reopens after the last
    change it passed, reads raw documents and decodes them one by one (twice the decoding
    cost), and after ``limit`` changes — the failed batch held at most that many — or once
    caught up, reopens with the driver's decoding again."""

    def __init__(
        self,
        watch: Watch,
        stream: AsyncChangeStream[Any],
        careful: bool,
        *,
        position: StreamPosition,
        codec: CodecOptions[Document],
        db: str,
        limit: int,
    ) -> None:
        self._watch = watch
        self._stream = stream
        self._position = position
        self._codec = codec
        self._db = db
        self._limit = limit
        #: Changes still to read raw (0: the driver decodes).
        self._careful = limit if careful else 0
        self._queue: asyncio.Queue[ChangeEvent | _Idle | BaseException] = asyncio.Queue(
            maxsize=limit * 2
        )
        self._error: BaseException | None = None
        token = stream.resume_token  # the opening aggregate's postBatchResumeToken
        self.start_token: ResumeToken | None = dict(token) if token is not None else None
        self._reader = asyncio.create_task(self._read())

    def _passed(self) -> StreamPosition:
        """Where the stream is: after the last change read, else where it was opened."""
        token = self._stream.resume_token
        return self._position if token is None else StreamPosition(after=dict(token))

    async def _reopen(self, careful: bool) -> None:
        position = self._passed()
        with contextlib.suppress(PyMongoError):
            await self._stream.close()
        self._stream, opened_careful = await self._watch(position, careful)
        self._careful = self._limit if opened_careful else 0

    async def _read(self) -> None:
        try:
            while True:
                try:
                    raw = await self._stream.try_next()
                except InvalidBSON:
                    if self._careful:
                        raise  # not a stored document: nothing more can be done here
                    await self._reopen(careful=True)
                    continue
                if raw is None:
                    if self._careful:
                        await self._reopen(careful=False)  # caught up
                    token = self._stream.resume_token
                    await self._queue.put(_Idle(dict(token) if token is not None else None))
                    continue
                if isinstance(raw, RawBSONDocument):
                    change = decode_change(raw, self._codec, self._db)
                else:
                    change = parse_change(raw, self._db)
                await self._queue.put(change)
                if change.operation_type is OperationType.INVALIDATE:
                    # The server closed the cursor: a later read must not wait forever.
                    await self._queue.put(
                        SourceUnavailable("the change stream was invalidated: reopen after it")
                    )
                    return
                if self._careful:
                    self._careful -= 1
                    if not self._careful:
                        await self._reopen(careful=False)
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
        if isinstance(error, SourceUnavailable | HistoryLost):
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
        #: The same database handing documents over undecoded (``decode_*``).
        self._raw_db: AsyncDatabase[RawBSONDocument] = self._db.with_options(
            codec_options=self._db.codec_options.with_options(document_class=RawBSONDocument)
        )
        self._collections = list(collections)
        self._pre_images = pre_images
        self._limit = limit
        self._max_await_ms = max_await_ms

    async def open(self, position: StreamPosition) -> MongoChangeStream:
        stream, careful = await self._watch(position, False)
        return MongoChangeStream(
            self._watch,
            stream,
            careful,
            position=position,
            codec=self._db.codec_options,
            db=self._db_name,
            limit=self._limit,
        )

    async def _watch(
        self, position: StreamPosition, careful: bool
    ) -> tuple[AsyncChangeStream[Any], bool]:
        pipeline = [
            {
                "$match": {
                    "$or": [
                        {"ns.coll": {"$in": self._collections}},
                        # a rename onto a watched collection (a reload replacing it)
                        {"to.db": self._db_name, "to.coll": {"$in": self._collections}},
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
            if not careful:
                try:
                    return await self._db.watch(pipeline, **options), False
                except InvalidBSON:  # the opening batch holds a change that does not decode
                    pass
            return await self._raw_db.watch(pipeline, **options), True
        except PyMongoError as exc:
            if _history_lost(exc):
                raise HistoryLost(str(exc)) from exc
            raise SourceUnavailable(f"cannot open the change stream: {exc!r}") from exc

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
        """Read raw and decoded one by one, so one undecodable document is dead-lettered
        instead of failing its whole batch (a raw read costs no more than a decoded one)."""
        codec = self._db.codec_options
        try:
            async for raw in self._raw_db[collection].find({}, batch_size=self._limit):
                yield decode_document(raw, codec)
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
        # Bounded by the driver itself, within the publisher's wait for an answer (half the
        # TTL): a MongoDB not reachable (at start: it may come up after the publisher) then
        # fails with the driver's error naming the address and the cause, instead of the
        # publisher's bare TimeoutError, logged every few seconds with neither.
        with pymongo.timeout(ttl * ACQUIRE_TTL_SHARE):
            return await self._acquire(name, holder, ttl)

    async def _acquire(self, name: str, holder: str, ttl: float) -> Lease | None:
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
