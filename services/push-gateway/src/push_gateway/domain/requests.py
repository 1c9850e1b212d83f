"""Turning an SSE request (path, query, headers) into channels, a resume point and a
principal — or into the problem (RFC 9457) that answers it before any stream opens."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Final
from urllib.parse import parse_qs

import jwt as pyjwt

from push_gateway.domain.positions import PartitionKey, PositionError, parse_position
from slotstream_contracts.auth import InvalidToken, JwtSettings, Principal, verify_token
from slotstream_contracts.channels import Channel, ChannelError
from slotstream_contracts.ids import is_valid_id

PAGE_PATH: Final = "/api/book-now/schedule-updates"
EVENTS_PATH: Final = "/v1/events"
STREAM_PATHS: Final = frozenset({PAGE_PATH, EVENTS_PATH})


@dataclass(frozen=True)
class Problem(Exception):
    status: int
    title: str
    detail: str
    headers: tuple[tuple[str, str], ...] = ()

    def body(self, instance: str) -> dict[str, object]:
        return {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }


@dataclass(frozen=True)
class StreamRequest:
    channels: tuple[Channel, ...]
    resume_from: dict[PartitionKey, int] | None
    principal: Principal | None = None
    origin: str | None = None
    #: Unix time after which the stream must end because its token has expired (the
    #: token's ``exp`` plus the same leeway the check at connect allows); None without a token.
    token_expires_at: float | None = None
    extra: dict[str, str] = field(default_factory=dict)


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
        query = parse_qs(query_string.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad_request(f"unreadable query string: {exc}") from None

    if path == PAGE_PATH:
        ids = query.get("instructorId", [])
        if len(ids) != 1 or not is_valid_id(ids[0]):
            raise _bad_request("instructorId must be given once and be a valid id")
        channels: tuple[Channel, ...] = (Channel.schedule(ids[0]),)
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
    private = [c for c in channels if c.is_private]
    if private:
        principal, expires_at = _authenticate(headers, query, jwt)
        for channel in private:
            if not principal.may_act_for(channel.owner_id):
                raise Problem(403, "Forbidden", f"{channel} belongs to another user")
    return StreamRequest(
        channels=channels,
        resume_from=resume_from,
        principal=principal,
        origin=_header(headers, b"origin"),
        token_expires_at=expires_at,
    )


def _authenticate(
    headers: Sequence[tuple[bytes, bytes]], query: dict[str, list[str]], jwt: JwtSettings
) -> tuple[Principal, float]:
    """The verified principal and the Unix time at which its token stops being accepted."""
    token = None
    authorization = _header(headers, b"authorization")
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            token = value.strip()
    if token is None and query.get("access_token"):
        token = query["access_token"][-1]
    if token is None:
        cookie_header = _header(headers, b"cookie")
        if cookie_header:
            try:
                cookie = SimpleCookie(cookie_header)
            except CookieError:
                cookie = SimpleCookie()
            morsel = cookie.get("access_token")
            if morsel is not None and morsel.value:
                token = morsel.value
    challenge = (("www-authenticate", 'Bearer realm="slotstream"'),)
    if token is None:
        raise Problem(401, "Unauthorized", "private channels need a bearer token", challenge)
    try:
        principal = verify_token(token, jwt)
    except (InvalidToken, ValueError) as exc:
        raise Problem(401, "Unauthorized", f"invalid token: {exc}", challenge) from None
    # verified just above (``exp`` is a required claim): reading it back needs no key
    claims = pyjwt.decode(token, options={"verify_signature": False})
    return principal, float(claims["exp"]) + jwt.leeway_seconds
