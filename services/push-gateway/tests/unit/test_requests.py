from datetime import timedelta
from urllib.parse import parse_qs

import hypothesis
import jwt
import pytest
from hypothesis import strategies as st
from pydantic import SecretStr

from push_gateway.domain.requests import (
    EVENTS_PATH,
    MAX_QUERY_FIELDS,
    PAGE_PATH,
    Problem,
    StreamRequest,
    parse_query,
    parse_stream_request,
)
from slotstream_contracts.auth import JwtSettings, Role, mint_token
from slotstream_contracts.channels import Channel

JWT = JwtSettings(secret=SecretStr("requests-secret-8d3f0a6c1e9b4d7f2a5c0e3b"))


def parse(path: str, query: str, headers: list[tuple[bytes, bytes]] | None = None) -> StreamRequest:
    return parse_stream_request(path, query.encode(), headers or [], JWT, max_channels=3)


def problem_of(path: str, query: str, headers: list[tuple[bytes, bytes]] | None = None) -> Problem:
    with pytest.raises(Problem) as caught:
        parse(path, query, headers)
    return caught.value


def test_page_endpoint_subscribes_to_the_instructors_schedule() -> None:
    request = parse(PAGE_PATH, "instructorId=i1")
    assert request.channels == (Channel.schedule("i1"),)
    assert request.resume_from is None


def test_several_channels_on_one_connection_deduplicated() -> None:
    request = parse(
        EVENTS_PATH,
        "channel=instructors/a/schedule&channel=instructors/b/schedule"
        "&channel=instructors/a/schedule",
    )
    assert request.channels == (Channel.schedule("a"), Channel.schedule("b"))


@pytest.mark.parametrize(
    ("path", "query"),
    [
        (PAGE_PATH, ""),
        (PAGE_PATH, "instructorId=bad$id"),
        (PAGE_PATH, "instructorId=a&instructorId=b"),
        (EVENTS_PATH, ""),
        (EVENTS_PATH, "channel=instructors/a/notifications"),
        (EVENTS_PATH, "channel=rooms/a/schedule"),
        (
            EVENTS_PATH,
            "channel=" + "&channel=".join(f"instructors/i{n}/schedule" for n in range(4)),
        ),
        (EVENTS_PATH, "channel=instructors/a/schedule&lastEventId=garbage"),
    ],
)
def test_malformed_requests_are_400(path: str, query: str) -> None:
    problem = problem_of(path, query)
    assert problem.status == 400
    assert problem.detail


def test_last_event_id_header_wins_over_query() -> None:
    request = parse(PAGE_PATH, "instructorId=i1&lastEventId=s0:1", [(b"last-event-id", b"s0:9")])
    assert request.resume_from == {("s", 0): 9}
    assert parse(PAGE_PATH, "instructorId=i1&lastEventId=s0:1").resume_from == {("s", 0): 1}


def token(user: str, role: Role = Role.STUDENT, ttl: timedelta = timedelta(hours=1)) -> str:
    return mint_token(JWT, user, role, ttl=ttl)


NOTES = "channel=users/u1/notifications"


def test_private_channel_without_token_is_401() -> None:
    problem = problem_of(EVENTS_PATH, NOTES)
    assert problem.status == 401
    assert ("www-authenticate", 'Bearer realm="slotstream"') in problem.headers


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-jwt",
        mint_token(
            JwtSettings(secret=SecretStr("another-secret-1b6e4a9d0c7f3e2b8a5d6c1f")),
            "u1",
            Role.STUDENT,
        ),
    ],
)
def test_private_channel_with_bad_token_is_401(bad: str) -> None:
    assert (
        problem_of(EVENTS_PATH, NOTES, [(b"authorization", f"Bearer {bad}".encode())]).status == 401
    )


def bearer(value: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {value}".encode())]


def test_expired_token_is_401() -> None:
    expired = token("u1", ttl=timedelta(minutes=-5))
    assert problem_of(EVENTS_PATH, NOTES, bearer(expired)).status == 401


def test_a_private_stream_ends_when_its_token_does() -> None:
    """The stream's deadline is the token's ``exp`` plus the leeway the connect check allows,
    so the gateway never accepts a token it would cut off at once."""
    own = token("u1", ttl=timedelta(minutes=30))
    exp = jwt.decode(own, options={"verify_signature": False})["exp"]
    request = parse(EVENTS_PATH, NOTES, bearer(own))
    assert request.token_expires_at == exp + JWT.leeway_seconds
    assert parse(EVENTS_PATH, "channel=instructors/a/schedule").token_expires_at is None


def test_other_users_channel_is_403() -> None:
    headers = [(b"authorization", f"Bearer {token('u2')}".encode())]
    assert problem_of(EVENTS_PATH, NOTES, headers).status == 403


@pytest.mark.parametrize("role", [Role.STUDENT, Role.ADMIN])
def test_own_channel_with_a_bearer_header(role: Role) -> None:
    request = parse(EVENTS_PATH, NOTES, bearer(token("u1" if role is Role.STUDENT else "a", role)))
    assert request.channels == (Channel.notifications("u1"),)
    assert request.principal is not None
    assert request.ticket is None


@pytest.mark.parametrize("name", ["access_token", "access%5Ftoken", "access%5ftoken"])
@pytest.mark.parametrize("channel", [NOTES, "channel=instructors/a/schedule"])
def test_a_token_in_the_url_is_refused_even_for_public_channels(name: str, channel: str) -> None:
    problem = problem_of(EVENTS_PATH, f"{channel}&{name}={token('u1')}")
    assert problem.status == 400
    assert "access_token is not accepted" in problem.detail


def test_a_token_in_a_cookie_is_not_accepted() -> None:
    cookie = [(b"cookie", f"theme=dark; access_token={token('u1')}".encode())]
    assert problem_of(EVENTS_PATH, NOTES, cookie).status == 401


def test_a_ticket_is_kept_for_redemption_by_the_gateway() -> None:
    request = parse(EVENTS_PATH, f"{NOTES}&ticket={'T' * 43}")
    assert (request.ticket, request.principal, request.token_expires_at) == ("T" * 43, None, None)
    # public channels need nothing: a ticket there is ignored, not redeemed
    assert parse(EVENTS_PATH, f"channel=instructors/a/schedule&ticket={'T' * 43}").ticket is None


@pytest.mark.parametrize("query", [f"ticket={'T' * 43}&ticket={'U' * 43}", "ticket=a.b", "ticket="])
def test_malformed_tickets_are_401(query: str) -> None:
    assert problem_of(EVENTS_PATH, f"{NOTES}&{query}").status == 401


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.text(alphabet="ab=&;%+é 2\x00", max_size=40))
def test_the_query_fast_path_reads_as_parse_qs(text: str) -> None:
    try:
        expected: dict[str, list[str]] | str = parse_qs(
            text, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS
        )
    except ValueError as exc:
        expected = str(exc)
    try:
        found: dict[str, list[str]] | str = parse_query(text)
    except ValueError as exc:
        found = str(exc)
    assert found == expected


def test_too_many_query_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="Max number of fields"):
        parse_query("&".join(["a=1"] * (MAX_QUERY_FIELDS + 1)))
    assert parse_query("&".join(["a=1"] * MAX_QUERY_FIELDS)) == {"a": ["1"] * MAX_QUERY_FIELDS}
