"""Index creation runs without the per-operation timeout (``BOOKING_API_MONGO_TIMEOUT_MS``):
building an index on a large collection takes longer, and a ``createIndexes`` cut at the
timeout (its ``maxTimeMS``) is aborted by the server, so the start would fail and be
retried forever. The notifications' TTL index follows the retention setting, also when it
changes on an existing deployment, and when an index on its key exists under another name.
No MongoDB here: the driver's own ``create_index`` and ``command`` build their commands,
and a fake server (``IndexServer``) answers them as MongoDB does, recording each with the
deadline in force."""

from datetime import timedelta
from typing import Any

import pymongo
import pytest
from pymongo import _csot
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.asynchronous.mongo_client import AsyncMongoClient
from pymongo.errors import OperationFailure
from structlog.testing import capture_logs

from booking_api.adapters.mongo import MongoStorage
from booking_api.adapters.tickets import STREAM_TICKETS, MongoTicketStore
from slotstream_testkit.net import free_port

TIMEOUT_MS = 5_000
DAY = 24 * 3600


class IndexServer:
    """MongoDB's answers to the index commands, on one index document per
    ``(collection, name)``. ``createIndexes`` of an index that exists under its name with
    other options, or whose key exists under another name (``expireAfterSeconds`` does not
    tell indexes apart, so a TTL and a plain index on one key conflict too; a partial
    filter or a collation does), fails with IndexOptionsConflict (85). ``collMod`` and
    ``dropIndexes`` find an index by name or by key pattern (AmbiguousIndexKeyPattern, 119,
    when several have it), or fail with IndexNotFound (27); ``collMod`` sets an index's
    ``expireAfterSeconds`` (also on a single-field index without one, as MongoDB 5.1 and
    later do) and answers the old and new values, or fails with Unauthorized (13), as for
    a user with the ``readWrite`` role only, when ``may_coll_mod`` is false."""

    def __init__(self) -> None:
        #: ``(command name, seconds left of its deadline)`` of every command sent (None: no
        #: deadline, so no ``maxTimeMS`` and no socket timeout)
        self.sent: list[tuple[str, float | None]] = []
        #: ``{(collection, index name): index document}``
        self.indexes: dict[tuple[str, str], dict[str, Any]] = {}
        self.may_coll_mod = True

    def run(self, command: dict[str, Any]) -> dict[str, Any]:
        name = next(iter(command))
        self.sent.append((name, _csot.remaining()))
        collection = command[name]
        if name == "createIndexes":
            for index in command["indexes"]:
                self._create(collection, dict(index))
        elif name == "collMod":
            return self._coll_mod(collection, command["index"])
        elif name == "dropIndexes":
            del self.indexes[self._find(collection, command["index"])]
        elif name == "listIndexes":
            batch = [dict(i) for (c, _), i in self.indexes.items() if c == collection]
            return {"cursor": {"id": 0, "ns": f"db.{collection}", "firstBatch": batch}, "ok": 1}
        return {"ok": 1}

    def _create(self, collection: str, index: dict[str, Any]) -> None:
        existing = self.indexes.get((collection, index["name"]))
        if existing is not None:
            if existing != index:
                message = f"Index with name: {index['name']} already exists with different options"
                raise OperationFailure(message, 85)
            return
        for (c, other), document in self.indexes.items():
            if c == collection and _kind(document) == _kind(index):
                raise OperationFailure(f"Index already exists with a different name: {other}", 85)
        self.indexes[(collection, index["name"])] = index

    def _coll_mod(self, collection: str, change: dict[str, Any]) -> dict[str, Any]:
        if not self.may_coll_mod:
            raise OperationFailure("not authorized to execute command collMod", 13)
        index = self.indexes[self._find(collection, change.get("name") or change["keyPattern"])]
        reply: dict[str, Any] = {"expireAfterSeconds_new": change["expireAfterSeconds"], "ok": 1}
        if "expireAfterSeconds" in index:
            reply["expireAfterSeconds_old"] = index["expireAfterSeconds"]
        index["expireAfterSeconds"] = change["expireAfterSeconds"]
        return reply

    def _find(self, collection: str, name_or_key: str | dict[str, Any]) -> tuple[str, str]:
        """The index named so, or the one with this key pattern."""
        found = [
            (c, name)
            for c, name in self.indexes
            if c == collection
            and (
                name == name_or_key
                if isinstance(name_or_key, str)
                else _key(self.indexes[(c, name)]) == list(name_or_key.items())
            )
        ]
        if len(found) > 1:
            message = f"{len(found)} indexes found for key: {name_or_key}, identify by name instead"
            raise OperationFailure(message, 119)  # AmbiguousIndexKeyPattern
        if not found:
            raise OperationFailure(f"cannot find index {name_or_key} for ns db.{collection}", 27)
        return found[0]

    def ttl_of(self, collection: str) -> list[Any]:
        """The ``expireAfterSeconds`` of each TTL index of ``collection``."""
        return [
            index["expireAfterSeconds"]
            for (name, _), index in self.indexes.items()
            if name == collection and "expireAfterSeconds" in index
        ]

    def names_of(self, collection: str, key: dict[str, int]) -> list[str]:
        """The names of ``collection``'s indexes on ``key``."""
        return [
            name
            for (c, name), index in self.indexes.items()
            if c == collection and _key(index) == list(key.items())
        ]


