"""Issue 10, items 2 and 5: no bearer token in any URL or log; single-use stream tickets;
short-lived demo tokens and no admin token handed out. Black box, through the edge."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import jwt
import pytest
from playwright.sync_api import BrowserContext, expect

from scripts.devstack import DevStack
from tests.security.auth_support import PROBLEM_JSON, bearer, stream_status, ticket_for

pytestmark = pytest.mark.integration

NOTES = "channel=users/student-1/notifications"


def test_a_stream_ticket_opens_one_stream_only(stack: DevStack) -> None:
    ticket = ticket_for(stack, stack.user("student").token)
    status, kind, _ = stream_status(stack, f"{NOTES}&ticket={ticket}")
    assert (status, kind.split(";")[0]) == (200, "text/event-stream")
    again, kind, body = stream_status(stack, f"{NOTES}&ticket={ticket}")
    assert (again, kind) == (401, PROBLEM_JSON), body
    assert b"unknown, used or expired" in body


def test_a_stream_ticket_expires(stack: DevStack) -> None:
    # A ticket never outlives the token it was issued for: a 3-second token shows the
    # expiry without waiting out the 30-second ticket lifetime. Its exp is whole seconds
    # (2-3 s away, time enough to get the ticket through the edge's write limit); the
    # test waits until half a second after it.
    short = stack.mint("student-1", "student", ttl_seconds=3)
    ticket = ticket_for(stack, short)
    expires = jwt.decode(short, options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, expires - time.time()) + 0.5)
    status, kind, _ = stream_status(stack, f"{NOTES}&ticket={ticket}")
    assert (status, kind) == (401, PROBLEM_JSON)


def test_ticket_issuing_needs_a_valid_token(stack: DevStack) -> None:
    url = f"{stack.base_url}/api/stream-tickets"
    assert httpx.post(url, timeout=10).status_code == 401
    forged = httpx.post(url, headers=bearer("not.a.jwt"), timeout=10)
    assert (forged.status_code, forged.headers["content-type"]) == (401, PROBLEM_JSON)


@pytest.mark.parametrize("name", ["access_token", "access%5Ftoken", "access%5ftoken"])
@pytest.mark.parametrize("channel", [NOTES, "channel=instructors/instructor-1/schedule"])
def test_a_token_in_the_url_is_refused(stack: DevStack, name: str, channel: str) -> None:
    token = stack.user("student").token
    status, kind, body = stream_status(stack, f"{channel}&{name}={token}")
    assert status in (400, 401), body
    assert kind == PROBLEM_JSON


def test_the_redeem_route_is_not_reachable_through_the_edge(stack: DevStack) -> None:
    ticket = ticket_for(stack, stack.user("student").token)
    response = httpx.post(
        f"{stack.base_url}/internal/stream-tickets/redeem", json={"ticket": ticket}, timeout=10
    )
    assert response.status_code in (403, 404)
    assert stream_status(stack, f"{NOTES}&ticket={ticket}")[0] == 200  # still unused


def test_demo_users_hold_no_admin_and_only_short_lived_tokens(stack: DevStack) -> None:
    served = httpx.get(f"{stack.base_url}/demo-users.json", timeout=10).json()["users"]
    assert served
    assert {u["role"] for u in served} <= {"student", "instructor"}
    for user in served:
        claims = jwt.decode(user["token"], options={"verify_signature": False})
        assert claims["role"] != "admin"
        assert claims["exp"] - claims["iat"] <= 3600
        assert claims["iss"] == "slotstream-demo"
        assert claims["aud"] == "slotstream"
        assert jwt.get_unverified_header(user["token"])["alg"] == "EdDSA"
    time.sleep(1.1)  # a new iat: the re-minted tokens differ
    stack.write_demo_users()
    again = httpx.get(f"{stack.base_url}/demo-users.json", timeout=10).json()["users"]
    assert [u["id"] for u in again] == [u["id"] for u in served]
    assert all(a["token"] != b["token"] for a, b in zip(again, served, strict=True))


def _log_files(stack: DevStack) -> list[Path]:
    """Every file the stack wrote, except the demo tokens it serves and its key pair."""
    skip = {stack.state_dir / "demo-data", stack.private_key_file.parent}
    return [
        p
        for p in stack.state_dir.rglob("*")
        if p.is_file() and not any(p.is_relative_to(s) for s in skip)
    ]


TICKET_IN_URL = re.compile(r"[?&]ticket=([A-Za-z0-9_-]+)")


@pytest.mark.e2e
def test_no_log_holds_a_token_or_ticket_after_pages_reconnect(
    stack: DevStack, context: BrowserContext
) -> None:
    users = [stack.user("student", 0), stack.user("student", 1), stack.user("instructor", 0)]
    tickets: set[str] = set()
    pages = []
    for n in range(4):
        user = users[n % len(users)]
        page = context.new_page()
        page.on(
            "request",
            lambda request: (
                tickets.update(TICKET_IN_URL.findall(request.url))
                if "/v1/events" in request.url
                else None
            ),
        )
        page.goto(f"{stack.base_url}/?instructor=instructor-1&as={user.id}")
        expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
        pages.append(page)
    opened = len(tickets)
    assert opened == 4

    stack.kill_gateway(1)
    try:
        # The pages on the killed gateway reconnect (fresh tickets) to the other one.
        deadline = time.monotonic() + 20
        while len(tickets) < opened + 1 and time.monotonic() < deadline:
            pages[0].wait_for_timeout(100)
        for page in pages:
            expect(page.locator("#conn-dot")).to_have_attribute(
                "data-status", "open", timeout=20_000
            )
    finally:
        stack.start_gateway(1)
    assert len(tickets) > opened, "no page reconnected"
    for page in pages:
        page.close()

    secrets = {u.token for u in stack.users} | tickets
    secrets |= {t.split(".")[2] for t in (u.token for u in stack.users)}  # signatures too
    found = {
        str(path.relative_to(stack.state_dir))
        for path in _log_files(stack)
        for secret in secrets
        if secret in path.read_text(errors="replace")
    }
    assert found == set()
