"""Index creation runs without the per-operation timeout (``BOOKING_API_MONGO_TIMEOUT_MS``):
building an index on a large collection takes longer, and a ``createIndexes`` cut at the
timeout (its ``maxTimeMS``) is aborted by the server, so the start would fail and be
retried forever. The notifications' TTL index follows the retention setting, also when it
changes on an existing deployment. No MongoDB here: the driver's own ``create_index``,
``drop_index`` and ``command`` build their commands, and a fake server (``IndexServer``)
answers them as MongoDB does, recording each with the deadline in force."""

from datetime import timedelta
from typing import Any

import pymongo
import pytest
from pymongo import _csot
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.asynchronous.mongo_client import AsyncMongoClient
from pymongo.errors import OperationFailure

from booking_api.adapters.mongo import MongoStorage
from booking_api.adapters.tickets import STREAM_TICKETS, MongoTicketStore
from slotstream_testkit.net import free_port

TIMEOUT_MS = 5_000
DAY = 24 * 3600


class IndexServer:
    """MongoDB's answers to the index commands: ``createIndexes`` of an index that exists
    under its name with other options fails with IndexOptionsConflict (85), ``collMod``
    changes an index's ``expireAfterSeconds`` (or fails with Unauthorized, 13, as for a
    user with the ``readWrite`` role only, when ``may_coll_mod`` is false)."""

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
                key = (collection, index["name"])
                existing = self.indexes.setdefault(key, dict(index))
                if existing != index:
                    raise OperationFailure("Index already exists with different options", 85)
        elif name == "collMod":
            if not self.may_coll_mod:
                raise OperationFailure("not authorized to execute command collMod", 13)
            change = command["index"]
            self.indexes[(collection, change["name"])]["expireAfterSeconds"] = change[
                "expireAfterSeconds"
            ]
        elif name == "dropIndexes":
            del self.indexes[(collection, command["index"])]
        return {"ok": 1}

    def ttl_of(self, collection: str) -> list[Any]:
        """The ``expireAfterSeconds`` of each TTL index of ``collection``."""
        return [
            index["expireAfterSeconds"]
            for (name, _), index in self.indexes.items()
            if name == collection and "expireAfterSeconds" in index
        ]


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
