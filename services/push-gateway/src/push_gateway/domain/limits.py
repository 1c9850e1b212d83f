"""Per-client admission limits: who the client is, how many streams it holds, how fast it
connects. Touched only when a stream is requested or closed, never per delivery.

Memory stays bounded by the number of clients that are active right now: a stream counter
is deleted when it drops to 0, and a token bucket is deleted once it would be full again
(swept at most once a second, and only the buckets that are full).
"""

import math
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Final

from push_gateway.domain.requests import Problem, StreamRequest

Network = IPv4Network | IPv6Network

#: how often (seconds) full token buckets are swept away
SWEEP_SECONDS: Final = 1.0


#: addresses classified at most (then forgotten all at once): far more than the peers of
#: one gateway (the edge's few addresses, or clients' addresses without an edge)
MAX_KNOWN_ADDRESSES: Final = 4096


class ClientAddresses:
    """The client's address: the TCP peer (``peername``), or the ``X-Real-IP`` the edge set
    when the peer is a trusted proxy (DESIGN D4). A peer without an IP address (a Unix
    socket: only local processes reach it) counts as a trusted proxy. A malformed header
    is ignored.

    Called once per stream request; parsing an address and testing it against every
    trusted network costs ~10 µs, so each address string's answer is remembered (at most
    ``MAX_KNOWN_ADDRESSES``): a connect storm comes from few addresses."""

    __slots__ = ("_trusted", "_peers", "_forwarded")

    def __init__(self, trusted: Iterable[Network]) -> None:
        self._trusted = tuple(trusted)
        #: peer host → (its normalised address or None, whether it is a trusted proxy)
        self._peers: dict[str, tuple[str | None, bool]] = {}
        #: X-Real-IP value → its normalised address, or None when malformed
        self._forwarded: dict[bytes, str | None] = {}

    def __call__(self, peer: object, headers: Sequence[tuple[bytes, bytes]]) -> str:
        host = peer[0] if isinstance(peer, tuple) and peer else None
        address, trusted = self._peer(host) if isinstance(host, str) else (None, True)
        if not trusted:
            return address or "local"
        for name, value in headers:
            if name == b"x-real-ip":
                forwarded = self._forwarded_address(value)
                if forwarded is not None:
                    return forwarded
                break
        return address or "local"

    def _peer(self, host: str) -> tuple[str | None, bool]:
        known = self._peers.get(host)
        if known is None:
            try:
                address = ip_address(host)
            except ValueError:
                known = (None, True)
            else:
                known = (str(address), any(address in network for network in self._trusted))
            if len(self._peers) >= MAX_KNOWN_ADDRESSES:
                self._peers.clear()
            self._peers[host] = known
        return known

    def _forwarded_address(self, value: bytes) -> str | None:
        if value in self._forwarded:
            return self._forwarded[value]
        try:
            found: str | None = str(ip_address(value.decode("latin-1").strip()))
        except ValueError:
            found = None
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
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        return 0.0

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
    address, its private streams per user. Refusals are 429 problems, counted per
    limit in ``limited``; a stream that was admitted is ``hold``-ed until ``release``."""

    __slots__ = (
        "client_ip",
        "streams_per_ip",
        "streams_per_user",
        "connect_rate",
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
        retry_ms: int,
        limited: dict[str, int],
    ) -> None:
        self.client_ip = ClientAddresses(trusted_proxies)
        self.streams_per_ip = StreamCounts(max_streams_per_ip)
        self.streams_per_user = StreamCounts(max_streams_per_user)
        self.connect_rate = TokenBuckets(connect_rate_per_ip, connect_burst_per_ip)
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