def _key(index: dict[str, Any]) -> list[tuple[str, Any]]:
    """An index's key pattern, in its order (``{a: 1, b: 1}`` is not ``{b: 1, a: 1}``)."""
    return list(index["key"].items())


def _kind(index: dict[str, Any]) -> tuple[Any, ...]:
    """What tells indexes apart: the key pattern and the options that make another index
    of one key (a partial filter, a collation); not ``expireAfterSeconds``."""
    return (_key(index), index.get("partialFilterExpression"), index.get("collation"))


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> IndexServer:
    """Every command the client sends goes to an ``IndexServer``, without selecting a
    server or a connection."""
    fake = IndexServer()

    async def write(
        _client: object, _retryable: bool, func: Any, _session: object, *_args: Any, **_kw: Any
    ) -> Any:
        return await func(None, None, False)

    async def read(
        _client: object, func: Any, read_pref: object, _session: object, *_args: Any, **_kw: Any
    ) -> Any:
        return await func(None, None, None, read_pref)

    async def command(_target: object, _conn: object, cmd: Any, *_args: Any, **_kw: Any) -> Any:
        return fake.run(dict(cmd))

    monkeypatch.setattr(AsyncMongoClient, "_retryable_write", write)
    monkeypatch.setattr(AsyncMongoClient, "_retryable_read", read)
    monkeypatch.setattr(AsyncCollection, "_command", command)
    monkeypatch.setattr(AsyncDatabase, "_command", command)
    return fake


def _store(retention_days: int = 90) -> MongoStorage:
    return MongoStorage(
        f"mongodb://127.0.0.1:{free_port()}/",
        "slotstream",
        TIMEOUT_MS,
        notification_retention=timedelta(days=retention_days),
    )


async def _start(retention_days: int) -> None:
    store = _store(retention_days)
    try:
        await store.start()
    finally:
        await store.close()


async def _operator_creates(key: str, **options: Any) -> None:
    """``db.notifications.createIndex({<key>: 1}, options)`` run by hand: the default name
    (``createdAt_1``)."""
    store = _store()
    try:
        await store.database["notifications"].create_index(key, **options)
    finally:
        await store.close()


async def test_indexes_are_created_without_the_per_operation_timeout(server: IndexServer) -> None:
    store = _store()
    try:
        await store.start()
        await MongoTicketStore(store.database[STREAM_TICKETS]).start()
        client = store.database.client
        # server selection stays short: an unreachable MongoDB fails fast, with its reason
        assert client.options.server_selection_timeout == TIMEOUT_MS / 1000
    finally:
        await store.close()
    assert len(server.sent) == 11, server.sent
    assert {operation for operation, _ in server.sent} == {"createIndexes"}
    assert all(left is None for _, left in server.sent), server.sent


