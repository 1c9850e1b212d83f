"""``python -m push_gateway`` / ``slotstream-push-gateway``."""

from push_gateway.app import build_server
from push_gateway.config import Settings
from slotstream_contracts.logs import configure_logging


def main() -> None:
    settings = Settings()
    configure_logging("push-gateway", settings.log)
    build_server(settings).run()


if __name__ == "__main__":
    main()
