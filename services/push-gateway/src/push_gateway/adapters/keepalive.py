"""A small keep-alive HTTP/1.1 ``GET`` client for the booking-api's snapshots.

Why not httpx here: a connect storm asks the booking-api for one snapshot per instructor
(500 for 10,000 streams), and httpx/httpcore over anyio cost ~450–700 µs of CPU per request
on this machine (URL and cookie models, anyio stream attributes rebuilt per call, a
``poll()`` of every pooled connection per request) — a quarter of the gateway's CPU in a
storm. These requests are all the same shape (a GET of a path, a JSON answer, one origin),
so a connection here is an ``asyncio.Protocol`` with httptools' response parser (the C
parser uvicorn already uses): ~30 µs per request. httpx stays for everything else.

Only what the snapshot fetch needs: ``GET``, no request body, no redirects, no cookies, no
compression (none is asked for); ``http`` and ``https`` origins. A request on a kept-alive
connection that the server closed meanwhile (its keep-alive timeout) is sent again once on
a new connection, as ``GET`` is idempotent.
"""

import asyncio
import ssl
from typing import Final
from urllib.parse import urlsplit

import httptools

USER_AGENT: Final = "slotstream-push-gateway"
#: a response larger than this is refused (a schedule snapshot is a few hundred kB at most)
MAX_BODY_BYTES: Final = 64 * 1024 * 1024


class Response:
    """What a caller reads of an answer (the names httpx uses)."""

    __slots__ = ("status_code", "content")

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content


class _StaleConnection(ConnectionError):
    """A kept-alive connection closed before any byte of the answer: safe to send again."""


class _Connection(asyncio.Protocol):
    """One TCP connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._received = False
        self.keep_alive = True

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed HTTP answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._received:
            self._fail(ConnectionError(f"connection closed during the answer: {exc!r}"))
        else:
            self._fail(_StaleConnection("connection closed before an answer"))

    # -- httptools callbacks ------------------------------------------------------------
    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY_BYTES:
            self._fail(ConnectionError("answer too large"))
            self.close()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self._parser.get_status_code(), b"".join(self._body)))

    # -- use ----------------------------------------------------------------------------
    def request(self, head: bytes) -> "asyncio.Future[Response]":
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._body = []
        self._size = 0
        self._received = False
        self.transport.write(head)
        return self._waiter

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class KeepAliveClient:
    """``await client.get("/path")`` → :class:`Response`; raises ``OSError`` (including
    ``TimeoutError`` after ``timeout`` seconds) when no answer could be had.

    At most ``max_idle`` connections are kept open between requests; concurrency is the
    caller's to bound (``HttpSnapshotSource`` does)."""

    def __init__(self, base_url: str, timeout: float, max_idle: int = 8) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )
        self._prefix = parts.path.rstrip("/")
        host = parts.netloc.rsplit("@", 1)[-1]
        self._headers = (
            f"Host: {host}\r\nAccept: application/json\r\nUser-Agent: {USER_AGENT}\r\n\r\n"
        ).encode("latin-1")
        self._timeout = timeout
        self._max_idle = max_idle
        self._idle: list[_Connection] = []

    async def get(self, path: str) -> Response:
        head = f"GET {self._prefix}{path} HTTP/1.1\r\n".encode("latin-1") + self._headers
        async with asyncio.timeout(self._timeout):
            while self._idle:
                connection = self._idle.pop()
                if connection.closed:
                    continue
                try:
                    return self._done(connection, await connection.request(head))
                except _StaleConnection:
                    continue  # closed by the server while idle: next one, or a new one
                except BaseException:
                    connection.close()
                    raise
            connection = await self._connect()
            try:
                return self._done(connection, await connection.request(head))
            except BaseException:
                connection.close()
                raise

    def _done(self, connection: _Connection, response: Response) -> Response:
        if connection.keep_alive and not connection.closed and len(self._idle) < self._max_idle:
            self._idle.append(connection)
        else:
            connection.close()
        return response

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            _Connection,
            self._host,
            self._port,
            ssl=self._ssl,
            server_hostname=self._host if self._ssl is not None else None,
        )
        return connection

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
