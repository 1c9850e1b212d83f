"""Per-client admission limits: who the client is, how many streams it holds, how fast it
connects. Touched only when a stream is requested or closed, never per delivery.

Memory stays bounded by the number of clients that are active right now: a stream counter
is deleted when it drops to 0, and a token bucket is deleted once it would be full again
(swept at most once a second, and only the buckets that are full).
"""

import math
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Final

from push_gateway.domain.requests import Problem, StreamRequest

Network = IPv4Network | IPv6Network

#: how often (seconds) full token buckets are swept away
SWEEP_SECONDS: Final = 1.0


#: addresses classified at most (then forgotten all at once): far more than the peers of
#: one gateway (the proxies' few addresses, or clients' addresses without a proxy)
MAX_KNOWN_ADDRESSES: Final = 4096

#: the longest ``X-Forwarded-For`` value whose answer is remembered: a client plus a few
#: proxies; a longer one (a client's own list in front) is walked each time, so that the
#: memory stays bounded by ``MAX_KNOWN_ADDRESSES`` short keys
MAX_REMEMBERED_FORWARDED: Final = 256

#: the header every proxy appends the address it received a request from to (nginx's
#: ``$proxy_add_x_forwarded_for``, Envoy's ``use_remote_address``, HAProxy, Traefik)
FORWARDED_FOR: Final = b"x-forwarded-for"

#: the longest address text remembered (an IPv6 address with a zone, and some spaces)
MAX_ADDRESS_TEXT: Final = 64

IPAddress = IPv4Address | IPv6Address


def parse_address(text: str) -> IPAddress:
    """An address as written in a header or a peer name; an IPv4-mapped IPv6 address (a
    dual-stack socket's peer) is its IPv4 address. Raises ``ValueError`` when it is none."""
    address = ip_address(text.strip())
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forwarded_client(value: str, trusted: Callable[[str], tuple[str | None, bool]]) -> str | None:
    """The client an ``X-Forwarded-For`` value names, read by the trusted-proxy algorithm
    (nginx's ``real_ip_recursive``, uvicorn's ``ProxyHeadersMiddleware``): each proxy
    appends the address it received the request from, so the entries are walked from the
    right, past every address in the trusted networks; the first one that is not trusted
    is the client. When all are trusted, the client was itself a proxy: the leftmost.

    Only the walked entries count: what lies left of the client was written by the client
    and is never looked at. None when a walked entry is not an IP address (or the value is
    empty): the caller then ignores the header. ``trusted`` classifies one entry's text
    (its normalised address or None, and whether it is in a trusted network)."""
    entries = value.split(",")
    for position in range(len(entries) - 1, -1, -1):
        address, is_trusted = trusted(entries[position])
        if address is None:
            return None
        if not is_trusted or position == 0:
            return address
    return None  # pragma: no cover - split() returns at least one entry


class ClientAddresses:
    """The client's address for the per-address limits: the TCP peer (``peername``), or,
    when the peer is a trusted proxy, the client its ``X-Forwarded-For`` names
    (:func:`forwarded_client`; DESIGN D4). A peer without an IP address (a Unix socket:
    only local processes reach it) counts as a trusted proxy. A request from a trusted
    proxy without the header, or with a malformed one, is the peer's own.

    ``X-Real-IP`` is never read: nginx sets it, but Envoy (Envoy Gateway), Traefik and
    others pass a client's own one through unchanged, so behind them any client could
    name itself anything; every one of them appends to ``X-Forwarded-For``.

    The walk is uvicorn's ``ProxyHeadersMiddleware``'s, not its code: that is ASGI
    middleware (streams here are served by our own protocol, before any ASGI scope), its
    trust check is private, and it takes an entry that is no address as the client (a
    client behind a trusted hop could mint a new key per request).

    Called once per stream request; parsing an address and testing it against every
    trusted network costs ~10 µs, so each address string's answer and each short header
    value's answer are remembered (at most ``MAX_KNOWN_ADDRESSES`` each): a connect storm
    comes from few addresses."""

    __slots__ = ("_trusted", "_known", "_forwarded")

    def __init__(self, trusted: Iterable[Network]) -> None:
        self._trusted = tuple(trusted)
        #: address text → (its normalised address or None, whether it is a trusted proxy)
        self._known: dict[str, tuple[str | None, bool]] = {}
        #: X-Forwarded-For value → the client it names, or None when malformed
        self._forwarded: dict[bytes, str | None] = {}

    def __call__(self, peer: object, headers: Sequence[tuple[bytes, bytes]]) -> str:
        host = peer[0] if isinstance(peer, tuple) and peer else None
        address: str | None = None
        if isinstance(host, str):
            address, trusted = self.classify(host)
            if not trusted:
                return address or host
        forwarded: bytes | None = None
        for name, value in headers:
            if name == FORWARDED_FOR:
                # several header lines are one list, in order (RFC 9110, 5.3)
                forwarded = value if forwarded is None else forwarded + b"," + value
        if forwarded is not None:
            client = self._forwarded_client(forwarded)
            if client is not None:
                return client
        return address or "local"

    def classify(self, text: str) -> tuple[str | None, bool]:
        """An address text's normalised address (None when it is not an address) and
        whether it lies in a trusted network; remembered."""
        known = self._known.get(text)
        if known is None:
            try:
                address = parse_address(text)
            except ValueError:
                known = (None, False)
            else:
                known = (str(address), any(address in network for network in self._trusted))
            if len(text) <= MAX_ADDRESS_TEXT:
                if len(self._known) >= MAX_KNOWN_ADDRESSES:
                    self._known.clear()
                self._known[text] = known
        return known

    def _forwarded_client(self, value: bytes) -> str | None:
        if value in self._forwarded:
            return self._forwarded[value]
        found = forwarded_client(value.decode("latin-1"), self.classify)
        if len(value) <= MAX_REMEMBERED_FORWARDED:
            if len(self._forwarded) >= MAX_KNOWN_ADDRESSES:
                self._forwarded.clear()
            self._forwarded[value] = found
        return found