async def test_a_start_timeout_still_bounds_index_creation(server: IndexServer) -> None:
    """``MongoStartup`` cuts an attempt at the start timeout with ``pymongo.timeout``."""
    store = _store()
    try:
        with pymongo.timeout(2):
            await store.start()
    finally:
        await store.close()
    assert server.sent
    assert all(left is not None and left <= 2 for _, left in server.sent), server.sent


async def test_notifications_expire_after_the_retention_period(server: IndexServer) -> None:
    await _start(30)
    assert server.ttl_of("notifications") == [30 * DAY]
    # a restart with the same period changes nothing
    await _start(30)
    assert "collMod" not in {operation for operation, _ in server.sent}
    assert server.ttl_of("notifications") == [30 * DAY]


async def test_a_changed_retention_period_changes_the_existing_index(server: IndexServer) -> None:
    await _start(90)
    server.sent.clear()
    await _start(7)
    assert server.ttl_of("notifications") == [7 * DAY]
    assert [operation for operation, _ in server.sent].count("collMod") == 1
    assert all(left is None for _, left in server.sent), server.sent


async def test_without_coll_mod_rights_the_index_is_rebuilt(server: IndexServer) -> None:
    """A ``booking-api`` user with the ``readWrite`` role alone (a deployment whose init has
    not run since the ``collMod`` role was added) may create and drop indexes but not run
    ``collMod``."""
    await _start(90)
    server.may_coll_mod = False
    await _start(180)
    assert server.ttl_of("notifications") == [180 * DAY]
    assert "dropIndexes" in {operation for operation, _ in server.sent}


CREATED_AT = {"createdAt": 1}


@pytest.mark.parametrize(
    ("existing", "options"),
    [("a TTL index", {"expireAfterSeconds": DAY}), ("a plain index", {})],
)
async def test_an_index_on_created_at_under_another_name_gets_the_retention_period(
    server: IndexServer, existing: str, options: dict[str, Any]
) -> None:
    """An operator's ``createIndex({createdAt: 1})`` (named ``createdAt_1``) makes our
    ``createIndexes`` fail with IndexOptionsConflict: that index is changed in place, by its
    key pattern, and the start goes on."""
    await _operator_creates("createdAt", **options)
    with capture_logs() as logs:
        await _start(90)
    assert server.names_of("notifications", CREATED_AT) == ["createdAt_1"], existing
    assert server.ttl_of("notifications") == [90 * DAY]
    [changed] = [e for e in logs if e["event"] == "notification retention changed"]
    assert changed["index"] == "createdAt_1"
    assert changed["expire_after_seconds_before"] == options.get("expireAfterSeconds")
    assert changed["how"] == "collMod"
    # the next start finds it with the period: it changes nothing, and says nothing
    server.sent.clear()
    with capture_logs() as logs:
        await _start(90)
    assert "collMod" not in {operation for operation, _ in server.sent}
    assert [e for e in logs if e["event"] == "notification retention changed"] == []
    assert server.ttl_of("notifications") == [90 * DAY]


async def test_without_coll_mod_rights_an_index_under_another_name_is_rebuilt(
    server: IndexServer,
) -> None:
    await _operator_creates("createdAt")
    server.may_coll_mod = False
    with capture_logs() as logs:
        await _start(30)
    assert server.names_of("notifications", CREATED_AT) == ["createdAt_ttl"]
    assert server.ttl_of("notifications") == [30 * DAY]
    [changed] = [e for e in logs if e["event"] == "notification retention changed"]
    assert (changed["index"], changed["how"]) == ("createdAt_1", "rebuilt")


async def test_a_partial_index_on_created_at_is_left_alone(server: IndexServer) -> None:
    """MongoDB allows a partial index on ``{createdAt: 1}`` beside the full one, so the key
    pattern alone does not name the index to change."""
    await _operator_creates(
        "createdAt", name="createdAt_unread", partialFilterExpression={"read": False}
    )
    await _operator_creates("createdAt", expireAfterSeconds=DAY)
    await _start(90)
    assert server.indexes[("notifications", "createdAt_1")]["expireAfterSeconds"] == 90 * DAY
    assert "expireAfterSeconds" not in server.indexes[("notifications", "createdAt_unread")]
