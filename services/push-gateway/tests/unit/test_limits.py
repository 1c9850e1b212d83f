"""Per-client limits: client address, stream counters, connect-rate buckets, admission,
file limit."""

import resource
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from push_gateway.app import raise_open_file_limit
from push_gateway.domain import limits
from push_gateway.domain.limits import (
    Admission,
    ClientAddresses,
    StreamCounts,
    TokenBuckets,
    client_ip,
    forwarded_client,
    retry_after,
)
from push_gateway.domain.requests import Problem, StreamRequest
from push_gateway.domain.stats import GatewayStats
from slotstream_contracts.auth import Principal
from slotstream_contracts.channels import Channel

LOOPBACK: list[IPv4Network | IPv6Network] = [IPv4Network("127.0.0.1/32"), IPv6Network("::1/128")]
#: the pod networks a Kubernetes deployment trusts (deploy/k8s/base/kustomization.yaml)
PRIVATE: list[IPv4Network | IPv6Network] = [
    IPv4Network("10.0.0.0/8"),
    IPv4Network("172.16.0.0/12"),
    IPv4Network("192.168.0.0/16"),
]
FORWARDED = [(b"x-forwarded-for", b"203.0.113.7")]


def xff(value: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-forwarded-for", value.encode())]


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        (("127.0.0.1", 5000), FORWARDED, "203.0.113.7"),  # a proxy on loopback: trusted
        (("::1", 5000, 0, 0), FORWARDED, "203.0.113.7"),
        (("::ffff:127.0.0.1", 5000, 0, 0), FORWARDED, "203.0.113.7"),  # dual-stack socket
        (("198.51.100.2", 5000), FORWARDED, "198.51.100.2"),  # anyone else: header ignored
        (("127.0.0.1", 5000), [], "127.0.0.1"),
        (("127.0.0.1", 5000), xff("not-an-ip"), "127.0.0.1"),  # malformed: the peer
        (("127.0.0.1", 5000), xff(""), "127.0.0.1"),
        (("127.0.0.1", 5000), xff("203.0.113.7:8443"), "127.0.0.1"),  # a port: malformed
        (("127.0.0.2", 5000), FORWARDED, "127.0.0.2"),  # loopback /32 only by default
        ("", FORWARDED, "203.0.113.7"),  # a Unix socket peer: a local proxy
        (None, [], "local"),
        # the client's own entries left of what the proxy appended are never read
        (("127.0.0.1", 5000), xff("198.51.100.9, 203.0.113.7"), "203.0.113.7"),
        (("127.0.0.1", 5000), xff("garbage, 203.0.113.7"), "203.0.113.7"),
        # behind two proxies (edge behind the Gateway): skip every trusted hop
        (("127.0.0.1", 5000), xff("198.51.100.9, 203.0.113.7, 127.0.0.1"), "203.0.113.7"),
        (("127.0.0.1", 5000), xff("203.0.113.7, 127.0.0.1, garbage"), "127.0.0.1"),
        (("127.0.0.1", 5000), xff("127.0.0.1, ::1"), "127.0.0.1"),  # all trusted: leftmost
        (("127.0.0.1", 5000), xff("2001:DB8::1"), "2001:db8::1"),  # normalised
        # several header lines are one list, in order
        (("127.0.0.1", 5000), xff("198.51.100.9") + xff("203.0.113.7"), "203.0.113.7"),
    ],
)
def test_client_ip_reads_x_forwarded_for_only_from_trusted_proxies(
    peer: object, headers: list[tuple[bytes, bytes]], expected: str
) -> None:
    assert client_ip(peer, headers, LOOPBACK) == expected
    remembering = ClientAddresses(LOOPBACK)
    assert [remembering(peer, headers) for _ in range(3)] == [expected] * 3


#: What Envoy Gateway forwards: the client's own X-Real-IP passed through unchanged, and the
#: client's TCP address appended to X-Forwarded-For (use_remote_address).
THROUGH_ENVOY = [(b"x-real-ip", b"198.51.100.99"), (b"x-forwarded-for", b"203.0.113.7")]


def test_a_client_s_own_x_real_ip_passed_through_a_trusted_proxy_is_not_its_address() -> None:
    addresses = ClientAddresses(LOOPBACK)
    assert addresses(("127.0.0.1", 5000), THROUGH_ENVOY) == "203.0.113.7"
    spoofed = [(b"x-real-ip", f"198.51.100.{n}".encode()) for n in range(3)]
    assert {addresses(("127.0.0.1", 5000), [header]) for header in spoofed} == {"127.0.0.1"}


def test_in_kubernetes_the_client_behind_the_gateway_and_the_edge_is_found() -> None:
    addresses = ClientAddresses(PRIVATE)
    # Envoy (10.244.0.7) → booking-api / push-gateway
    assert addresses(("10.244.0.7", 1), xff("198.51.100.1, 203.0.113.7")) == "203.0.113.7"
    # Envoy → edge (nginx, 10.244.1.3) → push-gateway
    through_edge = xff("203.0.113.7, 10.244.0.7")
    assert addresses(("10.244.1.3", 1), through_edge) == "203.0.113.7"


