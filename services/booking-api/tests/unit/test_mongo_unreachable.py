"""Without a database the Mongo backend fails fast and says so (no real MongoDB needed)."""

import httpx

from booking_api.adapters.mongo import MongoStorage
from booking_api.app import create_app
from booking_api.config import Settings
from slotstream_testkit.net import free_port


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
