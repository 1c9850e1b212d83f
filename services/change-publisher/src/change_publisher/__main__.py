"""``python -m change_publisher`` / ``slotstream-change-publisher``."""

import sys

import uvicorn

from change_publisher.app import create_app
from change_publisher.config import Settings
from slotstream_contracts.settings import load_settings


def main() -> None:
    settings = load_settings(Settings, "change-publisher")
    server: uvicorn.Server | None = None

    def stop_server() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=stop_server)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=settings.http_keep_alive_timeout_seconds,
    )
    server = uvicorn.Server(config)
    server.run()
    sys.exit(getattr(app.state, "exit_code", 0))


if __name__ == "__main__":
    main()
