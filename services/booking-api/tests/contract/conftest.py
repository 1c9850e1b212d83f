"""The contract suites run once per storage backend: memory always, Mongo when there is one.

The Mongo binding gets a fresh database per test (dropped afterwards) and skips, with
the reason in the summary, when the ``mongo_url`` fixture has no real MongoDB.
"""

import uuid
from collections.abc import AsyncIterator

import pytest

from booking_api.adapters.memory import MemoryStorage
from booking_api.ports import Storage


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.mongo)])
async def storage(request: pytest.FixtureRequest) -> AsyncIterator[Storage]:
    if request.param == "memory":
        yield MemoryStorage()
        return
    url: str = request.getfixturevalue("mongo_url")
    from booking_api.adapters.mongo import MongoStorage

    store = MongoStorage(url, f"test_{uuid.uuid4().hex[:12]}", timeout_ms=10_000)
    try:
        await store.start()
        yield store
    finally:
        await store.database.client.drop_database(store.database.name)
        await store.close()
