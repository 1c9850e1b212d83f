"""``python -m push_gateway`` / ``slotstream-push-gateway``."""

from typing import NoReturn

from push_gateway.adapters.listeners import UnixListener, tcp_listener
from push_gateway.app import build_server
from push_gateway.config import Settings
from push_gateway.workers import CannotListen, Supervisor, worker_index, worker_sockets
from slotstream_contracts.logs import configure_logging
from slotstream_contracts.settings import load_settings, refuse_to_start


def _refuse(reason: str) -> NoReturn:
    refuse_to_start("push-gateway", reason)


def _unix_listener(settings: Settings) -> UnixListener | None:
    if settings.unix_socket is None:
        return None
    try:
        return UnixListener.bind(settings.unix_socket, settings.backlog)
    except OSError as exc:
        _refuse(f"GATEWAY_UNIX_SOCKET: {exc}")


def main() -> None:
    settings = load_settings(Settings, "push-gateway")
    configure_logging("push-gateway", settings.log)
    index = worker_index()
    if settings.workers > 1 and index is None:
        raise SystemExit(Supervisor(settings, _unix_listener(settings)).run())
    if index is not None:  # one of GATEWAY_WORKERS: the shared port with SO_REUSEPORT
        try:
            sockets = worker_sockets(settings, index)
        except CannotListen as exc:
            _refuse(str(exc))  # exit 2: the supervisor does not restart it
        build_server(settings).run(sockets=sockets)
        return
    unix = _unix_listener(settings)
    if unix is None:
        build_server(settings).run()
        return
    try:
        try:
            tcp = tcp_listener(settings.host, settings.port, settings.backlog, False)
        except OSError as exc:
            _refuse(f"cannot listen on {settings.host}:{settings.port}: {exc}")
        build_server(settings, on_stopped=unix.close).run(sockets=[tcp, unix.sock])
    finally:
        unix.close()  # also when the server never started


if __name__ == "__main__":
    main()
