"""Stream tickets: redeemed once at the booking-api, which issued them (D2, issue 10).

A browser cannot send an ``Authorization`` header with ``EventSource``; it trades its JWT
for a 30-second single-use ticket (``POST /api/stream-tickets``) and puts that in the stream
URL instead. The gateway asks the booking-api, with the internal token, whose ticket it is.
"""

import asyncio
import time
from dataclasses import dataclass, field
from typing import Final, Protocol

import httpx
from pydantic import BaseModel, ValidationError

from slotstream_contracts.auth import Principal

REDEEM_PATH: Final = "/internal/stream-tickets/redeem"
#: redemptions sent to the booking-api at once (its HTTP client keeps as many connections)
MAX_REDEMPTIONS_IN_FLIGHT: Final = 8
#: redemptions that may wait for one of those; the next is answered 503 at once
MAX_REDEMPTIONS_WAITING: Final = 256
#: the longest a redemption waits for its turn (a ticket lives 30 s)
REDEMPTION_WAIT_SECONDS: Final = 10.0


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


class BoundedTickets:
    """Any redeemer, asked at most ``max_in_flight`` times at once, by at most
    ``max_waiting`` more streams waiting here for their turn; past that, and after waiting
    ``wait_seconds``, :class:`TicketServiceUnavailable` (the stream's 503 + Retry-After,
    a WebSocket's close 1013) without asking.

    Any client may send a random ticket, and each costs a booking-api request (nothing
    to cache: a ticket is single-use): unbounded, a flood queued them all in the HTTP
    client's pool, whose queue is rescanned for every request it assigns (~1 ms of CPU
    each with 500 queued, ``adapters/snapshots.py``), for up to its 30 s pool timeout."""

    def __init__(
        self,
        redeemer: TicketRedeemer,
        max_in_flight: int = MAX_REDEMPTIONS_IN_FLIGHT,
        max_waiting: int = MAX_REDEMPTIONS_WAITING,
        wait_seconds: float = REDEMPTION_WAIT_SECONDS,
    ) -> None:
        self._redeemer = redeemer
        self._slots = asyncio.Semaphore(max_in_flight)
        self._max_waiting = max_waiting
        self._wait_seconds = wait_seconds
        self._waiting = 0
        #: redemptions answered busy without asking the booking-api
        self.refused = 0

    async def redeem(self, ticket: str) -> RedeemedTicket | None:
        if self._slots.locked():
            if self._waiting >= self._max_waiting:
                self.refused += 1
                raise TicketServiceUnavailable(
                    f"{self._max_waiting} ticket redemptions already wait for the booking-api"
                )
            self._waiting += 1
            try:
                async with asyncio.timeout(self._wait_seconds):
                    await self._slots.acquire()
            except TimeoutError:
                self.refused += 1
                raise TicketServiceUnavailable(
                    f"no ticket redemption free within {self._wait_seconds:g} s"
                ) from None
            finally:
                self._waiting -= 1
        else:
            await self._slots.acquire()
        try:
            return await self._redeemer.redeem(ticket)
        finally:
            self._slots.release()


@dataclass
class FakeTicketRedeemer:
    """Tickets in a dict, each good once; records every redemption attempt."""

    tickets: dict[str, RedeemedTicket] = field(default_factory=dict)
    attempts: list[str] = field(default_factory=list)
    unavailable: bool = False
    #: when set, redemptions wait for it (a booking-api taking its time)
    gate: asyncio.Event | None = None

    def issue(self, ticket: str, principal: Principal, ttl_seconds: float = 3600) -> str:
        self.tickets[ticket] = RedeemedTicket(principal, time.time() + ttl_seconds)
        return ticket

    async def redeem(self, ticket: str) -> RedeemedTicket | None:
        self.attempts.append(ticket)
        if self.gate is not None:
            await self.gate.wait()
        if self.unavailable:
            raise TicketServiceUnavailable("fake: booking-api down")
        return self.tickets.pop(ticket, None)
