"""MongoDB not reachable when the publisher starts (it may come up after it): the lease
store's failure must say where and why, not only that the publisher's wait ran out."""

import asyncio

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from change_publisher.adapters.mongo import Document, MongoLeaseStore
from slotstream_testkit.net import free_port

TTL = 6.0


async def test_a_lease_store_that_cannot_connect_names_the_address_and_the_error() -> None:
    port = free_port()  # nothing listens there
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        f"mongodb://127.0.0.1:{port}/?directConnection=true"
    )
    try:
        store = MongoLeaseStore(client["slotstream"])
        # the publisher waits for a lease answer at most half the lease's lifetime
        with pytest.raises(PyMongoError, match=rf"127\.0\.0\.1:{port}: \[Errno 111\]"):
            await asyncio.wait_for(store.acquire("stream", "me", TTL), TTL / 2)
    finally:
        await client.close()
