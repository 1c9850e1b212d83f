"""Issue 10 on the booking-api, black box against the demo stack on 127.0.0.1.

Item 7: ``/internal/*`` is not reachable through the edge, and the booking-api refuses it
without the internal token. Item 8: a display name with control or bidi characters is
refused. Item 10: private answers carry ``Cache-Control: no-store`` through the edge.
(Role-aware decisions and the booking quota need tokens the demo does not hand out; the
booking-api's tests/unit/test_security_rules.py proves them on the real app.)
"""

from __future__ import annotations

import httpx
import pytest

from scripts.devstack import DemoUser, DevStack

pytestmark = pytest.mark.integration

TIMEOUT = 10.0


def bearer(user: DemoUser) -> dict[str, str]:
    return {"Authorization": f"Bearer {user.token}"}


async def test_internal_routes_are_closed_to_outsiders(stack: DevStack) -> None:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        through_edge = await client.get(f"{stack.base_url}/internal/changes")
        assert through_edge.status_code == 404
        for headers in ({}, {"X-Internal-Token": ""}, {"X-Internal-Token": "guess" * 8}):
            direct = await client.get(f"{stack.booking_api_url}/internal/changes", headers=headers)
            assert direct.status_code == 403, direct.text
            assert direct.headers["content-type"] == "application/problem+json"
            assert "changes" not in direct.json()


@pytest.mark.parametrize("name", ["Ada\u202eevil", "Ada\nLovelace", "Ada\x00"])
async def test_a_name_with_control_or_bidi_characters_is_refused(
    stack: DevStack, name: str
) -> None:
    instructor = stack.user("instructor")
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=TIMEOUT) as api:
        refused = await api.post(
            "/api/instructors", json={"name": name}, headers=bearer(instructor)
        )
        assert refused.status_code == 422, refused.text
        assert "control or format character" in refused.json()["detail"]


async def test_private_answers_are_not_stored_by_caches(stack: DevStack) -> None:
    student = stack.user("student")
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=TIMEOUT) as api:
        for answer in (
            await api.get("/api/users/me/bookings", headers=bearer(student)),
            await api.get("/api/users/me/notifications", headers=bearer(student)),
            await api.get("/api/users/me/bookings"),
            await api.post("/api/bookings", json={"slotId": "nope"}, headers=bearer(student)),
        ):
            assert "no-store" in answer.headers.get("cache-control", ""), answer.request.url
