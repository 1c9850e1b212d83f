"""RFC 9457 problem details: every error leaves the API as ``application/problem+json``."""

from http import HTTPStatus
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from booking_api.api.responses import PROBLEM_JSON
from booking_api.domain.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    PreconditionRequired,
    StorageUnavailable,
)

log = structlog.get_logger("booking_api.api")

PROBLEM_BASE = "urn:slotstream:problem:"
_STATUS_OF: dict[type[DomainError], int] = {
    InvalidRequest: 422,
    NotFound: 404,
    Conflict: 409,
    Forbidden: 403,
    PreconditionFailed: 412,
    PreconditionRequired: 428,
    StorageUnavailable: 503,
}


class ValidationIssue(BaseModel):
    """One thing the request schema refused (a ``422``'s ``errors``)."""

    loc: list[str] = Field(description="where: body, query, path or header, then the field")
    msg: str = Field(description="what is wrong, in English")
    type: str = Field(description="the kind of error, e.g. missing or string_too_long")


class Problem(BaseModel):
    """A problem details body (RFC 9457); domain problems add members such as ``slotId``.

    Every member the API sends is declared (``test_api_docs`` reads them from the code), so
    the schema no longer says ``additionalProperties: true``: nothing relies on undeclared
    members, and a client still ignores ones it does not know (RFC 9457, 3.2)."""

    model_config = ConfigDict(populate_by_name=True)

    type: str = Field(default="about:blank", examples=["urn:slotstream:problem:conflict"])
    title: str
    status: int
    detail: str
    instance: str | None = None
    slot_id: str | None = Field(
        default=None,
        alias="slotId",
        description="the slot the problem is about; for an overlap (409), the slot in the way",
    )
    slot_start: AwareDatetime | None = Field(
        default=None,
        alias="slotStart",
        description="an overlap (409): the start of the slot in the way",
    )
    slot_end: AwareDatetime | None = Field(
        default=None,
        alias="slotEnd",
        description="an overlap (409): the end of the slot in the way",
    )
    instructor_id: str | None = Field(
        default=None,
        alias="instructorId",
        description="an instructor that already exists (409): its id",
    )
    booking_id: str | None = Field(
        default=None,
        alias="bookingId",
        description="booking-cancelled (409): the booking an earlier try of the request made",
    )
    version: int | None = Field(
        default=None,
        description="precondition-failed (412): the slot's current version (its ETag unquoted)",
    )
    limit: int | None = Field(
        default=None,
        description="quota-exceeded (409): the most active bookings a student may hold",
    )
    errors: list[ValidationIssue] | None = Field(
        default=None,
        description="invalid-request (422) from the schema: what it refused, at most 20",
    )


class AuthError(Exception):
    """Missing or invalid credentials (401, with a ``WWW-Authenticate`` challenge)."""

    def __init__(self, detail: str, error: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.error = error


def problem(
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + kind if kind else "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return Response(
        orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def domain_problem(exc: DomainError, instance: str) -> Response:
    status = next(code for kind, code in _STATUS_OF.items() if isinstance(exc, kind))
    kind = exc.kind or type(exc).__name__.lower()
    # A 503 is temporary: say when to come back, as every other 503 of the API does.
    headers = {"Retry-After": "1"} if status == 503 else None
    return problem(status, exc.detail, kind=kind, instance=instance, headers=headers, **exc.extra)


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "request"


def validation_detail(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        if error.get("type") == "json_invalid":
            parts.append("the body is not valid JSON")
        else:
            parts.append(f"{_loc(tuple(error.get('loc', ())))}: {error.get('msg', 'invalid')}")
    more = "" if len(errors) <= 5 else f" (and {len(errors) - 5} more)"
    return "; ".join(parts) + more


def install_problem_handlers(app: FastAPI) -> None:
    async def on_domain(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DomainError)
        log.info("request.rejected", reason=exc.detail, kind=type(exc).__name__)
        return domain_problem(exc, request.url.path)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [dict(e) for e in exc.errors()]
        detail = validation_detail(errors)
        log.info("request.invalid", detail=detail)
        listed = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg")), "type": e["type"]}
            for e in errors[:20]
        ]
        return problem(
            422, detail, kind="invalid-request", instance=request.url.path, errors=listed
        )

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no resource at {request.url.path}"
        elif exc.status_code == 400 and detail == "There was an error parsing the body":
            detail = "the body could not be read as UTF-8 JSON"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        headers = dict(exc.headers) if exc.headers else None
        return problem(exc.status_code, detail, instance=request.url.path, headers=headers)

    async def on_auth(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AuthError)
        challenge = "Bearer" if exc.error is None else f'Bearer error="{exc.error}"'
        log.info("request.unauthenticated", reason=exc.detail)
        return problem(
            401,
            exc.detail,
            kind="unauthenticated",
            instance=request.url.path,
            headers={"WWW-Authenticate": challenge},
        )

    app.add_exception_handler(DomainError, on_domain)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(AuthError, on_auth)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route can return."""
    return {
        status: {
            "model": Problem,
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
