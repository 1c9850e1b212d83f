"""``python -m change_publisher`` / ``slotstream-change-publisher``."""

import sys

import uvicorn

from change_publisher.adapters.file import FileCheckpointStore
from change_publisher.app import create_app
from change_publisher.config import Settings
from slotstream_contracts.logs import configure_logging
from slotstream_contracts.settings import load_settings, refuse_to_start


def main() -> None:
    settings = load_settings(Settings, "change-publisher")
    configure_logging("change-publisher", settings.log)
    if settings.effective_checkpoint_store() == "file" and settings.checkpoint_file is not None:
        try:
            FileCheckpointStore(settings.checkpoint_file).check_writable()
        except (OSError, ValueError) as exc:
            refuse_to_start(
                "change-publisher",
                f"PUBLISHER_CHECKPOINT_FILE={settings.checkpoint_file} cannot be used: {exc}",
            )
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
