"""Black-box checks of the edge's response headers, access rules and logs (issue 10,
items 2, 5 and 10), through the nginx edge of the demo stack on 127.0.0.1.

127.0.0.2 is a loopback address too, but the edge trusts only 127.0.0.1 and ::1 with
the demo tokens, so a client bound to 127.0.0.2 stands for "anyone else".
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from scripts.devstack import BIN, DevStack

pytestmark = pytest.mark.integration

WEB = Path(__file__).resolve().parents[2] / "web"
TIMEOUT = httpx.Timeout(10.0)


def stream_paths(stack: DevStack) -> list[str]:
    instructor = stack.user("instructor").id
    return [
        f"/api/book-now/schedule-updates?instructorId={instructor}",
        f"/v1/events?channel=instructors/{instructor}/schedule",
    ]


@asynccontextmanager
async def client(stack: DevStack, source: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(
        base_url=stack.base_url, transport=transport, timeout=TIMEOUT
    ) as http:
        yield http


async def headers_of(http: httpx.AsyncClient, path: str) -> tuple[int, httpx.Headers]:
    """Status and headers only: a stream is closed as soon as its headers arrived."""
    async with http.stream("GET", path) as response:
        return response.status_code, response.headers


def assert_security_headers(path: str, headers: httpx.Headers) -> None:
    csp = headers.get("content-security-policy", "")
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives.get("frame-ancestors") == ["'none'"], (path, csp)
    script = directives.get("script-src", directives.get("default-src"))
    assert script is not None, (path, csp)
    assert not {"'unsafe-inline'", "'unsafe-eval'", "*", "data:"} & set(script), (path, csp)
    assert directives.get("object-src") == ["'none'"], (path, csp)
    assert headers.get("referrer-policy") in {"no-referrer", "same-origin"}, path
    assert headers.get_list("x-content-type-options") == ["nosniff"], path
    # Plain HTTP: HSTS belongs to the TLS server only.
    assert "strict-transport-security" not in headers, path


async def test_every_answer_carries_the_security_headers(stack: DevStack) -> None:
    student = stack.user("student")
    async with client(stack) as http:
        paths = ["/", "/index.html", "/app.js", "/styles.css", "/demo-users.json"]
        paths += ["/api/instructors", "/no-such-file", *stream_paths(stack)]
        for path in paths:
            status, headers = await headers_of(http, path)
            assert status in {200, 404}, (path, status)
            assert_security_headers(path, headers)
        me = await http.get(
            "/api/users/me/bookings", headers={"Authorization": f"Bearer {student.token}"}
        )
        assert me.status_code == 200, me.text
        assert_security_headers("/api/users/me/bookings", me.headers)


async def test_private_api_answers_are_not_stored(stack: DevStack) -> None:
    student = stack.user("student")
    async with client(stack) as http:
        for path in ("/api/users/me/bookings", "/api/users/me/notifications"):
            response = await http.get(path, headers={"Authorization": f"Bearer {student.token}"})
            assert response.status_code == 200, (path, response.text)
            assert "no-store" in response.headers.get("cache-control", ""), path
        assert "no-store" in (await http.get("/demo-users.json")).headers["cache-control"]


async def test_demo_users_only_for_the_edges_own_host(stack: DevStack) -> None:
    async with client(stack) as local:
        assert (await local.get("/demo-users.json")).status_code == 200
    async with client(stack, source="127.0.0.2") as other:
        denied = await other.get("/demo-users.json")
        assert denied.status_code == 403
        assert "token" not in denied.text
        assert (await other.get("/")).status_code == 200, "only the demo tokens are local"


class InlineCode(HTMLParser):
    """Collects what a no-'unsafe-inline' CSP would block in an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.found.append("<script> without src")
        if tag == "style":
            self.found.append("<style> element")
        self.found += [f"{tag} {n}=" for n in names if n.startswith("on") or n == "style"]
        self.found += [
            f"{tag} {n}=javascript:" for n, v in attrs if v and v.lower().startswith("javascript:")
        ]