def client_ip(
    peer: object, headers: Sequence[tuple[bytes, bytes]], trusted: Iterable[Network]
) -> str:
    """:class:`ClientAddresses` without its memory (for one-off callers)."""
    return ClientAddresses(trusted)(peer, headers)


class StreamCounts:
    """Open streams per key (IP or user); a key's entry exists only while it holds some."""

    __slots__ = ("limit", "_counts")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def full(self, key: str) -> bool:
        return self._counts.get(key, 0) >= self.limit

    def add(self, key: str) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1

    def remove(self, key: str) -> None:
        left = self._counts.get(key, 0) - 1
        if left > 0:
            self._counts[key] = left
        else:
            self._counts.pop(key, None)

    def __len__(self) -> int:
        return len(self._counts)

    def __getitem__(self, key: str) -> int:
        return self._counts.get(key, 0)


def take_token(
    tokens: float, at: float, now: float, rate: float, burst: float
) -> tuple[float, float]:
    """One token from a bucket that held ``tokens`` at time ``at``: the tokens left at
    ``now``, and 0.0 when one was taken, else the seconds until one is available."""
    tokens = min(burst, tokens + (now - at) * rate)
    if tokens < 1.0:
        return tokens, (1.0 - tokens) / rate
    return tokens - 1.0, 0.0


class TokenBucket:
    """What one token bucket holds (a WebSocket's own subscribe ops): its rate and burst
    are its owner's (:meth:`Admission.admit_subscribe`)."""

    __slots__ = ("tokens", "at")

    def __init__(self, burst: float) -> None:
        self.tokens = burst
        self.at = 0.0


