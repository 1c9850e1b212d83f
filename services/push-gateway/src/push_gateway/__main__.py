"""``python -m push_gateway`` / ``slotstream-push-gateway``."""

import sys

from pydantic import ValidationError

from push_gateway.app import build_server
from push_gateway.config import Settings
from push_gateway.workers import Supervisor, worker_index, worker_sockets
from slotstream_contracts.logs import configure_logging


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.stderr.write(f"push-gateway: refusing to start, bad settings:\n{exc}\n")
        raise SystemExit(2) from None
    configure_logging("push-gateway", settings.log)
    index = worker_index()
    if settings.workers > 1 and index is None:
        raise SystemExit(Supervisor(settings).run())
    server = build_server(settings)
    if index is None:
        server.run()
    else:  # one of GATEWAY_WORKERS: the shared port with SO_REUSEPORT
        server.run(sockets=worker_sockets(settings, index))


if __name__ == "__main__":
    main()
