"""``Idempotency-Key`` on POST: a retry with the same key gets the first response again.

Keys are scoped per user (the record id hashes the user id and the key). The record
stores a fingerprint of the request (method, path, canonical JSON body): the same key
with a different request is refused with 422. While the first request is still running,
a retry gets 409 (try again shortly). Responses with status < 500 are kept (a 409 for a
taken slot is a real answer and is replayed too); after an error the record is dropped so
a retry runs again. Records expire after ``BOOKING_API_IDEMPOTENCY_TTL_SECONDS``.

A request with a key runs at most ``BOOKING_API_REQUEST_TIMEOUT_SECONDS`` (then 503 and
its record is dropped). So a record still pending after that long was left by a process
that died mid-request, and the next request with the key takes it over instead of getting
409 until the record expires. Each user holds at most
``BOOKING_API_IDEMPOTENCY_MAX_KEYS_PER_USER`` unexpired keys; a new key beyond that is 429
with ``Retry-After`` (when the user's oldest key expires).
"""

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from booking_api.api.deps import AppParts
from booking_api.api.problems import domain_problem, problem
from booking_api.api.responses import JSON, PROBLEM_JSON
from booking_api.domain.errors import DomainError, InvalidRequest
from booking_api.ports import IdempotencyQuotaExceeded, IdempotencyRecord
from booking_api.service import BookingService
from slotstream_contracts.auth import Principal

KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
REPLAYED_HEADER = "Idempotent-Replayed"


_KEY_RE = re.compile(KEY_PATTERN)


class InvalidIdempotencyKey(InvalidRequest):
    pass


def idempotency_header(request: Request) -> str | None:
    """The ``Idempotency-Key`` header, validated like a declared header parameter."""
    key = request.headers.get("idempotency-key")
    if key is not None and _KEY_RE.fullmatch(key) is None:
        raise InvalidIdempotencyKey(
            "header.Idempotency-Key: 1 to 255 printable ASCII characters without spaces"
        )
    return key


def fingerprint(method: str, path: str, body: BaseModel) -> str:
    canonical = orjson.dumps(
        body.model_dump(mode="json", by_alias=True), option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(f"{method} {path}\n".encode() + canonical).hexdigest()


def record_id(user_id: str, role: str, key: str) -> str:
    """A key's record is the caller's: their id *and* role (an instructor and a student may
    share an id and are different people; security control 9)."""
    return hashlib.sha256(f"{user_id}\x00{role}\x00{key}".encode()).hexdigest()[:48]


async def idempotent(
    request: Request,
    body: BaseModel,
    principal: Principal,
    key: str | None,
    service: BookingService,
    parts: AppParts,
    handler: Callable[[], Awaitable[Response]],
) -> Response:
    """Run ``handler`` at most once per (user, key); replay its response afterwards. The
    request is recognised by its method, path and canonical body."""
    if key is None:
        return await handler()
    instance = request.url.path
    request_fingerprint = fingerprint(request.method, instance, body)
    settings = parts.settings
    store = service.storage.idempotency
    now = service.now()
    reserved = IdempotencyRecord(
        id=record_id(principal.user_id, principal.role.value, key),
        user_id=principal.user_id,
        fingerprint=request_fingerprint,
        state="pending",
        created_at=now,
        expires_at=now + timedelta(seconds=settings.idempotency_ttl_seconds),
    )
    try:
        existing = await store.reserve(
            reserved,
            now,
            stale_before=now - timedelta(seconds=settings.request_timeout_seconds),
            max_per_user=settings.idempotency_max_keys_per_user,
        )
    except IdempotencyQuotaExceeded as exc:
        return problem(
            429,
            f"too many Idempotency-Keys in use (at most "
            f"{settings.idempotency_max_keys_per_user} per user); retry later or send the "
            "request without a key",
            kind="idempotency-key-quota",
            instance=instance,
            headers={"Retry-After": str(exc.retry_after)},
        )
    if existing is not None:
        if existing.fingerprint != request_fingerprint:
            return problem(
                422,
                "this Idempotency-Key was already used with a different request",
                kind="idempotency-key-reused",
                instance=instance,
            )
        if existing.state == "pending" or existing.status_code is None:
            return problem(
                409,
                "a request with this Idempotency-Key is still in progress; retry shortly",
                kind="idempotency-in-progress",
                instance=instance,
            )
        media = JSON if existing.status_code < 400 else PROBLEM_JSON
        return Response(
            (existing.body or "").encode(),
            status_code=existing.status_code,
            media_type=media,
            headers={REPLAYED_HEADER: "true"},
        )
    try:
        try:
            async with asyncio.timeout(settings.request_timeout_seconds):
                response = await handler()
        except DomainError as exc:
            response = domain_problem(exc, instance)
        except TimeoutError:
            response = problem(
                503,
                f"the request took longer than {settings.request_timeout_seconds:g}s; retry "
                "with the same Idempotency-Key",
                kind="request-timeout",
                instance=instance,
                headers={"Retry-After": "1"},
            )
    except BaseException:
        await store.release(reserved)
        raise
    if response.status_code >= 500:
        await store.release(reserved)
    else:
        await store.complete(reserved, response.status_code, bytes(response.body).decode())
    return response
