"""The nginx edge from deploy/edge/ in front of fake upstreams: routing, SSE safety, failover.

The fakes stand in for the booking-api and the two gateways so that each property of the
proxy is checked on its own: frames pass through one by one (no buffering, no gzip), a dead
gateway is skipped, no query string reaches the access log, per-address limits answer 429
problem+json, the client address is passed on, and the TLS/HTTP/2 server renders (HSTS).
"""

from __future__ import annotations

import asyncio
import re
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
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from scripts.devstack import (
    EDGE_DIR,
    WEB_ROOT,
    DevStack,
    Ports,
    http2_for,
    nginx_binary,
    render_template,
)
from slotstream_testkit.net import free_port, wait_for_port

pytestmark = pytest.mark.integration

FRAME_GAP = 1.0


def fake_gateway(name: str) -> Starlette:
    async def stream(request: Request) -> Response:
        hold = float(request.query_params.get("hold", FRAME_GAP))

        async def body() -> AsyncIterator[bytes]:
            yield b'id: s0:1\nevent: presence\ndata: {"gateway": "%s"}\n\n' % name.encode()
            await asyncio.sleep(hold)
            yield b"id: s0:2\nevent: presence\ndata: {}\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    async def headers(request: Request) -> Response:
        """The request headers the edge sent (a plain GET on any of the gateway's paths)."""
        return JSONResponse(dict(request.headers))

    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(name)
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass  # held open until the client goes

    return Starlette(
        routes=[
            Route("/api/book-now/schedule-updates", stream),
            Route("/v1/events", stream),
            WebSocketRoute("/v1/ws", socket),
            Route("/v1/ws", headers),  # a GET that asked no upgrade
            Route("/v1/headers", headers),
        ]
    )


def fake_api() -> Starlette:
    async def instructors(request: Request) -> Response:
        return JSONResponse([{"who": "booking-api", "path": request.url.path}])

    async def client(request: Request) -> Response:
        """What the edge told the API about the client; cached publicly, on purpose."""
        seen = {name: request.headers.get(name) for name in ("x-real-ip", "x-forwarded-for")}
        return JSONResponse(seen, headers={"Cache-Control": "public, max-age=5"})

    async def headers(request: Request) -> Response:
        return JSONResponse(dict(request.headers))

    async def write(_: Request) -> Response:
        await asyncio.sleep(0.2)
        return JSONResponse({"ok": True}, status_code=201)

    return Starlette(
        routes=[
            Route("/api/instructors", instructors),
            Route("/api/client", client),
            Route("/api/headers", headers),
            Route("/api/bookings", write, methods=["POST"]),
            Route("/api/stream-tickets", write, methods=["POST"]),
        ]
    )


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
def running_edge(
    tmp_path: Path, tls: tuple[Path, Path] | None = None, real_ip: str | None = None
) -> Iterator[Edge]:
    """nginx from deploy/edge in front of a fake booking-api and two fake gateways;
    ``real_ip`` is written to conf.d/real-ip/ (what Kubernetes mounts from a ConfigMap)."""
    nginx = nginx_binary()
    if nginx is None:
        pytest.skip("nginx is not installed (make test installs it when run as root)")
    (tmp_path / "logs").mkdir(parents=True)
    cert, key = tls or (None, None)
    stack = DevStack(
        tmp_path,
        Ports.free(),
        tls_cert=cert,
        tls_key=key,
        tls_port=free_port(),
        edge_upstream="tcp",  # the fakes listen on TCP ports
    )
    if real_ip is not None:
        real_ip_dir = Path(stack.edge_variables()["EDGE_CONF_DIR"]) / "real-ip"
        real_ip_dir.mkdir(parents=True)
        (real_ip_dir / "trusted-proxies.conf").write_text(real_ip)
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
    """The upstream holds its second frame for 30 s: a buffering or gzipping edge would
    hold the first one back with it, past the client's 10 s read timeout."""
    async with httpx.AsyncClient(base_url=edge.url, timeout=10) as client:
        for path in ("/api/book-now/schedule-updates?instructorId=i1", "/v1/events?channel=x"):
            try:
                first, _arrived, _done = await first_frame(client, f"{path}&hold=30", whole=False)
            except httpx.ReadTimeout:
                pytest.fail(f"{path}: the first frame waited for the next (buffered)")
            assert first.startswith(b"id: s0:1\nevent: presence\n")


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


