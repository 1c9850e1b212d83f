"""The nginx edge from deploy/edge/ in front of fake upstreams: routing, SSE safety, failover.

The fakes stand in for the booking-api and the two gateways so that each property of the
proxy is checked on its own: frames pass through one by one (no buffering, no gzip), a dead
gateway is skipped, tokens stay out of the access log, and the TLS/HTTP/2 server renders.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from scripts.devstack import DevStack, Ports, nginx_binary
from slotstream_testkit.net import free_port, wait_for_port

pytestmark = pytest.mark.integration

FRAME_GAP = 1.0


def fake_gateway(name: str) -> Starlette:
    async def stream(_: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b'id: s0:1\nevent: presence\ndata: {"gateway": "%s"}\n\n' % name.encode()
            await asyncio.sleep(FRAME_GAP)
            yield b"id: s0:2\nevent: presence\ndata: {}\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/api/book-now/schedule-updates", stream),
            Route("/v1/events", stream),
        ]
    )


def fake_api() -> Starlette:
    async def instructors(request: Request) -> Response:
        return JSONResponse([{"who": "booking-api", "path": request.url.path}])

    return Starlette(routes=[Route("/api/instructors", instructors)])


@dataclass
class Upstream:
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def serve(app: Starlette, port: int) -> Upstream:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port("127.0.0.1", port)
    return Upstream(server, thread)


@dataclass
class Edge:
    stack: DevStack
    gateways: dict[int, Upstream]

    @property
    def url(self) -> str:
        return self.stack.base_url

    @property
    def access_log(self) -> Path:
        return self.stack.logs / "edge.log"


@contextmanager
def running_edge(tmp_path: Path, tls: tuple[Path, Path] | None = None) -> Iterator[Edge]:
    """nginx from deploy/edge in front of a fake booking-api and two fake gateways."""
    nginx = nginx_binary()
    if nginx is None:
        pytest.skip("nginx is not installed (make test installs it when run as root)")
    (tmp_path / "logs").mkdir(parents=True)
    cert, key = tls or (None, None)
    stack = DevStack(tmp_path, Ports.free(), tls_cert=cert, tls_key=key, tls_port=free_port())
    upstreams = {
        0: serve(fake_api(), stack.ports.booking_api),
        1: serve(fake_gateway("gateway-1"), stack.ports.gateway_1),
        2: serve(fake_gateway("gateway-2"), stack.ports.gateway_2),
    }
    try:
        stack.start_edge(nginx)
        yield Edge(stack, upstreams)
    finally:
        stack.stop()
        for upstream in upstreams.values():
            upstream.stop()


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    with running_edge(tmp_path) as running:
        yield running


async def first_frame(
    client: httpx.AsyncClient, url: str, *, whole: bool = True
) -> tuple[bytes, float, float]:
    """The first SSE frame, when it arrived, and (``whole``) when the whole body had."""
    started = time.monotonic()
    async with client.stream("GET", url, headers={"Accept-Encoding": "gzip"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in response.headers
        chunks = response.aiter_raw()
        first = await anext(chunks)
        arrived = time.monotonic() - started
        if not whole:
            return first, arrived, arrived
        async for _ in chunks:
            pass
        return first, arrived, time.monotonic() - started


async def test_sse_frames_pass_through_unbuffered_and_ungzipped(edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=edge.url, timeout=10) as client:
        for path in ("/api/book-now/schedule-updates?instructorId=i1", "/v1/events?channel=x"):
            first, arrived, done = await first_frame(client, path)
            assert first.startswith(b"id: s0:1\nevent: presence\n")
            assert arrived < FRAME_GAP / 2, "the first frame waited for the next (buffered)"
            assert done >= FRAME_GAP


async def test_routes_the_api_and_serves_the_page(edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=edge.url, timeout=10) as client:
        api = await client.get("/api/instructors")
        assert api.json() == [{"who": "booking-api", "path": "/api/instructors"}]
        page = await client.get("/")
        assert page.status_code == 200
        assert "Book Now" in page.text
        module = await client.get("/slotstream-client.js")
        assert module.headers["content-type"].startswith("application/javascript")
        assert (await client.get("/demo-users.json")).status_code == 404  # not seeded here
        assert (await client.get("/edge-healthz")).text == "ok\n"


async def test_round_robin_and_a_dead_gateway_is_skipped(edge: Edge) -> None:
    path = "/api/book-now/schedule-updates?instructorId=i1"
    async with httpx.AsyncClient(base_url=edge.url, timeout=10) as client:
        frames = [(await first_frame(client, path, whole=False))[0] for _ in "ab"]
        seen = {frame.split(b'"gateway": "')[1][:9] for frame in frames}
        assert seen == {b"gateway-1", b"gateway-2"}

        edge.gateways[1].stop()
        for _ in range(4):
            first, _arrived, _done = await first_frame(client, path, whole=False)
            assert b"gateway-2" in first


def test_query_strings_stay_out_of_the_access_log(edge: Edge) -> None:
    url = f"{edge.url}/v1/events?channel=a&ticket=SECRET-TICKET&access%5Ftoken=SECRET.JWT&x=1"
    assert httpx.get(url, timeout=10).status_code == 200
    deadline = time.monotonic() + 5
    while "/v1/events" not in edge.access_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = edge.access_log.read_text()
    assert '"GET /v1/events HTTP/1.1"' in log  # the path only: tickets stay out
    assert "SECRET" not in log


def test_the_tls_server_speaks_http2_and_streams(tmp_path: Path) -> None:
    if shutil.which("openssl") is None or shutil.which("curl") is None:
        pytest.skip("needs the openssl and curl command-line tools")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    with running_edge(tmp_path / "edge", tls=(cert, key)) as edge:
        assert edge.stack.tls is not None
        base = f"https://127.0.0.1:{edge.stack.tls[2]}"
        rendered = (edge.stack.state_dir / "edge" / "conf.d" / "slotstream.tls.conf").read_text()
        assert "${" not in rendered

        def curl(*args: str) -> str:
            result = subprocess.run(
                ["curl", "-sk", "--http2", "--max-time", "5", *args],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            return result.stdout

        assert curl("-o", "/dev/null", "-w", "%{http_version}", f"{base}/") == "2"
        stream = curl("-N", f"{base}/api/book-now/schedule-updates?instructorId=i1")
        assert stream.count("event: presence") == 2
