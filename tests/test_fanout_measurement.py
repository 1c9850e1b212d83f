"""``bench/fanout.py`` scrapes the gateway without slowing what it times.

The ingest drain polls the gateway's ``/metrics`` every 0.1 s until every record is in.
Each poll built an ``httpx.AsyncClient`` of its own: 35–70 ms of blocking work (its TLS
context) before the request, on a drain of a few tenths of a second.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the bench scripts are not a package
from bench import fanout  # noqa: E402


class StandInMetrics:
    """A ``/metrics`` endpoint reporting ``records`` ingested (keep-alive HTTP/1.1)."""

    def __init__(self) -> None:
        self.records = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                body = f"gateway_records_total {self.records}.0\n".encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_every_scrape_of_the_gateway_goes_through_one_http_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[dict[str, Any]] = []

    class CountedClient(httpx.AsyncClient):
        def __init__(self, **kwargs: Any) -> None:
            built.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(httpx, "AsyncClient", CountedClient)
    metrics = StandInMetrics()
    gateway = fanout.GatewayServer("127.0.0.1:1", {"schedule": "t"}, fanout.FakeBookingApi())
    gateway.port = await metrics.start()
    try:
        seen = []
        for records in (1_000, 150_000, 200_000):
            metrics.records = records
            seen.append(await gateway.records_ingested())
    finally:
        await gateway.stop()
        await metrics.stop()

    assert seen == [1_000, 150_000, 200_000]
    assert len(built) == 1
