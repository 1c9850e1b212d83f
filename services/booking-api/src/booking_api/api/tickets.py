"""Stream tickets (docs/architecture.md, issue 10 item 5): no bearer token in any URL.

A browser's ``EventSource`` cannot send an ``Authorization`` header, so it used to put the
JWT in the query string, where proxies and access logs keep it. Instead the page trades its
token for a ticket (``POST /api/stream-tickets``, token in the header): opaque, random,
valid ``stream_ticket_ttl_seconds`` and good for one connection. A push-gateway redeems it
once through ``POST /internal/stream-tickets/redeem``, which needs ``X-Internal-Token``
and is refused (fails closed) when no internal token is configured.
"""

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from booking_api.adapters.tickets import TicketStoreFull
from booking_api.api.deps import Parts, authenticate, bearer, open_runtime
from booking_api.api.internal import require_internal_token
from booking_api.api.problems import problem, problem_responses
from booking_api.api.responses import OrjsonResponse
from booking_api.ports import StreamTicket, TicketStore

#: random bytes per ticket (URL-safe base64: 43 characters)
TICKET_BYTES = 32
NO_STORE = {"Cache-Control": "no-store"}

router = APIRouter()

#: every status ``POST /api/stream-tickets`` answers besides 201: 401 no or a bad token,
#: 413 a body past ``max_body_bytes`` (the route reads none; the middleware refuses it
#: first), 503 the ticket store full or the service starting (``tests/unit/test_api_docs.py``
#: provokes each). No 400: no body or query is read, so none can be unreadable
#: (``tests/unit/test_stream_tickets.py`` sends such requests: a ticket, or 401)
TICKET_ERRORS = problem_responses(401, 413, 503)


class TicketIssued(BaseModel):
    ticket: str = Field(description="opaque; put it in the stream URL as ?ticket=")
    expiresIn: int = Field(description="seconds until the ticket can no longer be redeemed")  # noqa: N815


class RedeemRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ticket: str = Field(min_length=1, max_length=256)


def ticket_id(ticket: str) -> str:
    """What the store keeps instead of the ticket itself."""
    return hashlib.sha256(ticket.encode()).hexdigest()


def _store(request: Request) -> TicketStore:
    return open_runtime(request).tickets


@router.post(
    "/api/stream-tickets",
    status_code=201,
    response_model=TicketIssued,
    responses=TICKET_ERRORS,
    tags=["streams"],
)
async def issue_ticket(
    request: Request,
    parts: Parts,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Response:
    """A single-use ticket that opens one stream of the caller's private channels."""
    token = None if credentials is None else credentials.credentials
    authenticate(request, token)  # 401 problem unless the token is valid
    assert token is not None
    verified = parts.tokens.verify_claims(token)
    now = datetime.now(UTC)
    ttl = parts.settings.stream_ticket_ttl_seconds
    token_expires_at = datetime.fromtimestamp(verified.expires_at, UTC)
    ticket = secrets.token_urlsafe(TICKET_BYTES)
    try:
        await _store(request).issue(
            StreamTicket(
                id=ticket_id(ticket),
                sub=verified.principal.user_id,
                role=verified.principal.role.value,
                name=verified.principal.name,
                token_expires_at=token_expires_at,
                expires_at=min(now + timedelta(seconds=ttl), token_expires_at),
            ),
            now,
        )
    except TicketStoreFull as exc:
        return problem(
            503, str(exc), instance=request.url.path, headers={"Retry-After": "5"} | NO_STORE
        )
    return OrjsonResponse({"ticket": ticket, "expiresIn": ttl}, status_code=201, headers=NO_STORE)


@router.post(
    "/internal/stream-tickets/redeem",
    include_in_schema=False,
    dependencies=[Depends(require_internal_token)],
)
async def redeem_ticket(body: RedeemRequest, request: Request) -> Response:
    """The ticket's principal and its token's expiry, once; 404 when unknown, used or
    expired; 403 without the right ``X-Internal-Token`` or when none is configured."""
    redeemed = await _store(request).redeem(ticket_id(body.ticket), datetime.now(UTC))
    if redeemed is None:
        return problem(
            404, "unknown, used or expired ticket", instance=request.url.path, headers=NO_STORE
        )
    return OrjsonResponse(
        {
            "sub": redeemed.sub,
            "role": redeemed.role,
            "name": redeemed.name,
            "expiresAt": int(redeemed.token_expires_at.timestamp()),
        },
        headers=NO_STORE,
    )
