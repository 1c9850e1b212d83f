"""Bad input never reaches the store and always gets a problem+json answer."""

from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import httpx
import pytest

from booking_api.adapters.memory import MemoryStorage
from booking_api.app import create_app
from booking_api.config import Settings
from slotstream_contracts.auth import JwtSettings, Role, mint_token

from .test_api_idempotency import setup_slot

AuthHeaders = Callable[..., dict[str, str]]
PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert "title" in body
    assert "type" in body
    return body


async def test_missing_token_is_401_with_a_challenge(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/bookings", json={"slotId": "s1"})
    body = assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in str(body["detail"])


@pytest.mark.parametrize("scheme", ["Basic abc", "Bearer not-a-jwt", "Bearer a.b.c"])
async def test_malformed_tokens_are_401(client: httpx.AsyncClient, scheme: str) -> None:
    response = await client.get("/api/users/me/bookings", headers={"Authorization": scheme})
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_forged_and_expired_tokens_are_401(
    client: httpx.AsyncClient, jwt_settings: JwtSettings
) -> None:
    forged = mint_token(
        JwtSettings.model_validate({"secret": "another-secret-0123456789-abcdefghijkl"}),
        "s1",
        Role.STUDENT,
    )
    expired = mint_token(jwt_settings, "s1", Role.STUDENT, ttl=timedelta(minutes=-5))
    for token in (forged, expired):
        response = await client.get(
            "/api/users/me/bookings", headers={"Authorization": f"Bearer {token}"}
        )
        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"slotId": "s1", "extra": 1}, "body.extra: Extra inputs are not permitted"),
        ({"slot_id": "s1"}, "body.slotId: Field required"),
        ({"slotId": "s1", "$where": "1"}, "may not start with '$'"),
        ({"slotId": {"$ne": None}}, "may not start with '$'"),
        ({"slotId": "s1", "a.b": 1}, "contain '.'"),
        ({"slotId": "../../etc"}, "body.slotId: String should match pattern"),
        ({"slotId": "x" * 65}, "body.slotId"),
        ([1, 2], "body"),
    ],
)
async def test_bad_bodies_are_422(
    client: httpx.AsyncClient,
    auth: AuthHeaders,
    memory_storage: MemoryStorage,
    body: object,
    detail: str,
) -> None:
    response = await client.post("/api/bookings", json=body, headers=auth("s1"))
    problem = assert_problem(response, 422)
    assert detail in str(problem["detail"])
    assert memory_storage.changelog.read_after(None) == []


async def test_invalid_json_and_long_strings(client: httpx.AsyncClient, auth: AuthHeaders) -> None:
    broken = await client.post(
        "/api/bookings",
        content=b'{"slotId": ',
        headers={**auth("s1"), "content-type": "application/json"},
    )
    assert "not valid JSON" in str(assert_problem(broken, 422)["detail"])
    long_name = await client.post(
        "/api/instructors", json={"name": "A" * 121}, headers=auth("i1", "instructor")
    )
    assert "at most 120 characters" in str(assert_problem(long_name, 422)["detail"])
    bad_zone = await client.post(
        "/api/instructors",
        json={"name": "Ada", "timezone": "Mars/Olympus"},
        headers=auth("i1", "instructor"),
    )
    assert "unknown IANA time zone" in str(assert_problem(bad_zone, 422)["detail"])


async def test_bad_path_ids_are_422(client: httpx.AsyncClient, auth: AuthHeaders) -> None:
    response = await client.delete("/api/slots/a$b", headers=auth("root", "admin"))
    assert "path.slot_id" in str(assert_problem(response, 422)["detail"])


async def test_large_bodies_are_413(client: httpx.AsyncClient, auth: AuthHeaders) -> None:
    big = b'{"name": "' + b"a" * 70_000 + b'"}'
    declared = await client.post(
        "/api/instructors",
        content=big,
        headers={**auth("i1", "instructor"), "content-type": "application/json"},
    )
    assert_problem(declared, 413)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"a" * 10_000

    streamed = await client.post(
        "/api/instructors",
        content=chunks(),
        headers={**auth("i1", "instructor"), "content-type": "application/json"},
    )
    assert_problem(streamed, 413)


async def test_a_streamed_body_over_the_limit_changes_nothing(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Callable[..., str]
) -> None:
    """A valid booking followed by padding past the limit, with no Content-Length: the
    answer is 413, so the booking must not be made either (the client would retry it)."""
    slot_id = await setup_slot(client, auth, future)

    async def booking_then_padding() -> AsyncIterator[bytes]:
        yield b'{"slotId": "' + slot_id.encode() + b'"}'
        yield b" " * 70_000

    answer = await client.post(
        "/api/bookings",
        content=booking_then_padding(),
        headers={**auth("s1"), "content-type": "application/json"},
    )
    assert_problem(answer, 413)
    assert answer.headers["cache-control"] == "no-store"
    assert (await client.get("/api/users/me/bookings", headers=auth("s1"))).json() == []
    schedule = await client.get("/api/instructors/i1/schedule")
    assert [slot["status"] for slot in schedule.json()["slots"]] == ["available"]


