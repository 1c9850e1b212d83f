"""Index creation runs without the per-operation timeout (``BOOKING_API_MONGO_TIMEOUT_MS``):
building an index on a large collection takes longer, and a ``createIndexes`` cut at the
timeout (its ``maxTimeMS``) is aborted by the server, so the start would fail and be
retried forever. No MongoDB here: the driver's own ``create_index`` runs (with its
``timeoutMS`` handling) down to the point where it would select a server and send the
command, which a stub records with the deadline in force."""

from typing import Any

import pymongo
import pytest
from pymongo import _csot
from pymongo.asynchronous.mongo_client import AsyncMongoClient

from booking_api.adapters.mongo import MongoStorage
from booking_api.adapters.tickets import STREAM_TICKETS, MongoTicketStore
from slotstream_testkit.net import free_port

TIMEOUT_MS = 5_000


@pytest.fixture
def deadlines(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float | None]]:
    """``(operation, seconds left of its deadline)`` of every write the client would send
    (None: no deadline, so no ``maxTimeMS`` and no socket timeout)."""
    seen: list[tuple[str, float | None]] = []

    async def record(
        _client: object,
        _retryable: bool,
        _func: object,
        _session: object,
        operation: str,
        *_args: Any,
        **_kwargs: Any,
    ) -> list[str]:
        seen.append((operation, _csot.remaining()))
        return ["recorded"]  # the index names create_index answers with

    monkeypatch.setattr(AsyncMongoClient, "_retryable_write", record)
    return seen


def _store() -> MongoStorage:
    return MongoStorage(f"mongodb://127.0.0.1:{free_port()}/", "slotstream", TIMEOUT_MS)


async def test_indexes_are_created_without_the_per_operation_timeout(
    deadlines: list[tuple[str, float | None]],
) -> None:
    store = _store()
    try:
        await store.start()
        await MongoTicketStore(store.database[STREAM_TICKETS]).start()
        client = store.database.client
        # server selection stays short: an unreachable MongoDB fails fast, with its reason
        assert client.options.server_selection_timeout == TIMEOUT_MS / 1000
    finally:
        await store.close()
    assert len(deadlines) == 10, deadlines
    assert {operation for operation, _ in deadlines} == {"createIndexes"}
    assert all(left is None for _, left in deadlines), deadlines


async def test_a_start_timeout_still_bounds_index_creation(
    deadlines: list[tuple[str, float | None]],
) -> None:
    """``MongoStartup`` cuts an attempt at the start timeout with ``pymongo.timeout``."""
    store = _store()
    try:
        with pymongo.timeout(2):
            await store.start()
    finally:
        await store.close()
    assert deadlines
    assert all(left is not None and left <= 2 for _, left in deadlines), deadlines
