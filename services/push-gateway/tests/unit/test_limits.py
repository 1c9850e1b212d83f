"""Per-client limits: client address, stream counters, connect-rate buckets, admission,
file limit."""

import resource
from ipaddress import IPv4Network, IPv6Network

import pytest

from push_gateway.app import raise_open_file_limit
from push_gateway.domain import limits
from push_gateway.domain.limits import (
    Admission,
    ClientAddresses,
    StreamCounts,
    TokenBuckets,
    client_ip,
    retry_after,
)
from push_gateway.domain.requests import Problem, StreamRequest
from slotstream_contracts.auth import Principal
from slotstream_contracts.channels import Channel

LOOPBACK: list[IPv4Network | IPv6Network] = [IPv4Network("127.0.0.1/32"), IPv6Network("::1/128")]
REAL_IP = [(b"x-real-ip", b"203.0.113.7")]


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        (("127.0.0.1", 5000), REAL_IP, "203.0.113.7"),  # the edge on loopback: trusted
        (("::1", 5000, 0, 0), REAL_IP, "203.0.113.7"),
        (("198.51.100.2", 5000), REAL_IP, "198.51.100.2"),  # anyone else: header ignored
        (("127.0.0.1", 5000), [], "127.0.0.1"),
        (("127.0.0.1", 5000), [(b"x-real-ip", b"not-an-ip")], "127.0.0.1"),
        (("127.0.0.2", 5000), REAL_IP, "127.0.0.2"),  # loopback /32 only by default
        ("", REAL_IP, "203.0.113.7"),  # a Unix socket peer: a local proxy
        (None, [], "local"),
    ],
)
def test_client_ip_trusts_x_real_ip_only_from_trusted_proxies(
    peer: object, headers: list[tuple[bytes, bytes]], expected: str
) -> None:
    assert client_ip(peer, headers, LOOPBACK) == expected
    remembering = ClientAddresses(LOOPBACK)
    assert [remembering(peer, headers) for _ in range(3)] == [expected] * 3


def test_remembered_addresses_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_KNOWN_ADDRESSES", 4)
    addresses = ClientAddresses(LOOPBACK)
    for n in range(10):
        forwarded = [(b"x-real-ip", f"203.0.113.{n}".encode())]
        assert addresses(("127.0.0.1", 1), forwarded) == f"203.0.113.{n}"
        assert addresses((f"198.51.100.{n}", 1), forwarded) == f"198.51.100.{n}"
    assert len(addresses._peers) <= 4  # noqa: SLF001
    assert len(addresses._forwarded) <= 4  # noqa: SLF001


def test_stream_counts_free_a_key_at_zero() -> None:
    counts = StreamCounts(limit=2)
    counts.add("a")
    counts.add("a")
    assert counts.full("a")
    assert not counts.full("b")
    counts.remove("a")
    assert not counts.full("a")
    counts.remove("a")
    assert len(counts) == 0


def test_token_bucket_grants_a_burst_then_the_rate_and_forgets_full_buckets() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3)
    assert [buckets.take("a", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", 100.0) == pytest.approx(0.5)
    assert buckets.take("a", 100.5) == 0.0  # refilled one token in half a second
    assert buckets.take("b", 100.5) == 0.0  # another client has its own bucket
    assert len(buckets) == 2
    buckets.take("c", 110.0)  # the sweep drops the buckets that are full again
    assert len(buckets) == 1


def admission(max_streams_per_ip: int = 2) -> Admission:
    """A burst of 3 requests, then 1/s; one private stream per user; ``retry:`` 2.5 s."""
    return Admission(
        LOOPBACK,
        max_streams_per_ip=max_streams_per_ip,
        max_streams_per_user=1,
        connect_rate_per_ip=1.0,
        connect_burst_per_ip=3,
        retry_ms=2500,
        limited=dict.fromkeys(("ip-rate", "ip-streams", "user-streams"), 0),
    )


def test_admission_refuses_a_burst_then_a_full_address_with_429s_it_counts() -> None:
    gate = admission(max_streams_per_ip=10)
    for _ in range(3):
        gate.admit_ip("203.0.113.7", now=100.0)
    with pytest.raises(Problem) as refused:
        gate.admit_ip("203.0.113.7", now=100.0)
    assert refused.value.status == 429
    assert refused.value.headers == (("retry-after", "1"),)
    gate.admit_ip("198.51.100.2", now=100.0)  # another address has its own bucket
    full = admission()
    full.hold("203.0.113.7", None)
    full.hold("203.0.113.7", None)
    with pytest.raises(Problem) as again:
        full.admit_ip("203.0.113.7", now=0.0)
    assert again.value.headers == (("retry-after", "3"),)  # the usual retry: 2.5 s
    full.release("203.0.113.7", None)
    full.admit_ip("203.0.113.7", now=0.0)
    assert (gate.limited["ip-rate"], full.limited["ip-streams"]) == (1, 1)


def test_admission_counts_only_private_streams_against_their_user() -> None:
    gate = admission()
    user = Principal.model_validate({"sub": "u1", "role": "student"})
    public = StreamRequest(channels=(Channel.schedule("i1"),), resume_from=None, principal=user)
    private = StreamRequest(
        channels=(Channel.parse("users/u1/notifications"),), resume_from=None, principal=user
    )
    assert gate.admit_user(public) is None
    assert gate.admit_user(private) == "u1"
    gate.hold("203.0.113.7", "u1")
    with pytest.raises(Problem):
        gate.admit_user(private)
    assert gate.admit_user(public) is None  # a public stream is not limited per user
    gate.release("203.0.113.7", "u1")
    assert gate.admit_user(private) == "u1"
    assert gate.limited["user-streams"] == 1


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert [retry_after(s) for s in (0.0, 0.2, 1.0, 2.5)] == ["1", "1", "1", "3"]


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, 512) if hard == resource.RLIM_INFINITY else min(soft, hard - 1, 512)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        raise_open_file_limit()
        if hard != resource.RLIM_INFINITY:
            assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, lowered), hard))
