"""The bytes that answer a stream request: a problem response (``application/problem+json``)
or the head of an event stream, each with CORS headers for an allowed origin."""

from collections.abc import Iterable
from http import HTTPStatus

import orjson

from push_gateway.domain.frames import retry_frame
from push_gateway.domain.requests import Problem


class ResponseHeads:
    """Builds answers for the origins allowed to read streams cross-origin; a stream's head
    (and its ``retry:`` frame) is built once per allowed origin and shared."""

    __slots__ = ("_allowed_origins", "_retry_ms", "_stream_heads")

    def __init__(self, allowed_origins: Iterable[str], retry_ms: int) -> None:
        self._allowed_origins = frozenset(allowed_origins)
        self._retry_ms = retry_ms
        #: allowed origin (None: no CORS headers) → the bytes that open its streams
        self._stream_heads: dict[str | None, bytes] = {}

    def problem(self, problem: Problem, path: str | None, origin: str | None) -> bytes:
        """A whole response (head and JSON body) that refuses a request for ``path``."""
        body = orjson.dumps(problem.body(path))
        head = [
            f"HTTP/1.1 {problem.status} {HTTPStatus(problem.status).phrase}",
            "content-type: application/problem+json",
            f"content-length: {len(body)}",
            "cache-control: no-store",
            "connection: close",
            *(f"{k}: {v}" for k, v in problem.headers),
            *self._cors_lines(origin),
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body

    def stream_head(self, origin: str | None) -> bytes:
        """The response head and ``retry:`` frame; built once per allowed origin."""
        origin = origin if origin in self._allowed_origins else None
        cached = self._stream_heads.get(origin)
        if cached is not None:
            return cached
        head = [
            "HTTP/1.1 200 OK",
            "content-type: text/event-stream; charset=utf-8",
            "cache-control: no-store",
            "x-accel-buffering: no",
            "connection: close",
            *self._cors_lines(origin),
        ]
        built = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + retry_frame(self._retry_ms)
        self._stream_heads[origin] = built
        return built

    def _cors_lines(self, origin: str | None) -> list[str]:
        if origin is None or origin not in self._allowed_origins:
            return []
        return [
            f"access-control-allow-origin: {origin}",
            "access-control-allow-credentials: true",
            "vary: Origin",
        ]
