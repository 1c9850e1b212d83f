"""Without a database the Mongo backend fails fast and says so (no real MongoDB needed)."""

from collections.abc import Callable
from typing import Final

import httpx

from booking_api.adapters.mongo import MongoStorage
from booking_api.app import create_app
from booking_api.config import Settings
from slotstream_testkit.net import free_port

#: the problem types of a 503 (README, "Errors"): the store not open yet (nothing done),
#: and an operation the store failed (the request may have been carried out in part)
STARTING: Final = "urn:slotstream:problem:starting"
STORAGE_UNAVAILABLE: Final = "urn:slotstream:problem:storage-unavailable"


async def test_readyz_is_503_when_mongo_does_not_answer(settings: Settings) -> None:
    store = MongoStorage(f"mongodb://127.0.0.1:{free_port()}/", "slotstream", timeout_ms=200)
    try:
        assert await store.ping() is False
        app = create_app(settings.model_copy(update={"storage": "mongo"}), storage=store)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://booking") as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.headers["content-type"] == "application/problem+json"
            assert ready.json()["detail"] == "storage unreachable"
            assert (await client.get("/healthz")).status_code == 200
            listing = await client.get("/api/instructors")
            assert listing.status_code == 503
            assert listing.headers["retry-after"] == "1"
            assert "storage unavailable" in listing.json()["detail"]
            assert (await client.get("/internal/changes")).status_code == 404
    finally:
        await store.close()


async def test_storage_not_open_and_storage_failing_have_one_type_each_on_every_path(
    settings: Settings, auth: Callable[..., dict[str, str]]
) -> None:
    """Clients key on ``type``: a store not open yet (the start has not opened it: nothing
    was done) and a store that fails an operation (the driver's error: maybe done in part,
    asked again with the same key) are two conditions, one type each on every path."""
    mongo = settings.model_copy(update={"storage": "mongo"})
    # no lifespan: the start never opens the store, as while MongoDB does not answer yet
    starting = create_app(mongo)
    store = MongoStorage(f"mongodb://127.0.0.1:{free_port()}/", "slotstream", timeout_ms=200)
    failing = create_app(mongo, storage=store)
    answers: list[httpx.Response] = []
    try:
        for app in (starting, failing):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
                answers.append(await client.get("/api/instructors"))
                answers.append(
                    await client.post("/api/stream-tickets", headers=auth("s1", "student"))
                )
    finally:
        await store.close()
    assert [a.status_code for a in answers] == [503] * 4, [a.text for a in answers]
    assert all(a.headers["retry-after"] for a in answers)
    types = [a.json()["type"] for a in answers]
    assert types == [STARTING] * 2 + [STORAGE_UNAVAILABLE] * 2, types
