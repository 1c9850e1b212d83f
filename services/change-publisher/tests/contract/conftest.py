"""The change-source contract runs once per binding: the in-memory fake always, a real
MongoDB replica set where there is one (``MONGO_URL`` or Docker), so the fake cannot drift
from what Mongo really does."""

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pytest

from change_publisher.adapters.memory import MemoryChangeSource, MemoryDatabase
from change_publisher.ports import ChangeSource
from slotstream_contracts.documents import BOOKINGS, NOTIFICATIONS, SLOTS

WATCHED = (SLOTS, BOOKINGS, NOTIFICATIONS)

Document = dict[str, Any]
#: (collection, document) inserts done as one transaction
Inserts = Sequence[tuple[str, Document]]


class Writer(Protocol):
    async def insert(self, collection: str, document: Document) -> None: ...

    async def update(self, collection: str, document_id: str, fields: Document) -> None:
        """Set ``fields`` and raise ``version`` by one, as the API does."""
        ...

    async def delete(self, collection: str, document_id: str) -> None: ...

    async def insert_in_transaction(self, inserts: Inserts) -> None: ...

    async def drop_database(self) -> None: ...

    async def drop_collection(self, collection: str) -> None: ...

    async def rename_collection(self, collection: str, to: str) -> None:
        """Rename ``collection`` to ``to``, replacing ``to`` if it exists (``dropTarget``)."""
        ...


@dataclass
class Binding:
    source: ChangeSource
    writer: Writer


class MemoryWriter:
    def __init__(self, database: MemoryDatabase) -> None:
        self.database = database

    async def insert(self, collection: str, document: Document) -> None:
        self.database.insert(collection, document)

    async def update(self, collection: str, document_id: str, fields: Document) -> None:
        self.database.update(collection, document_id, fields)

    async def delete(self, collection: str, document_id: str) -> None:
        self.database.delete(collection, document_id)

    async def insert_in_transaction(self, inserts: Inserts) -> None:
        with self.database.transaction():
            for collection, document in inserts:
                self.database.insert(collection, document)

    async def drop_database(self) -> None:
        self.database.drop()

    async def drop_collection(self, collection: str) -> None:
        self.database.drop_collection(collection)

    async def rename_collection(self, collection: str, to: str) -> None:
        self.database.rename_collection(collection, to)


class MongoWriter:
    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.database = client[name]

    async def insert(self, collection: str, document: Document) -> None:
        await self.database[collection].insert_one(document)

    async def update(self, collection: str, document_id: str, fields: Document) -> None:
        await self.database[collection].update_one(
            {"_id": document_id}, {"$set": fields, "$inc": {"version": 1}}
        )

    async def delete(self, collection: str, document_id: str) -> None:
        await self.database[collection].delete_one({"_id": document_id})

    async def insert_in_transaction(self, inserts: Inserts) -> None:
        async with self.client.start_session() as session, await session.start_transaction():
            for collection, document in inserts:
                await self.database[collection].insert_one(document, session=session)

    async def drop_database(self) -> None:
        await self.client.drop_database(self.database.name)

    async def drop_collection(self, collection: str) -> None:
        await self.database.drop_collection(collection)

    async def rename_collection(self, collection: str, to: str) -> None:
        await self.database[collection].rename(to, dropTarget=True)


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.mongo)])
async def binding(request: pytest.FixtureRequest) -> AsyncIterator[Binding]:
    if request.param == "memory":
        database = MemoryDatabase()
        yield Binding(
            MemoryChangeSource(database, wait=0.05, collections=WATCHED), MemoryWriter(database)
        )
        return
    url: str = request.getfixturevalue("mongo_url")
    from pymongo import AsyncMongoClient

    from change_publisher.adapters.mongo import MongoChangeSource

    client: AsyncMongoClient[Document] = AsyncMongoClient(url, tz_aware=True)
    name = f"contract_{uuid.uuid4().hex[:8]}"
    for collection in WATCHED:
        await client[name].create_collection(collection)
    try:
        yield Binding(
            MongoChangeSource(client, name, WATCHED, max_await_ms=100), MongoWriter(client, name)
        )
    finally:
        await client.drop_database(name)
        await client.close()
