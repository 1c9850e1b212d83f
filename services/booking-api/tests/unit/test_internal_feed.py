"""The memory backend's change feed (``/internal/*``), as the change-publisher reads it."""

import asyncio
from collections.abc import Callable

import httpx
import pytest
from pydantic import SecretStr

from booking_api.adapters.memory import MemoryStorage
from booking_api.app import create_app
from booking_api.config import Settings
from slotstream_contracts.changes import ChangeEvent
from slotstream_contracts.documents import SlotDocument

from ..conftest import INTERNAL_TOKEN

AuthHeaders = Callable[..., dict[str, str]]
Future = Callable[..., str]


async def add_slot(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, days: int = 1
) -> None:
    await client.post("/api/instructors", json={"name": "Ada"}, headers=auth("i1", "instructor"))
    await client.post(
        "/api/instructors/i1/slots",
        json={"start": future(days), "end": future(days, hours=1)},
        headers=auth("i1", "instructor"),
    )


async def test_changes_page_and_resume(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    await add_slot(client, auth, future)
    page = (await client.get("/internal/changes", params={"limit": 1})).json()
    [first] = [ChangeEvent.model_validate(c) for c in page["changes"]]
    assert first.ns.coll == "instructors"
    assert page["postBatchResumeToken"] == first.token
    rest = (await client.get("/internal/changes", params={"after": first.token_data})).json()
    [second] = [ChangeEvent.model_validate(c) for c in rest["changes"]]
    assert second.operation_type == "insert"
    assert second.full_document is not None
    assert SlotDocument.model_validate(second.full_document).instructor_id == "i1"
    empty = (await client.get("/internal/changes", params={"after": second.token_data})).json()
    assert empty == {"changes": [], "postBatchResumeToken": second.token}


async def test_long_poll_returns_when_a_change_arrives(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    latest = (await client.get("/internal/changes")).json()["postBatchResumeToken"]["_data"]
    waiting = asyncio.create_task(
        client.get("/internal/changes", params={"after": latest, "wait": 10})
    )
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await add_slot(client, auth, future)
    changes = (await asyncio.wait_for(waiting, 5)).json()["changes"]
    assert changes[0]["ns"]["coll"] == "instructors"


async def test_bad_tokens(client: httpx.AsyncClient) -> None:
    foreign = await client.get("/internal/changes", params={"after": "zz-not-ours"})
    assert foreign.status_code == 400
    assert foreign.headers["content-type"] == "application/problem+json"
    future_token = await client.get("/internal/changes", params={"after": "00000000000000FF"})
    assert future_token.status_code == 400
    too_many = await client.get("/internal/changes", params={"limit": 1001})
    assert too_many.status_code == 422


async def test_lost_history_is_410(settings: Settings, auth: AuthHeaders, future: Future) -> None:
    store = MemoryStorage(retain_changes=1)
    app = create_app(settings, storage=store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://booking",
        headers={"X-Internal-Token": INTERNAL_TOKEN},
    ) as client:
        start = (await client.get("/internal/changes")).json()["postBatchResumeToken"]
        await add_slot(client, auth, future)
        lost = await client.get("/internal/changes", params={"after": start["_data"]})
        assert lost.status_code == 410
        assert "older than the history" in lost.json()["detail"]


async def test_a_token_from_before_a_restart_is_410(
    settings: Settings, auth: AuthHeaders, future: Future
) -> None:
    """A restart starts a new change log: a publisher resuming there with the old run's
    token must hear that the history is lost, even when the new log already has more
    changes than the old one had."""
    before = MemoryStorage()
    async with _internal_client(settings, before) as client:
        await add_slot(client, auth, future)
        checkpoint = (await client.get("/internal/changes")).json()["postBatchResumeToken"]
    async with _internal_client(settings, MemoryStorage()) as client:  # the restart
        for days in (1, 2, 3):
            await add_slot(client, auth, future, days)
        lost = await client.get("/internal/changes", params={"after": checkpoint["_data"]})
        assert lost.status_code == 410, lost.text
        assert lost.json()["type"].endswith("change-history-lost")


def _internal_client(settings: Settings, store: MemoryStorage) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(settings, storage=store)),
        base_url="http://booking",
        headers={"X-Internal-Token": INTERNAL_TOKEN},
    )