def page_files() -> set[str]:
    """The files the page loads: index.html, what it links to and what its modules import."""
    html = (WEB_ROOT / "index.html").read_text()
    names = {"index.html", *re.findall(r'(?:src|href)="([\w.-]+)"', html)}
    for module in [name for name in names if name.endswith(".js")]:
        names |= set(
            re.findall(r'^import .* from "\./([\w.-]+)";', (WEB_ROOT / module).read_text(), re.M)
        )
    return names


async def test_only_the_page_s_own_files_are_served(edge: Edge) -> None:
    """web/ holds more than the page (its README, a .gitignore): only the page and its
    assets are served; any other path gets the same 404 problem+json as a missing file
    (the edge's errors are problem+json), so nothing tells the one from the other."""
    served = page_files()
    assert {"app.js", "styles.css", "i18n.js", "slotstream-client.js"} <= served
    async with httpx.AsyncClient(base_url=edge.url, timeout=10) as client:
        for name in sorted(served):
            assert (await client.get(f"/{name}")).status_code == 200, name
        missing = await client.get("/no-such-file.js")
        others = [p.name for p in WEB_ROOT.iterdir() if p.name not in served]
        assert "README.md" in others
        for name in others:
            hidden = await client.get(f"/{name}")
            assert (hidden.status_code, hidden.content) == (404, missing.content), name
            assert hidden.headers["content-type"] == missing.headers["content-type"], name
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["status"] == 404
        assert "content-security-policy" in missing.headers


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


async def test_a_dead_gateway_puts_no_ticket_in_any_log(edge: Edge) -> None:
    """nginx writes the request line into every error-log message, e.g. when a gateway
    refuses the connection: the stream locations log only critical errors."""
    edge.gateways[1].stop()
    async with httpx.AsyncClient(base_url=edge.url, timeout=10) as client:
        for n in range(4):
            first, _arrived, _done = await first_frame(client, f"/v1/events?ticket=SECRET{n}")
            assert b"gateway-2" in first
    logs = [*edge.stack.logs.glob("*"), *(edge.stack.state_dir / "edge" / "logs").glob("*")]
    assert '"GET /v1/events HTTP/1.1" 200' in edge.access_log.read_text()
    for log in logs:
        assert "SECRET" not in log.read_text(), log


async def test_a_dead_gateway_puts_no_websocket_ticket_in_any_log(edge: Edge) -> None:
    """The gateway also redeems `GET /v1/ws?ticket=…`: the WebSocket location logs only
    critical errors too, or a refused connect wrote the ticket into the error log."""
    edge.gateways[1].stop()
    url = edge.url.replace("http://", "ws://") + "/v1/ws"
    for n in range(4):
        async with connect(f"{url}?ticket=SECRET{n}") as socket:
            assert await socket.recv() == "gateway-2"
    logs = [*edge.stack.logs.glob("*"), *(edge.stack.state_dir / "edge" / "logs").glob("*")]
    assert '"GET /v1/ws HTTP/1.1" 101' in edge.access_log.read_text()
    for log in logs:
        assert "SECRET" not in log.read_text(), log


def test_the_client_address_is_passed_on_and_cannot_be_forged(edge: Edge) -> None:
    forged = {"X-Real-IP": "203.0.113.9", "X-Forwarded-For": "198.51.100.7"}
    seen = httpx.get(f"{edge.url}/api/client", headers=forged, timeout=10)
    # Only the address the edge decided on: the gateways walk X-Forwarded-For past their
    # trusted networks, which hold the Docker bridge address host-local clients come from.
    assert seen.json() == {"x-real-ip": "127.0.0.1", "x-forwarded-for": "127.0.0.1"}
    # The API's own Cache-Control wins; an answer without one is not stored.
    assert seen.headers.get_list("cache-control") == ["public, max-age=5"]
    assert httpx.get(f"{edge.url}/api/instructors", timeout=10).headers["cache-control"] == (
        "no-store"
    )


