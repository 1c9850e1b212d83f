"""POST /api/stream-tickets and the gateways' internal redemption route (issue 10 item 5)."""

from collections.abc import AsyncIterator, Callable

import httpx
import jwt
import pytest
from pydantic import SecretStr

from booking_api.adapters.memory import MemoryStorage
from booking_api.app import create_app
from booking_api.config import Settings
from slotstream_contracts.auth import JwtSettings

INTERNAL = "internal-token-for-tests-0123456789abcdef"
REDEEM = "/internal/stream-tickets/redeem"
AuthHeaders = Callable[..., dict[str, str]]
TokenFactory = Callable[..., str]


def app_client(settings: Settings) -> httpx.AsyncClient:
    app = create_app(settings, storage=MemoryStorage())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://booking")


@pytest.fixture
async def api(jwt_settings: JwtSettings) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(storage="memory", jwt=jwt_settings, internal_token=SecretStr(INTERNAL))
    async with app_client(settings) as client:
        yield client


async def issue(api: httpx.AsyncClient, headers: dict[str, str]) -> str:
    response = await api.post("/api/stream-tickets", headers=headers)
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["expiresIn"] == 30
    assert len(body["ticket"]) >= 43  # 32 random bytes, URL-safe base64
    ticket: str = body["ticket"]
    return ticket


async def redeem(api: httpx.AsyncClient, ticket: str, token: str = INTERNAL) -> httpx.Response:
    return await api.post(REDEEM, json={"ticket": ticket}, headers={"X-Internal-Token": token})


async def test_a_ticket_is_redeemed_once_for_the_tokens_principal(
    api: httpx.AsyncClient, token: TokenFactory
) -> None:
    bearer = token("s1", "student", "Alan")
    ticket = await issue(api, {"Authorization": f"Bearer {bearer}"})
    first = await redeem(api, ticket)
    assert first.status_code == 200
    exp = jwt.decode(bearer, options={"verify_signature": False})["exp"]
    assert first.json() == {"sub": "s1", "role": "student", "name": "Alan", "expiresAt": exp}
    second = await redeem(api, ticket)
    assert second.status_code == 404
    assert second.headers["content-type"] == "application/problem+json"


async def test_issuing_needs_a_valid_bearer_token(api: httpx.AsyncClient) -> None:
    assert (await api.post("/api/stream-tickets")).status_code == 401
    bad = await api.post("/api/stream-tickets", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert bad.headers["content-type"] == "application/problem+json"


async def test_redeeming_needs_the_internal_token(
    api: httpx.AsyncClient, auth: AuthHeaders
) -> None:
    ticket = await issue(api, auth("s1"))
    assert (await redeem(api, ticket, "wrong")).status_code == 403
    no_header = await api.post(REDEEM, json={"ticket": ticket})
    assert no_header.status_code == 403
    assert (await redeem(api, ticket)).status_code == 200  # the refusals did not use it up


async def test_redemption_fails_closed_without_a_configured_internal_token(
    settings: Settings, auth: AuthHeaders
) -> None:
    async with app_client(settings.model_copy(update={"internal_token": None})) as api:
        ticket = await issue(api, auth("s1"))
        for token in ("", "anything"):
            refused = await redeem(api, ticket, token)
            assert refused.status_code == 403
            assert "BOOKING_API_INTERNAL_TOKEN" in refused.json()["detail"]


async def test_the_redeem_route_is_mounted_with_mongo_storage(jwt_settings: JwtSettings) -> None:
    settings = Settings(storage="mongo", jwt=jwt_settings, internal_token=SecretStr(INTERNAL))
    app = create_app(settings)  # not started: no storage open
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://booking") as api:
        assert (await redeem(api, "t", "wrong")).status_code == 403
        assert (await redeem(api, "t")).status_code == 503


async def test_what_the_ticket_route_does_not_read_never_makes_it_a_400(
    api: httpx.AsyncClient, auth: AuthHeaders
) -> None:
    """``POST /api/stream-tickets`` declares no 400 (``TICKET_ERRORS``): it reads neither
    body nor query, so the requests that are a 400 elsewhere ("an unreadable body or
    query") get a ticket, and an unreadable ``Authorization`` is a 401 like any bad token."""
    url = "/api/stream-tickets"
    student = auth("s1")
    json_type = {**student, "Content-Type": "application/json"}
    ignored = {
        "not JSON": await api.post(url, headers=json_type, content=b"{"),
        "not UTF-8": await api.post(url, headers=json_type, content=b"\xff\xfe"),
        "a broken form": await api.post(
            url,
            headers={**student, "Content-Type": "multipart/form-data; boundary=x"},
            content=b"--x\r\nbroken",
        ),
        "a broken query": await api.post(f"{url}?%zz=%ff&ticket", headers=student),
    }
    assert {name: r.status_code for name, r in ignored.items()} == dict.fromkeys(ignored, 201)
    unreadable = await api.post(url, headers={b"Authorization": b"Bearer \xff\xfe"})
    assert unreadable.status_code == 401
    assert unreadable.json()["type"] == "urn:slotstream:problem:unauthenticated"