def test_the_page_has_no_inline_script_or_style() -> None:
    for page in sorted(WEB.glob("*.html")):
        parser = InlineCode()
        parser.feed(page.read_text())
        assert parser.found == [], (page.name, parser.found)
    for script in sorted(WEB.glob("*.js")):
        text = script.read_text()
        for pattern in (r"\beval\(", r"new Function\(", r"\.innerHTML\s*=", r"setAttribute\(\"on"):
            assert not re.search(pattern, text), (script.name, pattern)


async def test_no_query_string_reaches_a_log(stack: DevStack) -> None:
    secrets = {
        "ticket": "TICKETSECRETaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "access_token": "JWTSECRETbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        "access%5Ftoken": "ESCAPEDSECRETccccccccccccccccccccccccccccc",
    }
    instructor = stack.user("instructor").id
    async with client(stack) as http:
        for name, value in secrets.items():
            for path in (
                f"/v1/events?channel=instructors/{instructor}/schedule&{name}={value}",
                f"/api/book-now/schedule-updates?instructorId={instructor}&{name}={value}",
                f"/v1/events?channel=users/nobody/notifications&{name}={value}",
                f"/api/instructors?{name}={value}",
                f"/missing.js?{name}={value}",
            ):
                await headers_of(http, path)
    edge = stack.state_dir / "edge"
    logs = [*stack.logs.glob("*.log"), *(edge / "logs").glob("*")]
    assert any(p.name == "edge.log" for p in logs)
    for log in logs:
        text = log.read_text(errors="replace")
        for value in secrets.values():
            assert value not in text, f"{value[:12]}… is in {log}"


INJECTED = 'Mallory\n\nevent: notification\ndata: {"injected": true}\n\nid: s9:999\n\n'
SSE_FIELDS = ("id: ", "event: ", "data: ", "retry: ", ":")


def mint(stack: DevStack, sub: str, role: str, name: str) -> str:
    """A short-lived token signed with the demo's own key: ``DevStack.mint`` where the
    stack has one (asymmetric keys, issue 10 item 6), else ``slotstream-token`` with the
    booking-api's HS256 settings."""
    minter = getattr(stack, "mint", None)
    if minter is not None:
        return str(minter(sub, role, name, 300))
    result = subprocess.run(
        [str(BIN / "slotstream-token"), "--sub", sub, "--role", role, "--name", name,
         "--ttl-hours", "0.1"],
        env=stack.processes["booking-api"].env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout.strip()


def frames_of(raw: str) -> list[list[str]]:
    return [block.split("\n") for block in raw.split("\n\n") if block.strip()]


async def test_a_display_name_cannot_start_a_new_sse_frame(stack: DevStack) -> None:
    """A student whose JWT name carries a blank line and SSE fields books an instructor's
    slot: the instructor's notification stream gets well-formed frames only (the name is
    escaped inside the JSON, or normalised, or the booking refused)."""
    instructor = stack.user("instructor")
    token = mint(stack, "student-mallory", "student", INJECTED)
    channel = f"users/{instructor.id}/notifications"
    raw = ""
    async with client(stack) as http:
        stream_headers = {"Authorization": f"Bearer {instructor.token}"}
        async with http.stream(
            "GET", f"/v1/events?channel={channel}", headers=stream_headers
        ) as stream:
            assert stream.status_code == 200
            chunks = stream.aiter_text()
            raw += await anext(chunks)  # connected: the booking below will be live
            slot = next(
                s["id"]
                for s in (await http.get(f"/api/instructors/{instructor.id}/schedule")).json()[
                    "slots"
                ]
                if s["status"] == "available"
            )
            auth = {"Authorization": f"Bearer {token}"}
            booked = await http.post("/api/bookings", json={"slotId": slot}, headers=auth)
            if booked.status_code != 201:
                assert booked.status_code in {400, 401, 422}, booked.text  # refused: fine
                return
            booking_id = booked.json()["id"]
            async with asyncio.timeout(10):
                while booking_id not in raw or not raw.endswith("\n\n"):
                    raw += await anext(chunks)
        await http.delete(f"/api/bookings/{booking_id}", headers=auth)
    for frame in frames_of(raw):
        assert all(line.startswith(SSE_FIELDS) for line in frame), frame
        data = [line for line in frame if line.startswith("data: ")]
        assert len(data) <= 1, frame
        for line in data:
            assert "injected" not in json.loads(line.removeprefix("data: ")), frame
    assert '"injected"' not in raw.replace('\\"injected\\"', "")