def test_remembered_addresses_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_KNOWN_ADDRESSES", 4)
    addresses = ClientAddresses(LOOPBACK)
    for n in range(10):
        forwarded = xff(f"203.0.113.{n}")
        assert addresses(("127.0.0.1", 1), forwarded) == f"203.0.113.{n}"
        assert addresses((f"198.51.100.{n}", 1), forwarded) == f"198.51.100.{n}"
    long_value = xff(", ".join(["198.51.100.1"] * 100 + ["203.0.113.7"]))
    assert addresses(("127.0.0.1", 1), long_value) == "203.0.113.7"
    assert addresses(("127.0.0.1", 1), xff("x" * 300)) == "127.0.0.1"  # malformed, long
    assert all(len(text) <= limits.MAX_ADDRESS_TEXT for text in addresses._known)  # noqa: SLF001
    assert len(addresses._known) <= 4  # noqa: SLF001
    assert len(addresses._forwarded) <= 4  # noqa: SLF001
    assert all(len(v) <= limits.MAX_REMEMBERED_FORWARDED for v in addresses._forwarded)  # noqa: SLF001


# -- the X-Forwarded-For walk, as properties ---------------------------------------------

TRUSTED_NET = IPv4Network("10.0.0.0/8")
trusted_hosts = st.ip_addresses(network=TRUSTED_NET).map(str)


def _untrusted(address: IPv4Address | IPv6Address) -> bool:
    """Outside TRUSTED_NET, and no IPv4-mapped IPv6 address (that one counts as IPv4)."""
    if isinstance(address, IPv6Address):
        return address.ipv4_mapped is None
    return address not in TRUSTED_NET


untrusted_hosts = (st.ip_addresses(v=4) | st.ip_addresses(v=6)).filter(_untrusted).map(str)
any_text = st.text(st.characters(codec="latin-1", exclude_characters=","), max_size=20)


def walk(value: str) -> str | None:
    return forwarded_client(value, ClientAddresses([TRUSTED_NET]).classify)


@given(
    st.lists(any_text | untrusted_hosts | trusted_hosts, max_size=5),
    untrusted_hosts,
    st.lists(trusted_hosts, max_size=4),
)
def test_the_client_is_the_rightmost_untrusted_entry_whatever_lies_left_of_it(
    left: list[str], client: str, proxies: list[str]
) -> None:
    assert walk(", ".join([*left, client, *proxies])) == str(ip_address(client))


@given(st.lists(trusted_hosts, min_size=1, max_size=5))
def test_when_every_entry_is_trusted_the_leftmost_is_the_client(hosts: list[str]) -> None:
    assert walk(",".join(hosts)) == hosts[0]


@given(
    st.lists(any_text | untrusted_hosts | trusted_hosts, max_size=4),
    any_text.filter(lambda t: not _is_address(t)),
    st.lists(trusted_hosts, max_size=4),
)
def test_a_malformed_entry_reached_by_the_walk_voids_the_header(
    left: list[str], bad: str, proxies: list[str]
) -> None:
    assert walk(",".join([*left, bad, *proxies])) is None


@given(st.text(st.characters(codec="latin-1"), max_size=60))
def test_any_header_value_names_an_address_or_nothing(value: str) -> None:
    found = walk(value)
    assert found is None or str(ip_address(found)) == found


@given(st.text(st.characters(codec="latin-1"), max_size=60), st.booleans())
def test_an_untrusted_peer_is_its_own_client_whatever_it_sends(value: str, real_ip: bool) -> None:
    headers = [(b"x-forwarded-for", value.encode("latin-1"))]
    if real_ip:
        headers.append((b"x-real-ip", b"203.0.113.7"))
    assert client_ip(("198.51.100.2", 1), headers, [TRUSTED_NET]) == "198.51.100.2"


def _is_address(text: str) -> bool:
    try:
        ip_address(text.strip())
    except ValueError:
        return False
    return True


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
    """A burst of 3 requests, then 1/s; one private stream per user; ``retry:`` 2.5 s;
    subscribes: 2 per connection, 3 per address at once, then 1/s."""
    return Admission(
        LOOPBACK,
        max_streams_per_ip=max_streams_per_ip,
        max_streams_per_user=1,
        connect_rate_per_ip=1.0,
        connect_burst_per_ip=3,
        subscribe_rate_per_connection=1.0,
        subscribe_burst_per_connection=2,
        subscribe_rate_per_ip=1.0,
        subscribe_burst_per_ip=3,
        retry_ms=2500,
        limited=GatewayStats().limited,
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


def test_websocket_subscribes_are_limited_per_connection_then_per_address() -> None:
    gate = admission()
    first, second = gate.subscribe_bucket(), gate.subscribe_bucket()  # one address's sockets
    for _ in range(2):
        gate.admit_subscribe("203.0.113.7", first, now=100.0)
    with pytest.raises(Problem) as own:
        gate.admit_subscribe("203.0.113.7", first, now=100.0)
    assert (own.value.status, own.value.headers) == (429, (("retry-after", "1"),))
    gate.admit_subscribe("203.0.113.7", second, now=100.0)  # the address's third
    with pytest.raises(Problem) as shared:
        gate.admit_subscribe("203.0.113.7", second, now=100.0)
    assert "one address" in shared.value.detail
    gate.admit_subscribe("198.51.100.2", gate.subscribe_bucket(), now=100.0)
    gate.admit_subscribe("203.0.113.7", second, now=101.0)  # a second later: one more
    assert (gate.limited["ws-subscribe-rate"], gate.limited["ws-subscribe-ip-rate"]) == (1, 1)


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