class TokenBuckets:
    """A token bucket per key: ``burst`` requests at once, then ``rate`` per second."""

    __slots__ = ("rate", "burst", "_buckets", "_swept")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        #: key → (tokens, at) — tokens left at monotonic time ``at``
        self._buckets: dict[str, tuple[float, float]] = {}
        self._swept = 0.0

    def take(self, key: str, now: float) -> float:
        """Take one token; 0.0 when granted, else the seconds until one is available."""
        if now - self._swept >= SWEEP_SECONDS:
            self._sweep(now)
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens, wait = take_token(tokens, at, now, self.rate, self.burst)
        self._buckets[key] = (tokens, now)
        return wait

    def _sweep(self, now: float) -> None:
        self._swept = now
        full = [
            key
            for key, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class Admission:
    """Whether a client may open one more stream: its connect rate and stream count per
    address, its private streams per user; and whether a WebSocket may subscribe once
    more. Refusals are 429 problems, counted per limit in ``limited``; a stream that was
    admitted is ``hold``-ed until ``release``."""

    __slots__ = (
        "client_ip",
        "streams_per_ip",
        "streams_per_user",
        "connect_rate",
        "subscribe_rate",
        "connection_subscribe_rate",
        "connection_subscribe_burst",
        "limited",
        "_retry_seconds",
    )

    def __init__(
        self,
        trusted_proxies: Iterable[Network],
        *,
        max_streams_per_ip: int,
        max_streams_per_user: int,
        connect_rate_per_ip: float,
        connect_burst_per_ip: int,
        subscribe_rate_per_connection: float,
        subscribe_burst_per_connection: int,
        subscribe_rate_per_ip: float,
        subscribe_burst_per_ip: int,
        retry_ms: int,
        limited: dict[str, int],
    ) -> None:
        self.client_ip = ClientAddresses(trusted_proxies)
        self.streams_per_ip = StreamCounts(max_streams_per_ip)
        self.streams_per_user = StreamCounts(max_streams_per_user)
        self.connect_rate = TokenBuckets(connect_rate_per_ip, connect_burst_per_ip)
        #: WebSocket subscribe ops per address (each connection has a bucket of its own)
        self.subscribe_rate = TokenBuckets(subscribe_rate_per_ip, subscribe_burst_per_ip)
        self.connection_subscribe_rate = subscribe_rate_per_connection
        self.connection_subscribe_burst = float(subscribe_burst_per_connection)
        #: limit name → requests refused by it (shared with the gateway's stats)
        self.limited = limited
        self._retry_seconds = retry_ms / 1000

    def admit_ip(self, ip: str, now: float) -> None:
        """Per-client-IP limits: the connect rate (token bucket), then concurrent streams;
        ``now``: ``time.monotonic()``."""
        wait = self.connect_rate.take(ip, now)
        if wait:
            rate = self.connect_rate
            raise self._too_many(
                "ip-rate",
                f"more than {rate.burst:g} stream requests from one address "
                f"in a burst, or {rate.rate:g}/s sustained",
                wait,
            )
        if self.streams_per_ip.full(ip):
            raise self._too_many(
                "ip-streams",
                f"one address may hold at most {self.streams_per_ip.limit} streams",
            )

    def subscribe_bucket(self) -> TokenBucket:
        """A new WebSocket's own bucket for :meth:`admit_subscribe`."""
        return TokenBucket(self.connection_subscribe_burst)

    def admit_subscribe(self, ip: str, bucket: TokenBucket, now: float) -> None:
        """A WebSocket subscribe (each may start a catch-up and a booking-api request): the
        connection's rate, then its address's; ``now``: ``time.monotonic()``."""
        rate, burst = self.connection_subscribe_rate, self.connection_subscribe_burst
        bucket.tokens, wait = take_token(bucket.tokens, bucket.at, now, rate, burst)
        bucket.at = now
        if wait:
            raise self._too_many(
                "ws-subscribe-rate",
                f"more than {burst:g} subscribes on one connection in a burst, "
                f"or {rate:g}/s sustained",
                wait,
            )
        per_ip = self.subscribe_rate
        wait = per_ip.take(ip, now)
        if wait:
            raise self._too_many(
                "ws-subscribe-ip-rate",
                f"more than {per_ip.burst:g} subscribes from one address in a burst, "
                f"or {per_ip.rate:g}/s sustained",
                wait,
            )

    def admit_user(self, request: StreamRequest) -> str | None:
        """Streams with a private channel count against their user (the token's ``sub``)."""
        if request.principal is None or not any(c.is_private for c in request.channels):
            return None
        user = request.principal.user_id
        if self.streams_per_user.full(user):
            raise self._too_many(
                "user-streams",
                f"one user may hold at most {self.streams_per_user.limit} private streams",
            )
        return user

    def hold(self, ip: str, user: str | None) -> None:
        """Count an admitted stream against its address and (private streams) its user."""
        self.streams_per_ip.add(ip)
        if user is not None:
            self.streams_per_user.add(user)

    def hold_user(self, user: str) -> None:
        """Count a held stream against its user too, once known (a redeemed ticket)."""
        self.streams_per_user.add(user)

    def release(self, ip: str, user: str | None) -> None:
        self.streams_per_ip.remove(ip)
        if user is not None:
            self.streams_per_user.remove(user)

    def _too_many(self, limit: str, detail: str, wait: float | None = None) -> Problem:
        """A 429; without ``wait`` (a stream limit) come back after the usual ``retry:``."""
        self.limited[limit] += 1
        seconds = self._retry_seconds if wait is None else wait
        return Problem(429, "Too Many Requests", detail, (("retry-after", retry_after(seconds)),))