@pytest.mark.parametrize(
    "query",
    [
        "to=0001-01-01T00:00:00%2B00:00",
        "from=9999-12-31T00:00:00%2B00:00",
        "from=0001-01-01T00:30:00%2B01:00",
    ],
)
async def test_schedule_windows_past_the_calendar_are_422(
    client: httpx.AsyncClient, auth: AuthHeaders, query: str
) -> None:
    """A window whose other end (or UTC form) would fall outside years 1-9999: a rule the
    caller broke, not a server error (the route is public)."""
    await client.post("/api/instructors", json={"name": "Ada"}, headers=auth("i1", "instructor"))
    answer = await client.get(f"/api/instructors/i1/schedule?{query}")
    assert "outside the calendar" in str(assert_problem(answer, 422)["detail"])


async def test_every_422_has_one_problem_type(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Callable[..., str]
) -> None:
    """A client keys on ``type``: a body the schema refuses and a request the domain rules
    refuse (a slot that ends before it starts) are one condition, one type."""
    by_schema = await client.post("/api/bookings", json={}, headers=auth("s1"))
    by_rule = await client.post(
        "/api/instructors/i1/slots",
        json={"start": future(hours=3), "end": future(hours=2)},
        headers=auth("i1", "instructor"),
    )
    types = {assert_problem(answer, 422)["type"] for answer in (by_schema, by_rule)}
    assert types == {"urn:slotstream:problem:invalid-request"}


async def test_slot_times_past_the_calendar_are_422(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Callable[..., str]
) -> None:
    slot_id = await setup_slot(client, auth, future)
    instructor = auth("i1", "instructor")
    ancient = await client.post(
        "/api/instructors/i1/slots",
        json={"start": "0001-01-01T00:30:00+01:00", "end": "0001-01-01T01:30:00+01:00"},
        headers=instructor,
    )
    assert_problem(ancient, 422)
    moved = await client.patch(
        f"/api/slots/{slot_id}",
        json={"start": "9999-12-31T23:30:00+00:00"},
        headers={**instructor, "If-Match": "*"},
    )
    assert_problem(moved, 422)


async def test_an_if_match_of_other_digits_is_412(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Callable[..., str]
) -> None:
    """``"²"`` is a digit to ``str.isdigit`` but not to ``int``: still just not an ETag."""
    slot_id = await setup_slot(client, auth, future)
    instructor = auth("i1", "instructor")
    moved = await client.patch(
        f"/api/slots/{slot_id}",
        content=b'{"start": "' + future(days=3).encode() + b'"}',
        headers=[
            (b"authorization", instructor["Authorization"].encode()),
            (b"content-type", b"application/json"),
            (b"if-match", '"\xb2"'.encode("latin-1")),
        ],
    )
    assert_problem(moved, 412)


async def test_unknown_routes_and_methods(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/nothing-here")
    assert assert_problem(missing, 404)["detail"] == "no resource at /api/nothing-here"
    wrong = await client.put("/api/instructors")
    assert assert_problem(wrong, 405)["detail"] == "PUT is not allowed on /api/instructors"
    assert "GET" in wrong.headers["allow"]


async def test_request_ids_are_echoed_or_made(client: httpx.AsyncClient) -> None:
    given = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert made.headers["x-request-id"] != "bad id\twith spaces"
    assert len(made.headers["x-request-id"]) == 32


async def test_ops_endpoints(client: httpx.AsyncClient, auth: AuthHeaders) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready", "storage": "memory"}
    await client.post("/api/bookings", json={"slotId": "nope"}, headers=auth("s1"))
    metrics = (await client.get("/metrics")).text
    assert (
        'booking_api_http_requests_total{method="POST",route="/api/bookings",status="404"} 1.0'
        in metrics
    )
    assert "booking_api_http_request_duration_seconds_bucket" in metrics
    assert "booking_api_bookings_created_total 0.0" in metrics
    docs = await client.get("/api/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    spec = (await client.get("/api/openapi.json")).json()
    assert "/api/bookings" in spec["paths"]
    assert "/internal/changes" not in spec["paths"]


async def test_a_request_before_storage_is_open_is_503_with_retry_after(
    settings: Settings, auth: AuthHeaders
) -> None:
    app = create_app(settings, storage=MemoryStorage())
    app.state.parts.runtime = None  # as between the process's start and storage opening
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://booking") as client:
        for answer in (
            await client.post("/api/bookings", json={"slotId": "s1"}, headers=auth("s1")),
            await client.post("/api/stream-tickets", json={}, headers=auth("s1")),
        ):
            assert_problem(answer, 503)
            assert answer.headers["retry-after"] == "1"
