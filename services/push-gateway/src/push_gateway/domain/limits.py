"""Per-client admission limits: who the client is, how many streams it holds, how fast it
connects. Touched only when a stream is requested or closed, never per delivery.

Memory stays bounded by the number of clients that are active right now: a stream counter
is deleted when it drops to 0, and a token bucket is deleted once it would be full again
(swept at most once a second, and only the buckets that are full).
"""

import math
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Final

Network = IPv4Network | IPv6Network

#: how often (seconds) full token buckets are swept away
SWEEP_SECONDS: Final = 1.0


def client_ip(
    peer: object, headers: Sequence[tuple[bytes, bytes]], trusted: Iterable[Network]
) -> str:
    """The client's address: the TCP peer (``peername``), or the ``X-Real-IP`` the edge set
    when the peer is a trusted proxy (DESIGN D4). A peer without an IP address (a Unix
    socket: only local processes reach it) counts as a trusted proxy. A malformed header
    is ignored."""
    host = peer[0] if isinstance(peer, tuple) and peer else None
    address: IPv4Address | IPv6Address | None = None
    if isinstance(host, str):
        try:
            address = ip_address(host)
        except ValueError:
            address = None
    if address is not None and not any(address in network for network in trusted):
        return str(address)
    for name, value in headers:
        if name == b"x-real-ip":
            try:
                return str(ip_address(value.decode("latin-1").strip()))
            except ValueError:
                break
    return str(address) if address is not None else "local"


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