def test_a_plain_request_on_the_websocket_path_is_not_sent_as_an_upgrade(edge: Edge) -> None:
    """Only a handshake (`Upgrade: websocket`) is an upgrade. A plain GET on /v1/ws, with or
    without `Connection: keep-alive`, must reach the gateway as the plain request it is,
    not as `Connection: upgrade` without an `Upgrade` (RFC 9110 7.8); the handshake itself
    still passes (the WebSocket tests above)."""
    for asked in ({}, {"Connection": "keep-alive"}):
        seen = httpx.get(f"{edge.url}/v1/ws", headers=asked, timeout=10).json()
        assert "upgrade" not in seen.get("connection", "").lower(), (asked, seen)


def test_no_route_passes_on_forwarding_headers_a_client_wrote(edge: Edge) -> None:
    """The edge decides every forwarding header: on the API, the SSE locations and the
    WebSocket location alike, a client's own `Forwarded`, `X-Forwarded-Host` and
    `X-Forwarded-Port` are dropped, and `X-Forwarded-For`/`X-Real-IP`/`X-Forwarded-Proto`/
    `X-Request-Id` are the edge's (the same on every route)."""
    forged = {
        "Forwarded": "for=198.51.100.7;proto=https;host=evil.example",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Port": "443",
        "X-Forwarded-For": "198.51.100.7",
        "X-Forwarded-Proto": "https",
        "X-Real-IP": "198.51.100.7",
        "X-Request-Id": "forged-id",
    }
    for path in ("/api/headers", "/v1/headers", "/v1/ws"):
        seen = httpx.get(f"{edge.url}{path}", headers=forged, timeout=10).json()
        for name in ("forwarded", "x-forwarded-host", "x-forwarded-port"):
            assert name not in seen, (path, seen)
        assert (seen["x-forwarded-for"], seen["x-real-ip"]) == ("127.0.0.1", "127.0.0.1"), path
        assert seen["x-forwarded-proto"] == "http", path
        assert seen["x-request-id"] != "forged-id", path


def assert_too_many(response: httpx.Response) -> None:
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 429
    assert problem["title"] == "Too Many Requests"
    assert "Retry-After" in problem["detail"]


async def test_with_no_upstream_reachable_the_edge_answers_503_problem_json(edge: Edge) -> None:
    """Every gateway (and the API) down: the edge's own answer is a 503 problem+json with
    Retry-After, like its 429s and the services' own refusals, so clients back off as
    told; it was nginx's HTML 502 page, without Retry-After."""
    for upstream in edge.gateways.values():
        upstream.stop()
    paths = ("/v1/events?channel=x", "/api/book-now/schedule-updates?instructorId=i1", "/api/x")
    async with httpx.AsyncClient(base_url=edge.url, timeout=10) as client:
        for path in paths:
            answer = await client.get(path)
            assert answer.status_code == 503, (path, answer.status_code, answer.text[:80])
            assert answer.headers["content-type"] == "application/problem+json", path
            assert answer.headers["retry-after"] == "2", path
            assert answer.json()["status"] == 503, path
    with pytest.raises(InvalidStatus) as refused:
        await connect(edge.url.replace("http://", "ws://") + "/v1/ws")
    assert refused.value.response.status_code == 503
    assert refused.value.response.headers["Retry-After"] == "2"
    # the access log still tells an operator why: each upstream's own failure (refused: 502)
    log = edge.access_log.read_text()
    assert '"GET /v1/events HTTP/1.1" 503' in log
    assert "upstream_status=502, 502" in log, log[-400:]


