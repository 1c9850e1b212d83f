"""The segment tap stamps each segment when it reached the receiver on loopback, where the
receiver's own socket, read late, gives an earlier frame the stamp of the one after it."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from slotstream_testkit.segment_tap import SO_TIMESTAMPNS, SegmentTap, received_at

NEEDLE = b"slot-5e2b71"
MIN_PAYLOAD = 400


@contextmanager
def connection() -> Iterator[tuple[socket.socket, socket.socket, int]]:
    """A loopback TCP connection: the server's end, the client's end (receive stamps on),
    and the server's port."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        yield server, client, listener.getsockname()[1]
    finally:
        for sock in (server, client, listener):
            sock.close()


def open_tap(port: int, relays: list[int] | None = None, to: list[int] | None = None) -> SegmentTap:
    tap = SegmentTap.open(port, MIN_PAYLOAD, relays or [], to or [])
    if tap is None:
        pytest.skip("the segment tap needs CAP_NET_RAW: make test as root (.ci/run, CI)")
    return tap


def frame(body: bytes, size: int) -> bytes:
    return b"event: slot\ndata: " + body.ljust(size, b"x") + b"\n\n"


def test_a_frame_read_after_the_next_one_keeps_its_own_arrival() -> None:
    with connection() as (server, client, port):
        tap = open_tap(port)
        try:
            tap.watch(NEEDLE, {client.getsockname()[1]: 7})
            sent = time.time_ns()
            server.send(frame(NEEDLE, 500))
            time.sleep(0.2)
            server.send(frame(b"background", 500))
            time.sleep(0.05)
            found = tap.stop()
            data, ancillary, _, _ = client.recvmsg(65536, 64)
        finally:
            tap.close()
    assert NEEDLE in data
    assert b"background" in data
    assert set(found) == {7}
    assert (found[7] - sent) / 1e6 < 50, (found[7] - sent) / 1e6
    # the client's socket, read after both arrived, has one stamp for the two: the second's
    assert (received_at(ancillary, 0) - sent) / 1e6 >= 190


def test_only_large_segments_from_the_port_during_a_watch_are_stamped() -> None:
    with connection() as (server, client, port), connection() as (other, other_client, _):
        tap = open_tap(port)
        try:
            ports = {client.getsockname()[1]: 1, other_client.getsockname()[1]: 2}
            server.send(frame(NEEDLE, 500))  # before the watch
            tap.watch(NEEDLE, ports)
            server.send(frame(NEEDLE, 100))  # too small for the filter
            other.send(frame(NEEDLE, 500))  # another server's port
            time.sleep(0.05)
            assert tap.stop() == {}
            tap.watch(NEEDLE, ports)
            server.send(frame(NEEDLE, 500))
            time.sleep(0.05)
            assert set(tap.stop()) == {1}
            assert tap.dropped() == 0
        finally:
            tap.close()


def test_a_relay_s_segments_are_stamped_only_to_the_ports_named() -> None:
    """The gateways' segments to the few clients straight on them, not the many to the
    edge: the filter passes a relay's segment only to the ports it is given."""
    with (
        connection() as (edge, _edge_client, edge_port),
        connection() as (relay, direct_client, relay_port),
        connection() as (relay_to_edge, edge_upstream, relay_port_2),
    ):
        direct_port, upstream_port = direct_client.getsockname()[1], edge_upstream.getsockname()[1]
        tap = open_tap(edge_port, [relay_port, relay_port_2], [direct_port])
        try:
            tap.watch(NEEDLE, {direct_port: 1, upstream_port: 2})
            relay.send(frame(NEEDLE, 500))
            relay_to_edge.send(frame(NEEDLE, 500))
            time.sleep(0.05)
            assert set(tap.stop()) == {1}
        finally:
            tap.close()
