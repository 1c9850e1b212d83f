"""`make demo`: the whole Slotstream system on this machine, without Docker.

Tansu (Kafka-compatible broker), the booking-api (memory backend), the change-publisher
(reading the booking-api's change feed), two push-gateways and nginx as the edge on
http://127.0.0.1:8080/. Prints the demo users and their tokens. A crashed publisher,
gateway or edge is restarted with back-off (scripts/devstack.py says why Tansu and the
memory booking-api are not); only Ctrl-C (or SIGTERM) stops every process it started.

Optional: SLOTSTREAM_TLS_CERT and SLOTSTREAM_TLS_KEY (PEM files) add an HTTPS + HTTP/2
server on https://127.0.0.1:8443/.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import jwt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.devstack import (  # noqa: E402
    DEMO_TOKEN_REFRESH_SECONDS,
    JWT_AUDIENCE,
    JWT_ISSUER,
    REPO,
    DevStack,
    Ports,
    StackError,
    tansu_hint,
)

STATE_DIR = REPO / ".demo"


class Stop(Exception):
    """Raised by the signal handler so that `finally` stops the stack."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def _busy_ports(ports: Ports) -> list[int]:
    busy = []
    for port in (ports.kafka, ports.booking_api, ports.publisher, ports.gateway_1,
                 ports.gateway_2, ports.edge):  # fmt: skip
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


def _expiry(token: str) -> str:
    """When a demo token expires (read without verifying: the API verifies it)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return datetime.fromtimestamp(int(claims["exp"]), UTC).strftime("%Y-%m-%d %H:%M UTC")


def _banner(stack: DevStack) -> str:
    lines = [
        "",
        "Slotstream is running.",
        "",
        f"  Book-Now page   {stack.base_url}/",
    ]
    if stack.tls is not None:
        lines.append(f"  over HTTP/2     https://127.0.0.1:{stack.tls[2]}/")
    lines += [
        f"  booking-api     {stack.booking_api_url}/api/docs  (OpenAPI)",
        f"  push-gateways   {stack.gateway_url(1)}  {stack.gateway_url(2)}  (behind the edge)",
        f"  publisher       http://127.0.0.1:{stack.ports.publisher}/metrics",
        f"  Kafka (Tansu)   {stack.bootstrap_servers}",
        f"  logs            {stack.logs}/",
        "",
        "Demo users (pick one under “Signed in as” on the page)"
        + (
            f"; tokens valid until {_expiry(stack.users[0].token)}, re-minted every "
            f"{DEMO_TOKEN_REFRESH_SECONDS // 60} min into demo-users.json:"
            if stack.users
            else ":"
        ),
    ]
    for user in stack.users:
        lines.append(f"  {user.role:<10} {user.name:<18} {user.id}")
        if user.role == "admin":  # never handed out: mint one with the private key
            lines.append(
                f"             BOOKING_API_JWT__ALGORITHM=EdDSA BOOKING_API_JWT__PRIVATE_KEY_FILE="
                f"{stack.private_key_file} BOOKING_API_JWT__ISSUER={JWT_ISSUER} "
                f"BOOKING_API_JWT__AUDIENCE={JWT_AUDIENCE} .venv/bin/slotstream-token "
                "--sub admin --role admin --ttl-hours 1"
            )
        else:
            lines.append(f"             {user.token}")
    student = next((u for u in stack.users if u.role == "student"), None)
    instructor = stack.instructors[0]["id"] if stack.instructors else "<instructor id>"
    lines += [
        "",
        "Try it from a terminal:",
        f"  curl -N '{stack.base_url}/api/book-now/schedule-updates?instructorId={instructor}'",
    ]
    if student is not None:
        lines.append(
            f"  curl -s {stack.base_url}/api/instructors/{instructor}/schedule"
            " | python3 -m json.tool | head -40"
        )
        lines.append(
            f"  curl -s -X POST {stack.base_url}/api/bookings -H 'Authorization: Bearer "
            f"{student.token[:16]}…' -H 'Content-Type: application/json' "
            '-d \'{"slotId": "<slot id>"}\''
        )
    lines += [
        "",
        "Look at the events on Kafka:",
        tansu_hint(stack),
        "",
        "Press Ctrl-C to stop everything.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="demo.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args(argv)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    ports = Ports.demo()
    busy = _busy_ports(ports)
    if busy:
        print(
            f"demo: ports {', '.join(map(str, busy))} are in use (another `make demo`?). "
            "Stop it first.",
            file=sys.stderr,
        )
        return 1
    cert, key = os.environ.get("SLOTSTREAM_TLS_CERT"), os.environ.get("SLOTSTREAM_TLS_KEY")
    stack = DevStack(
        STATE_DIR,
        ports,
        tls_cert=Path(cert) if cert else None,
        tls_key=Path(key) if key else None,
        progress=lambda step: print(f"demo: {step}", flush=True),
    )
    try:
        stack.start()
        print(_banner(stack), flush=True)
        # The stack's supervisor restarts a crashed publisher, gateway or edge (and says
        # so); the demo itself ends only on Ctrl-C or SIGTERM.
        while True:
            signal.pause()
    except StackError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except Stop as stop:
        print(f"\ndemo: {stop}: stopping…", flush=True)
        return 0
    finally:
        # Ignore a second Ctrl-C while the processes are being stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        print("demo: every process stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