async def test_requests_the_edge_refuses_itself_get_problem_json(edge: Edge) -> None:
    """A body past 64 KiB, a URI or header past nginx's buffers, a NUL in the path: the
    edge answers before any service sees the request. Those answers are problem+json like
    the services' (the booking-api's own 413 is), not nginx's HTML page."""
    refused = {
        "body": ("POST", "/api/bookings", {}, b"{" + b" " * 70_000 + b"}", 413),
        "uri": ("GET", "/api/" + "a" * 20_000, {}, None, 414),
        "header": ("GET", "/api/instructors", {"X-Big": "a" * 40_000}, None, 400),
        "path": ("GET", "/api/instructors/%00/schedule", {}, None, 400),
    }
    async with httpx.AsyncClient(base_url=edge.url, timeout=10) as client:
        for name, (method, path, headers, body, status) in refused.items():
            answer = await client.request(method, path, headers=headers, content=body)
            assert answer.status_code == status, (name, answer.status_code)
            assert answer.headers["content-type"] == "application/problem+json", (
                name,
                answer.text[:120],
            )
            assert answer.json()["status"] == status, name
            assert answer.headers["cache-control"] == "no-store", name
        # the answers' internal locations are no path of the site
        assert (await client.get("/.slotstream-error/413")).status_code == 404


@pytest.fixture
def strict_edge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Edge]:
    """An edge with tiny per-address limits, set the way compose or K8s would."""
    monkeypatch.setenv("EDGE_STREAMS_PER_IP", "2")
    monkeypatch.setenv("EDGE_WRITES_PER_SECOND", "1")
    monkeypatch.setenv("EDGE_WRITE_BURST", "1")
    with running_edge(tmp_path) as running:
        yield running


async def test_open_streams_per_address_are_capped(strict_edge: Edge) -> None:
    path = "/v1/events?channel=x&hold=30"
    async with httpx.AsyncClient(base_url=strict_edge.url, timeout=10) as client:
        async with client.stream("GET", path) as one, client.stream("GET", path) as two:
            assert (one.status_code, two.status_code) == (200, 200)
            third = await client.get(path)
            assert_too_many(third)
            # Other paths are not streams: still served.
            assert (await client.get("/api/instructors")).status_code == 200
        # Closed streams free their places.
        async with client.stream("GET", path) as again:
            assert again.status_code == 200


async def test_open_websockets_per_address_are_capped(strict_edge: Edge) -> None:
    """A WebSocket is a stream too: the edge's cap per address holds for `/v1/ws` (without
    it, each gateway's own cap applied, and the total grew with the number of gateways)."""
    url = strict_edge.url.replace("http://", "ws://") + "/v1/ws"
    async with connect(url) as one, connect(url) as two:
        assert {await one.recv(), await two.recv()} <= {"gateway-1", "gateway-2"}
        with pytest.raises(InvalidStatus) as refused:
            await connect(url)
        assert refused.value.response.status_code == 429
        assert refused.value.response.headers["Retry-After"]
    async with connect(url) as again:  # closed sockets free their places
        assert await again.recv()


async def test_bookings_and_tickets_have_a_stricter_rate(strict_edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=strict_edge.url, timeout=10) as client:
        for path in ("/api/bookings", "/api/stream-tickets"):
            answers = await asyncio.gather(*(client.post(path, json={}) for _ in range(6)))
            refused = [a for a in answers if a.status_code == 429]
            assert len(refused) >= 3, [a.status_code for a in answers]
            assert {a.status_code for a in answers} == {201, 429}
            for answer in refused:
                assert_too_many(answer)
        # Reads are not in the stricter zone.
        reads = await asyncio.gather(*(client.get("/api/instructors") for _ in range(6)))
        assert {r.status_code for r in reads} == {200}


CLIENT_A, CLIENT_B, CLIENT_C = "198.51.100.7", "203.0.113.9", "192.0.2.1"