async def test_snapshot_then_stream_from_its_time(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    await add_slot(client, auth, future)
    snapshot = (await client.get("/internal/snapshot", params={"collection": "slots"})).json()
    [slot] = [SlotDocument.model_validate(d) for d in snapshot["documents"]]
    at = snapshot["operationTime"]
    await client.delete(f"/api/slots/{slot.id}", headers=auth("i1", "instructor"))
    since = (
        await client.get("/internal/changes", params={"atOperationTime": f"{at['t']}.{at['i']}"})
    ).json()["changes"]
    assert since[-1]["operationType"] == "update"
    assert since[-1]["fullDocument"]["status"] == "deleted"
    unknown = await client.get("/internal/snapshot", params={"collection": "users"})
    assert unknown.status_code == 400


async def test_internal_token_guard(settings: Settings, memory_storage: MemoryStorage) -> None:
    guarded = settings.model_copy(update={"internal_token": SecretStr("inside-only" * 4)})
    app = create_app(guarded, storage=memory_storage)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://booking"
    ) as client:
        assert (await client.get("/internal/changes")).status_code == 403
        wrong = await client.get("/internal/changes", headers={"X-Internal-Token": "nope"})
        assert wrong.status_code == 403
        right = await client.get(
            "/internal/changes", headers={"X-Internal-Token": "inside-only" * 4}
        )
        assert right.status_code == 200


async def test_not_mounted_on_mongo(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"storage": "mongo"}))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://booking"
    ) as client:
        assert (await client.get("/internal/changes")).status_code == 404


@pytest.mark.parametrize("token", [None, ""])
async def test_internal_routes_fail_closed_without_a_token(
    settings: Settings, memory_storage: MemoryStorage, token: str | None
) -> None:
    """Issue 10, item 7: no token configured means no access, not open access."""
    unset = settings.model_copy(
        update={"internal_token": None if token is None else SecretStr(token)}
    )
    app = create_app(unset, storage=memory_storage)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://booking"
    ) as client:
        for headers in ({}, {"X-Internal-Token": ""}):
            for path in ("/internal/changes", "/internal/snapshot?collection=slots"):
                refused = await client.get(path, headers=headers)
                assert refused.status_code == 403, refused.text
                assert refused.headers["content-type"] == "application/problem+json"
                assert "BOOKING_API_INTERNAL_TOKEN" in refused.json()["detail"]


@pytest.mark.parametrize("token", [None, "short-token"])
def test_memory_backend_refuses_a_public_bind_without_a_strong_token(
    monkeypatch: pytest.MonkeyPatch, token: str | None
) -> None:
    monkeypatch.setenv("BOOKING_API_STORAGE", "memory")
    monkeypatch.setenv("BOOKING_API_JWT__SECRET", "s3cret-0123456789-abcdefghijklmnopqrstuvwxyz")
    monkeypatch.setenv("BOOKING_API_HOST", "0.0.0.0")
    if token is not None:
        monkeypatch.setenv("BOOKING_API_INTERNAL_TOKEN", token)
    with pytest.raises(ValueError, match="BOOKING_API_INTERNAL_TOKEN"):
        Settings()
    monkeypatch.setenv("BOOKING_API_INTERNAL_TOKEN", "x" * 8 + "0123456789abcdefghijklmnop")
    assert Settings().host == "0.0.0.0"
    monkeypatch.delenv("BOOKING_API_INTERNAL_TOKEN")
    for loopback in ("127.0.0.1", "::1", "localhost"):
        monkeypatch.setenv("BOOKING_API_HOST", loopback)
        assert Settings().internal_token is None
