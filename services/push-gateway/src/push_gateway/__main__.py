"""``python -m push_gateway`` / ``slotstream-push-gateway``."""

import sys

from pydantic import ValidationError

from push_gateway.app import build_server
from push_gateway.config import Settings
from slotstream_contracts.logs import configure_logging


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.stderr.write(f"push-gateway: refusing to start, bad settings:\n{exc}\n")
        raise SystemExit(2) from None
    configure_logging("push-gateway", settings.log)
    build_server(settings).run()


if __name__ == "__main__":
    main()
