"""One pure-ASGI middleware for every request: request id, body limit, metrics, access log.

Pure ASGI (not ``BaseHTTPMiddleware``) keeps the hot path cheap: no extra task, no body
copies. It is the outermost layer, so it also turns an unexpected exception into a 500
problem response (and counts it) instead of a bare text error.
"""

import logging
import re
import time
from typing import Any

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from booking_api.api.metrics import Metrics
from booking_api.api.responses import PROBLEM_JSON
from booking_api.ids import new_id

log = structlog.get_logger("booking_api.http")

REQUEST_ID_HEADER = b"x-request-id"
_REQUEST_ID_RE = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
#: Answers about one user: never kept by a browser or shared cache (issue 10, item 10),
#: as is any answer to a request that carries credentials.
_PRIVATE_PATHS = ("/api/users/", "/api/bookings", "/api/stream-tickets", "/internal/")
_NO_STORE = (b"cache-control", b"no-store")


def _add_context_headers(message: Message, request_id: bytes, private: bool) -> None:
    """Every answer's head carries the request id; a private one ``no-store``, whatever
    the app said about caching."""
    headers = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id)]
    if private:
        headers = [h for h in headers if h[0].lower() != b"cache-control"]
        headers.append(_NO_STORE)
    message["headers"] = headers


class BodyTooLarge(Exception):
    """Raised into the app by ``receive`` once the body passes the limit: the request must
    not run on the part read so far (a valid prefix would otherwise be acted on, and the
    client, told 413, would send it again)."""


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self._access_log = logging.getLogger("booking_api.http")
        # prometheus_client's ``labels()`` costs a lock and a tuple per call; the children
        # for each (method, route, status) are looked up once and kept.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = b""
        length: int | None = None
        private = scope["path"].startswith(_PRIVATE_PATHS)
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER and _REQUEST_ID_RE.fullmatch(value):
                request_id = value
            elif name == b"content-length":
                length = int(value) if value.isdigit() else None
            elif name == b"authorization":
                private = True
        if not request_id:
            request_id = (new_id() + new_id()[8:16]).encode()
        rid = request_id.decode()
        structlog.contextvars.bind_contextvars(request_id=rid)
        status = 500
        response_started = False

        received = 0
        limit = self.max_body_bytes
        over_limit = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if over_limit:
                # The body was cut at the limit; whatever the app answered, the answer is 413.
                if message["type"] == "http.response.start" and not response_started:
                    response_started = True
                    await self._too_large(send_wrapper_raw)
                return
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                _add_context_headers(message, request_id, private)
            await send(message)

        async def send_wrapper_raw(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                _add_context_headers(message, request_id, private)
            await send(message)

        async def receive_limited() -> Message:
            nonlocal received, over_limit
            if over_limit:
                raise BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over_limit = True
                    raise BodyTooLarge
            return message

        try:
            if length is not None and length > limit:
                await self._too_large(send_wrapper_raw)
            else:
                await self.app(scope, receive_limited, send_wrapper)
        except BodyTooLarge:
            if not response_started:
                response_started = True
                await self._too_large(send_wrapper_raw)
        except Exception:
            log.exception("request.failed", method=scope["method"], path=scope["path"])
            if not response_started:
                await self._problem(
                    send_wrapper_raw, 500, "internal error; the request id is logged"
                )
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template: str = getattr(route, "path", "unmatched")
            method: str = scope["method"]
            counter = self._counters.get((method, template, status))
            if counter is None:
                counter = self.metrics.requests.labels(method, template, str(status))
                self._counters[(method, template, status)] = counter
            counter.inc()
            histogram = self._histograms.get((method, template))
            if histogram is None:
                histogram = self.metrics.latency.labels(method, template)
                self._histograms[(method, template)] = histogram
            histogram.observe(elapsed)
            if self._access_log.isEnabledFor(logging.INFO):
                log.info(
                    "request",
                    method=method,
                    path=scope["path"],
                    route=template,
                    status=status,
                    duration_ms=round(elapsed * 1000, 3),
                )
            structlog.contextvars.unbind_contextvars("request_id")

    async def _too_large(self, send: Send) -> None:
        await self._problem(send, 413, f"the request body exceeds {self.max_body_bytes} bytes")

    @staticmethod
    async def _problem(send: Send, status: int, detail: str) -> None:
        title = {413: "Content Too Large", 500: "Internal Server Error"}[status]
        body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
        body["detail"] = detail
        payload = orjson.dumps(body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", PROBLEM_JSON.encode()),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
