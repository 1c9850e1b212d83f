"""``python -m booking_api`` / ``slotstream-booking-api``: serve the API with uvicorn."""

import asyncio
import gc
import socket
from types import FrameType

import uvicorn

from booking_api.api.deps import AppParts
from booking_api.app import create_app
from booking_api.config import Settings
from slotstream_contracts.logs import configure_logging
from slotstream_contracts.settings import MONGO_UNREACHABLE_EXIT_CODE, load_settings


class BookingApiServer(uvicorn.Server):
    """On a stop signal, answers the change feed's long polls at once: otherwise each
    would hold the graceful shutdown until its ``wait`` ran out. Stops, and exits with
    ``MONGO_UNREACHABLE_EXIT_CODE``, when the start gave up on MongoDB."""

    def __init__(self, config: uvicorn.Config, parts: AppParts) -> None:
        super().__init__(config)
        self._parts = parts

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        runtime = self._parts.runtime
        if runtime is not None and runtime.memory is not None:
            asyncio.get_running_loop().call_soon_threadsafe(
                runtime.memory.changelog.release_waiters
            )
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        # MongoDB stayed unreachable for BOOKING_API_MONGO_START_TIMEOUT_SECONDS (said)
        return await super().on_tick(counter) or self._parts.startup.gave_up

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        super().run(sockets)
        if self._parts.startup.gave_up:
            raise SystemExit(MONGO_UNREACHABLE_EXIT_CODE)


def main() -> None:
    settings = load_settings(Settings, "booking-api")
    configure_logging("booking-api", settings.log)
    app = create_app(settings)
    # The memory backend keeps every document and change event in this process: with the
    # default thresholds the collector rescans that growing heap so often that it was the
    # largest single cost of a booking in the benchmark. Collect young objects less often
    # and keep what exists at start-up out of collections altogether.
    gc.set_threshold(50_000, 20, 100)
    gc.freeze()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        proxy_headers=True,
        server_header=False,
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
        # A client that keeps a request open must not hold up a stop for long.
        timeout_graceful_shutdown=5,
    )
    BookingApiServer(config, app.state.parts).run()


if __name__ == "__main__":
    main()
