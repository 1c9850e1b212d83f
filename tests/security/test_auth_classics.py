"""Issue 10, the classics: forged, expired, foreign and over-long tokens, and other users'
private data, on every authenticated endpoint. Black box, through the edge."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import orjson
import pytest

from scripts.devstack import JWT_AUDIENCE, JWT_ISSUER, DevStack
from tests.security.auth_support import PROBLEM_JSON, bearer, stream_status, ticket_for

pytestmark = pytest.mark.integration


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "admin",
        "role": "admin",
        "iat": now,
        "exp": now + 600,
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(stack: DevStack, claims: dict[str, Any]) -> str:
    """Signed with the stack's real private key: only the claims are wrong."""
    return jwt.encode(claims, stack.jwt.signing_key(), algorithm="EdDSA")


def alg_none(_stack: DevStack) -> str:
    header = _b64(b'{"alg":"none","typ":"JWT"}')
    return f"{header}.{_b64(orjson.dumps(_claims()))}."


def hs256_with_the_public_key(stack: DevStack) -> str:
    """HS/RS confusion: an HMAC keyed with the (public) verification key."""
    header = _b64(b'{"alg":"HS256","typ":"JWT"}')
    signing_input = f"{header}.{_b64(orjson.dumps(_claims()))}"
    key = stack.public_key_file.read_bytes()
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def expired(stack: DevStack) -> str:
    now = int(time.time())
    return _signed(stack, _claims(iat=now - 3600, exp=now - 600))


def foreign_audience(stack: DevStack) -> str:
    return _signed(stack, _claims(aud="another-service"))


def foreign_issuer(stack: DevStack) -> str:
    return _signed(stack, _claims(iss="https://evil.example"))


def missing_iat(stack: DevStack) -> str:
    return _signed(stack, _claims(iat=None))


def lifetime_too_long(stack: DevStack) -> str:
    now = int(time.time())
    return _signed(stack, _claims(iat=now, exp=now + 25 * 3600))


def another_key(_stack: DevStack) -> str:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return jwt.encode(_claims(), ed25519.Ed25519PrivateKey.generate(), algorithm="EdDSA")


BAD_TOKENS: list[Callable[[DevStack], str]] = [
    alg_none,
    hs256_with_the_public_key,
    another_key,
    expired,
    foreign_audience,
    foreign_issuer,
    missing_iat,
    lifetime_too_long,
]


def test_the_forgeries_are_otherwise_well_formed(stack: DevStack) -> None:
    """Control: the same claims, correctly signed, are accepted — so each refusal below is
    for the one thing that is wrong."""
    good = _signed(stack, _claims())
    response = httpx.get(
        f"{stack.base_url}/api/users/me/bookings", headers=bearer(good), timeout=10
    )
    assert response.status_code == 200


@pytest.mark.parametrize("forge", BAD_TOKENS, ids=lambda f: f.__name__)
def test_bad_tokens_are_401_problems_on_every_endpoint(
    stack: DevStack, forge: Callable[[DevStack], str]
) -> None:
    token = forge(stack)
    headers = bearer(token)
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        answers = {
            "my bookings": client.get("/api/users/me/bookings", headers=headers),
            "my notifications": client.get("/api/users/me/notifications", headers=headers),
            "stream ticket": client.post("/api/stream-tickets", headers=headers),
            "book": client.post("/api/bookings", json={"slotId": "any"}, headers=headers),
            "cancel": client.delete("/api/bookings/any", headers=headers),
        }
    for what, response in answers.items():
        assert response.status_code == 401, (what, response.text)
        assert response.headers["content-type"] == PROBLEM_JSON, what
    status, kind, _ = stream_status(stack, "channel=users/admin/notifications", headers)
    assert (status, kind) == (401, PROBLEM_JSON)


def test_a_student_cannot_use_another_users_private_channel(stack: DevStack) -> None:
    own, other = stack.user("student", 0), stack.user("student", 1)
    theirs = f"channel=users/{other.id}/notifications"
    status, kind, _ = stream_status(stack, theirs, bearer(own.token))
    assert (status, kind) == (403, PROBLEM_JSON)
    ticket = ticket_for(stack, own.token)
    status, kind, _ = stream_status(stack, f"{theirs}&ticket={ticket}")
    assert (status, kind) == (403, PROBLEM_JSON)
    # the instructor's private channel too, by either credential
    teacher = stack.user("instructor", 0)
    status, _, _ = stream_status(
        stack, f"channel=users/{teacher.id}/notifications", bearer(own.token)
    )
    assert status == 403


def _free_slot(client: httpx.Client, instructor_id: str) -> str:
    slots = client.get(f"/api/instructors/{instructor_id}/schedule").json()["slots"]
    free = [s["id"] for s in slots if s["status"] == "available"]
    assert free, "the seeded schedule has no free slot"
    slot_id: str = free[-1]
    return slot_id


def test_a_student_cannot_see_or_cancel_another_students_booking(stack: DevStack) -> None:
    owner, other = stack.user("student", 0), stack.user("student", 1)
    teacher = stack.user("instructor", 0)
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        booked = client.post(
            "/api/bookings",
            json={"slotId": _free_slot(client, teacher.id)},
            headers=bearer(owner.token),
        )
        assert booked.status_code == 201, booked.text
        booking_id = booked.json()["id"]
        try:
            refused = client.delete(f"/api/bookings/{booking_id}", headers=bearer(other.token))
            assert refused.status_code in (403, 404), refused.text
            assert refused.headers["content-type"] == PROBLEM_JSON
            mine = client.get("/api/users/me/bookings", headers=bearer(other.token)).json()
            assert booking_id not in {b["id"] for b in mine}
            # the instructor's notification about it is theirs alone
            notes = client.get("/api/users/me/notifications", headers=bearer(teacher.token))
            for note in notes.json()[:5]:
                read = client.post(
                    f"/api/users/me/notifications/{note['id']}/read", headers=bearer(other.token)
                )
                assert read.status_code in (403, 404), read.text
                assert read.headers["content-type"] == PROBLEM_JSON
        finally:
            cancelled = client.delete(f"/api/bookings/{booking_id}", headers=bearer(owner.token))
            assert cancelled.status_code == 200, cancelled.text
