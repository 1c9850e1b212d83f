"""``python -m booking_api`` / ``slotstream-booking-api``: serve the API with uvicorn."""

import gc
import sys

import uvicorn
from pydantic import ValidationError

from booking_api.app import create_app
from booking_api.config import Settings
from slotstream_contracts.logs import configure_logging


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.stderr.write(f"booking-api: refusing to start, bad settings:\n{exc}\n")
        raise SystemExit(2) from None
    configure_logging("booking-api", settings.log)
    app = create_app(settings)
    # The memory backend keeps every document and change event in this process: with the
    # default thresholds the collector rescans that growing heap so often that it was the
    # largest single cost of a booking in the benchmark. Collect young objects less often
    # and keep what exists at start-up out of collections altogether.
    gc.set_threshold(50_000, 20, 100)
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        proxy_headers=True,
        server_header=False,
        # Long polls on /internal/changes may wait 30 s; do not let them hold up a stop.
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
