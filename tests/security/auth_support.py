"""Helpers of the token and auth black-box suites: every request goes through the edge."""

from __future__ import annotations

import httpx

from scripts.devstack import DevStack

PROBLEM_JSON = "application/problem+json"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ticket_for(stack: DevStack, token: str) -> str:
    response = httpx.post(f"{stack.base_url}/api/stream-tickets", headers=bearer(token), timeout=10)
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    ticket: str = response.json()["ticket"]
    return ticket


def stream_status(
    stack: DevStack, query: str, headers: dict[str, str] | None = None
) -> tuple[int, str, bytes]:
    """Open ``/v1/events?<query>`` through the edge; status, content type and the first
    bytes (the problem body, or the start of the stream), then hang up."""
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", f"{stack.base_url}/v1/events?{query}", headers=headers) as r,
    ):
        first = b"" if r.status_code == 200 else r.read()
        return r.status_code, r.headers.get("content-type", ""), first
