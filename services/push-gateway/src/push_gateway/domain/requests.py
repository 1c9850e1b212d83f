"""Turning an SSE request (path, query, headers) into channels, a resume point and a
principal — or into the problem (RFC 9457) that answers it before any stream opens.

Private channels need the owner's credentials: ``Authorization: Bearer <JWT>`` (apps), or
``ticket=<single-use stream ticket>`` in the query (browsers, whose ``EventSource`` cannot
send headers), which the gateway redeems at the booking-api before the stream opens. A
bearer token is accepted in no URL and no cookie: ``access_token`` in the query is refused
with 400 so that a client still sending it learns why (issue 10 item 5).
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs

from push_gateway.domain.hub import NO_READERS, Readers
from push_gateway.domain.positions import PartitionKey, PositionError, parse_position
from slotstream_contracts.auth import (
    InvalidToken,
    JwtSettings,
    Principal,
    Role,
    verify_token_claims,
)
from slotstream_contracts.channels import Channel, ChannelError
from slotstream_contracts.entities import Audience
from slotstream_contracts.ids import is_valid_id

PAGE_PATH: Final = "/api/book-now/schedule-updates"
EVENTS_PATH: Final = "/v1/events"
STREAM_PATHS: Final = frozenset({PAGE_PATH, EVENTS_PATH})
#: what the booking-api issues: URL-safe base64 of 32 random bytes (43 characters)
TICKET_RE: Final = re.compile(r"[A-Za-z0-9_-]{16,128}")
CHALLENGE: Final = (("www-authenticate", 'Bearer realm="slotstream"'),)
MAX_QUERY_FIELDS: Final = 100
#: the default of ``GATEWAY_MAX_REQUEST_HEAD_BYTES``: above what the edge passes (nginx's
#: default ``large_client_header_buffers 4 8k``, with the headers it adds) and Envoy's
#: default 60 KiB; a browser's head is well under 2 kB
MAX_REQUEST_HEAD_BYTES: Final = 64 * 1024
MAX_KNOWN_CHANNELS: Final = 65_536


@dataclass(frozen=True)
class Problem(Exception):
    status: int
    title: str
    detail: str
    headers: tuple[tuple[str, str], ...] = ()

    def body(self, instance: str | None) -> dict[str, object]:
        """The problem+json object; without ``instance`` when the request's path is not
        known (a head refused before it was read)."""
        body: dict[str, object] = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        return body


@dataclass(frozen=True, slots=True)
class StreamRequest:
    channels: tuple[Channel, ...]
    resume_from: dict[PartitionKey, int] | None
    principal: Principal | None = None
    origin: str | None = None
    #: Unix time after which the stream must end because its token has expired (the
    #: token's ``exp`` plus the same leeway the check at connect allows); None without a token.
    token_expires_at: float | None = None
    #: a stream ticket still to redeem (the principal is None until then)
    ticket: str | None = None


def parse_query(text: str) -> dict[str, list[str]]:
    """``parse_qs(text, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)``, with
    the common case — nothing percent- or plus-encoded, as in ``instructorId=i1`` — split
    directly (a third of the cost; it runs once per stream request, 10,000 times in a
    connect storm)."""
    if "%" in text or "+" in text:
        return parse_qs(text, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    if text.count("&") + 1 > MAX_QUERY_FIELDS:
        raise ValueError("Max number of fields exceeded")
    query: dict[str, list[str]] = {}
    for field_ in text.split("&"):
        if field_:
            name, _, value = field_.partition("=")
            if name in query:
                query[name].append(value)
            else:
                query[name] = [value]
    return query


_schedule_channels: dict[str, tuple[Channel]] = {}


def _schedule_channel(instructor_id: str) -> Channel:
    """``Channel.schedule(instructor_id)``, remembered (at most ``MAX_KNOWN_CHANNELS``): a
    connect storm asks for few instructors many times, and a channel is immutable."""
    known = _schedule_channels.get(instructor_id)
    if known is None:
        if not is_valid_id(instructor_id):
            raise _bad_request("instructorId must be given once and be a valid id")
        if len(_schedule_channels) >= MAX_KNOWN_CHANNELS:
            _schedule_channels.clear()
        known = _schedule_channels[instructor_id] = (Channel.schedule(instructor_id),)
    return known[0]


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _bad_request(detail: str) -> Problem:
    return Problem(400, "Bad Request", detail)


def parse_stream_request(
    path: str,
    query_string: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    jwt: JwtSettings,
    max_channels: int,
) -> StreamRequest:
    """Validate everything about a stream request; raise :class:`Problem` when it must fail."""
    try:
        query = parse_query(query_string.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad_request(f"unreadable query string: {exc}") from None
    if "access_token" in query:
        raise _bad_request(
            "access_token is not accepted in URLs (logs keep them): send Authorization: "
            "Bearer, or a ticket from POST /api/stream-tickets as ?ticket="
        )

    if path == PAGE_PATH:
        ids = query.get("instructorId", [])
        if len(ids) != 1:
            raise _bad_request("instructorId must be given once and be a valid id")
        channels: tuple[Channel, ...] = (_schedule_channel(ids[0]),)
    else:
        names = query.get("channel", [])
        if not names:
            raise _bad_request("give at least one channel, e.g. ?channel=instructors/i1/schedule")
        unique = list(dict.fromkeys(names))
        if len(unique) > max_channels:
            raise _bad_request(f"at most {max_channels} channels per connection")
        try:
            channels = tuple(Channel.parse(name) for name in unique)
        except ChannelError as exc:
            raise _bad_request(str(exc)) from None

    last_event_id = _header(headers, b"last-event-id")
    if last_event_id is None:
        given = query.get("lastEventId")
        last_event_id = given[-1] if given else None
    resume_from = None
    if last_event_id:
        try:
            resume_from = parse_position(last_event_id)
        except PositionError as exc:
            raise _bad_request(f"Last-Event-ID: {exc}") from None

    principal = None
    expires_at = None
    ticket = None
    private = [c for c in channels if c.is_private]
    if private:
        authorization = _bearer(headers)
        if authorization is not None:
            principal, expires_at = _verify(authorization, jwt)
            authorize(channels, principal)
        else:
            ticket = _ticket(query)
    return StreamRequest(
        channels=channels,
        resume_from=resume_from,
        principal=principal,
        origin=_header(headers, b"origin"),
        token_expires_at=expires_at,
        ticket=ticket,
    )


def readers_of(principal: Principal | None) -> Readers:
    """The roles whose private records a principal's streams are shown: a student's and an
    instructor's own role (one id may be both, as two people), an admin's both (admins
    read every private channel); without a principal none (a public stream)."""
    if principal is None:
        return NO_READERS
    if principal.role is Role.ADMIN:
        return _EVERY_ROLE
    return _STUDENTS if principal.role is Role.STUDENT else _INSTRUCTORS


_EVERY_ROLE: Final[Readers] = frozenset(Audience)
_STUDENTS: Final[Readers] = frozenset({Audience.STUDENT})
_INSTRUCTORS: Final[Readers] = frozenset({Audience.INSTRUCTOR})


def authorize(channels: Sequence[Channel], principal: Principal) -> None:
    """403 unless every private channel is the principal's (or the principal an admin)."""
    for channel in channels:
        if channel.is_private and not principal.may_act_for(channel.owner_id):
            raise Problem(403, "Forbidden", f"{channel} belongs to another user")


def unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, CHALLENGE)


def _bearer(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    authorization = _header(headers, b"authorization")
    if authorization is None:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _ticket(query: dict[str, list[str]]) -> str:
    given = query.get("ticket", [])
    if not given:
        raise unauthorized(
            "private channels need Authorization: Bearer <token>, or ?ticket= from "
            "POST /api/stream-tickets"
        )
    if len(given) != 1 or TICKET_RE.fullmatch(given[0]) is None:
        raise unauthorized("malformed stream ticket")
    return given[0]


def _verify(token: str, jwt: JwtSettings) -> tuple[Principal, float]:
    """The verified principal and the Unix time at which its token stops being accepted."""
    try:
        verified = verify_token_claims(token, jwt)
    except (InvalidToken, ValueError) as exc:
        raise unauthorized(f"invalid token: {exc}") from None
    return verified.principal, verified.expires_at + jwt.leeway_seconds
