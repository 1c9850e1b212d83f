"""The HTTP protocol that hands streams to the gateway still serves the app's requests as
uvicorn does (it reads the socket addresses only for those)."""

import asyncio
import contextlib
from typing import cast

import httpx
import uvicorn
from fastapi import FastAPI, Request

from push_gateway.api.protocol import protocol_for
from push_gateway.gateway import Gateway
from slotstream_testkit.net import free_port


async def test_app_requests_see_the_client_and_server_addresses() -> None:
    app = FastAPI()

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, object]:
        client = request.client
        return {
            "client": client.host if client else None,
            "server": list(request.scope["server"] or []),
        }

    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=protocol_for(cast(Gateway, object())),  # no stream is requested here
        lifespan="off",
        log_config=None,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            async with asyncio.timeout(60):
                while not server.started:  # noqa: ASYNC110 - uvicorn sets a flag
                    await asyncio.sleep(0.01)
            for _ in range(2):  # the second request on the same kept-alive connection
                answer = (await client.get("/whoami")).json()
                assert answer == {"client": "127.0.0.1", "server": ["127.0.0.1", port]}
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await serving
