"""Stream tickets: redeemed once at the booking-api, which issued them (D2, issue 10).

A browser cannot send an ``Authorization`` header with ``EventSource``; it trades its JWT
for a 30-second single-use ticket (``POST /api/stream-tickets``) and puts that in the stream
URL instead. The gateway asks the booking-api, with the internal token, whose ticket it is.
"""

import time
from dataclasses import dataclass, field
from typing import Final, Protocol

import httpx
from pydantic import BaseModel, ValidationError

from slotstream_contracts.auth import Principal

REDEEM_PATH: Final = "/internal/stream-tickets/redeem"


class TicketServiceUnavailable(RuntimeError):
    """The booking-api could not be asked (unreachable, timed out, 5xx, refused us)."""


class _Redeemed(BaseModel):
    sub: str
    role: str
    name: str | None = None
    expiresAt: int  # noqa: N815 - the wire name


@dataclass(frozen=True)
class RedeemedTicket:
    principal: Principal
    #: Unix time at which the JWT the ticket was issued for expires
    token_expires_at: float


class TicketRedeemer(Protocol):
    async def redeem(self, ticket: str) -> RedeemedTicket | None:
        """The ticket's principal, once; None when unknown, used or expired;
        ``TicketServiceUnavailable`` when that cannot be known now."""


class HttpTicketRedeemer:
    """``POST {booking_api}/internal/stream-tickets/redeem`` with ``X-Internal-Token``."""

    def __init__(self, client: httpx.AsyncClient, internal_token: str | None) -> None:
        self._client = client
        self._headers = {"X-Internal-Token": internal_token or ""}

    async def redeem(self, ticket: str) -> RedeemedTicket | None:
        try:
            response = await self._client.post(
                REDEEM_PATH, json={"ticket": ticket}, headers=self._headers
            )
        except httpx.HTTPError as exc:
            raise TicketServiceUnavailable(f"booking-api unreachable: {exc!r}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            # 403 means the two sides disagree on the internal token: an operator's problem,
            # not the client's, so it is not answered as "bad ticket"
            raise TicketServiceUnavailable(f"ticket redemption answered {response.status_code}")
        try:
            body = _Redeemed.model_validate_json(response.content)
            principal = Principal.model_validate(
                {"sub": body.sub, "role": body.role, "name": body.name}
            )
        except ValidationError as exc:
            raise TicketServiceUnavailable(f"unexpected redemption answer: {exc}") from exc
        return RedeemedTicket(principal, float(body.expiresAt))


@dataclass
class FakeTicketRedeemer:
    """Tickets in a dict, each good once; records every redemption attempt."""

    tickets: dict[str, RedeemedTicket] = field(default_factory=dict)
    attempts: list[str] = field(default_factory=list)
    unavailable: bool = False

    def issue(self, ticket: str, principal: Principal, ttl_seconds: float = 3600) -> str:
        self.tickets[ticket] = RedeemedTicket(principal, time.time() + ttl_seconds)
        return ticket

    async def redeem(self, ticket: str) -> RedeemedTicket | None:
        self.attempts.append(ticket)
        if self.unavailable:
            raise TicketServiceUnavailable("fake: booking-api down")
        return self.tickets.pop(ticket, None)
