"""``Idempotency-Key`` on POST: a retry with the same key gets the first response again.

Keys are scoped per user (the record id hashes the user id and the key). The record
stores a fingerprint of the request (method, path, canonical JSON body): the same key
with a different request is refused with 422. While the first request is still running,
a retry gets 409 (try again shortly). Responses with status < 500 are kept (a 409 for a
taken slot is a real answer and is replayed too); after an error the record is dropped so
a retry runs again. Records expire after ``BOOKING_API_IDEMPOTENCY_TTL_SECONDS``.
"""

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
from booking_api.ports import IdempotencyRecord
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


def record_id(user_id: str, key: str) -> str:
    return hashlib.sha256(f"{user_id}\x00{key}".encode()).hexdigest()[:48]


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
    ttl_seconds = parts.settings.idempotency_ttl_seconds
    store = service.storage.idempotency
    now = service.now()
    reserved = IdempotencyRecord(
        id=record_id(principal.user_id, key),
        fingerprint=request_fingerprint,
        state="pending",
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_seconds),
    )
    existing = await store.reserve(reserved, now)
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
            response = await handler()
        except DomainError as exc:
            response = domain_problem(exc, instance)
    except BaseException:
        await store.release(reserved.id)
        raise
    if response.status_code >= 500:
        await store.release(reserved.id)
    else:
        await store.complete(reserved.id, response.status_code, bytes(response.body).decode())
    return response
