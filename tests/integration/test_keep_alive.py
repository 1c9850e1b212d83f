"""Keep-alive between the edge and the services (issue 11 defect 7).

nginx keeps idle upstream connections for its ``keepalive_timeout`` (60 s unless the
``upstream`` block sets one) and does not retry a POST on a connection the upstream has just
closed: the browser gets a 502. So every service must keep an idle connection open longer
than the edge does.
"""

from __future__ import annotations

import http.client
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from booking_api.config import Settings as BookingApiSettings
from change_publisher.config import Settings as PublisherSettings
from push_gateway.config import Settings as GatewaySettings
from scripts.devstack import EDGE_DIR, DevStack

pytestmark = pytest.mark.integration

NGINX_DEFAULT_UPSTREAM_KEEPALIVE_TIMEOUT = 60.0
UVICORN_DEFAULT_KEEP_ALIVE = 5.0


def seconds(value: str) -> float:
    """An nginx time (``75``, ``75s``, ``2m``, ``1h``) in seconds."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert match, f"unexpected nginx time {value!r}"
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]
    return int(match.group(1)) * unit


def edge_upstream_keepalive_timeouts() -> dict[str, float]:
    """Each upstream of the edge templates and how long nginx keeps its idle connections."""
    found: dict[str, float] = {}
    for template in EDGE_DIR.rglob("*.template"):
        text = template.read_text()
        for name, body in re.findall(r"upstream\s+(\S+)\s*\{([^}]*)\}", text):
            timeout = re.search(r"^\s*keepalive_timeout\s+(\S+);", body, re.MULTILINE)
            found[name] = (
                seconds(timeout.group(1)) if timeout else NGINX_DEFAULT_UPSTREAM_KEEPALIVE_TIMEOUT
            )
    return found


def test_every_service_outlasts_the_edges_upstream_keepalive() -> None:
    edge = edge_upstream_keepalive_timeouts()
    assert edge, f"no upstream block found under {EDGE_DIR}"
    longest = max(edge.values())
    services = {
        "booking-api": BookingApiSettings.model_fields["keep_alive_timeout_seconds"].default,
        "change-publisher": PublisherSettings.model_fields[
            "http_keep_alive_timeout_seconds"
        ].default,
        "push-gateway": GatewaySettings.model_fields["keep_alive_timeout_seconds"].default,
    }
    for service, keep_alive in services.items():
        assert keep_alive > longest, f"{service} {keep_alive}s <= edge {edge}"


def reused_after_idle(port: int, idle: float) -> tuple[int, int]:
    """Two GETs on one connection with ``idle`` seconds between them: both statuses."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/healthz")
        first = connection.getresponse()
        first.read()
        sock = connection.sock
        time.sleep(idle)
        connection.request("GET", "/healthz")
        assert connection.sock is sock, "the client opened a new connection"
        second = connection.getresponse()
        second.read()
        return first.status, second.status
    finally:
        connection.close()


def test_the_services_keep_an_idle_connection_past_uvicorns_default(stack: DevStack) -> None:
    """What nginx does between two requests: reuse a connection idle for a while. With
    uvicorn's default (5 s) the service has closed it and the second request fails."""
    ports = {
        "booking-api": stack.ports.booking_api,
        "change-publisher": stack.ports.publisher,
        "push-gateway": stack.ports.gateway_1,
    }
    idle = UVICORN_DEFAULT_KEEP_ALIVE + 1.5
    with ThreadPoolExecutor(len(ports)) as pool:
        results = {name: pool.submit(reused_after_idle, port, idle) for name, port in ports.items()}
        for name, result in results.items():
            try:
                assert result.result() == (200, 200), name
            except (http.client.HTTPException, OSError) as exc:
                pytest.fail(f"{name} closed an idle keep-alive connection after {idle}s: {exc!r}")


def test_the_edge_cuts_a_silent_stream_within_about_a_minute() -> None:
    """The stream locations' read timeout outlasts two heartbeats (one stream's heartbeats
    may be up to two periods apart) yet cuts a frozen gateway in about a minute, not an hour."""
    text = (EDGE_DIR / "slotstream-sse.inc.template").read_text()
    [value] = re.findall(r"^proxy_read_timeout\s+(\S+);", text, re.MULTILINE)
    heartbeat = GatewaySettings.model_fields["heartbeat_seconds"].default
    assert 2 * heartbeat < seconds(value) <= 90
