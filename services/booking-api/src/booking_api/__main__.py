"""``python -m booking_api`` / ``slotstream-booking-api``: serve the API with uvicorn."""

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
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        proxy_headers=True,
        server_header=False,
    )


if __name__ == "__main__":
    main()
