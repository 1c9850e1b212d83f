"""Stopping the server answers the change feed's long polls instead of cutting them off."""

import asyncio
import signal
from pathlib import Path

import httpx
import pytest

from slotstream_testkit.net import free_port

from .conftest import INTERNAL_TOKEN, launch_server

pytestmark = pytest.mark.integration


async def test_stop_signal_answers_a_waiting_long_poll(tmp_path: Path) -> None:
    port = free_port()
    with (tmp_path / "server.log").open("wb") as log:
        process = launch_server(port, log)
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", headers={"X-Internal-Token": INTERNAL_TOKEN}
            ) as client:
                latest = (await client.get("/internal/changes")).json()["postBatchResumeToken"]
                poll = asyncio.create_task(
                    client.get(
                        "/internal/changes",
                        params={"after": latest["_data"], "wait": 30},
                        timeout=40,
                    )
                )
                await asyncio.sleep(0.5)
                assert not poll.done()
                process.send_signal(signal.SIGTERM)
                response = await asyncio.wait_for(poll, 30)
            assert response.status_code == 200
            assert response.json() == {"changes": [], "postBatchResumeToken": latest}
            # uvicorn re-raises the stop signal after a clean shutdown.
            assert await asyncio.to_thread(process.wait, 30) in (0, -signal.SIGTERM)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