@pytest.fixture
def tight_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """1 request/s, 2 more at once: a fresh address gets 3 answers, then 429."""
    monkeypatch.setenv("EDGE_REQUESTS_PER_SECOND", "1")
    monkeypatch.setenv("EDGE_REQUEST_BURST", "2")


def page_loads(edge: Edge, forwarded_for: str, count: int) -> list[int]:
    headers = {"X-Forwarded-For": forwarded_for}
    with httpx.Client(base_url=edge.url, timeout=10, headers=headers) as client:
        return [client.get("/").status_code for _ in range(count)]


def exhaust(edge: Edge, forwarded_for: str) -> None:
    """Load the page as ``forwarded_for`` until the edge answers 429."""
    statuses = page_loads(edge, forwarded_for, 10)
    assert statuses[-1] == 429, statuses


@pytest.mark.usefixtures("tight_requests")
def test_behind_a_trusted_proxy_each_client_has_its_own_allowance(tmp_path: Path) -> None:
    """In Kubernetes every browser reaches the edge through Envoy: with Envoy's networks
    trusted (here 127.0.0.1, test-only), the limits key on the client Envoy appended to
    X-Forwarded-For, so one busy client no longer uses up everyone's page loads."""
    trusted = "\n".join(
        ["set_real_ip_from 127.0.0.1;", "real_ip_header X-Forwarded-For;", "real_ip_recursive on;"]
    )
    with running_edge(tmp_path, real_ip=trusted) as edge:
        exhaust(edge, CLIENT_A)
        assert page_loads(edge, CLIENT_B, 3) == [200, 200, 200]
        # The upstreams hear of the client, not of the proxy: the right-most address
        # that is not a trusted proxy (anything left of it is the client's own word).
        forwarded = {"X-Forwarded-For": f"10.9.9.9, {CLIENT_C}"}
        seen = httpx.get(f"{edge.url}/api/client", headers=forwarded, timeout=10)
        assert seen.json() == {"x-real-ip": CLIENT_C, "x-forwarded-for": CLIENT_C}


@pytest.mark.usefixtures("tight_requests")
def test_without_trusted_proxies_a_forged_forwarded_for_changes_nothing(tmp_path: Path) -> None:
    """The default (Compose, `make demo`: clients connect straight to the edge, from
    127.0.0.1 here): X-Forwarded-For is the client's own word, and buys no new allowance."""
    with running_edge(tmp_path) as edge:
        exhaust(edge, CLIENT_A)
        assert 429 in page_loads(edge, CLIENT_B, 3)


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
        # HSTS on the TLS server only, on every path.
        for path in ("/", "/api/instructors", "/missing.js"):
            assert "strict-transport-security: max-age=" in curl("-I", f"{base}{path}").lower()
        plain = httpx.get(f"{edge.url}/", timeout=10)
        assert "strict-transport-security" not in plain.headers
        stream = curl("-N", f"{base}/api/book-now/schedule-updates?instructorId=i1")
        assert stream.count("event: presence") == 2


@pytest.mark.parametrize(
    ("version", "http2"),
    [
        ((1, 22, 1), ["listen 127.0.0.1:8443 ssl http2;"]),
        ((1, 30, 4), ["listen 127.0.0.1:8443 ssl;", "http2 on;"]),
    ],
    ids=str,
)
def test_the_tls_server_is_rendered_for_the_nginx_that_runs_it(
    version: tuple[int, int, int], http2: list[str]
) -> None:
    """Debian's 1.22 (``make demo``, these tests) knows no ``http2 on;``; 1.25.1 and later
    (the image's) warn about ``listen … http2`` at every start."""
    template = (EDGE_DIR / "tls" / "slotstream.tls.conf.template").read_text()
    rendered = http2_for(render_template(template, {"EDGE_TLS_PORT": "127.0.0.1:8443"}), version)
    code = [line.strip() for line in rendered.splitlines() if not line.lstrip().startswith("#")]
    assert [line for line in code if "http2" in line or line.startswith("listen")] == http2
