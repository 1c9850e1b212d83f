"""`make demo` (scripts/demo.py): starts everything on the documented ports, prints the
users and tokens, serves the page, and Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from scripts.devstack import REPO, Ports, nginx_binary

pytestmark = pytest.mark.integration


def children_of(pid: int) -> set[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_demo_starts_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (make test installs it when run as root)")
    ports = Ports.demo()
    for port in (ports.kafka, ports.booking_api, ports.gateway_1, ports.edge):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port} is in use (a `make demo` running?)")
    output = tmp_path / "demo.out"
    with open(output, "wb") as out:
        demo = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "demo.py")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 60
        while "Press Ctrl-C" not in output.read_text():
            assert demo.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.2)
        text = output.read_text()
        assert "http://127.0.0.1:8080/" in text
        assert "student    Alan Turing" in text
        assert "tansu topic list --broker tcp://127.0.0.1:19092" in text

        page = httpx.get("http://127.0.0.1:8080/", timeout=5)
        assert "Book Now" in page.text
        users = httpx.get("http://127.0.0.1:8080/demo-users.json", timeout=5).json()["users"]
        assert {u["role"] for u in users} == {"student", "instructor"}  # no admin token

        started = children_of(demo.pid)
        assert len(started) == 6, started  # tansu, api, publisher, two gateways, nginx
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(30)
    assert code == 0, output.read_text()
    assert "every process stopped" in output.read_text()
    assert not [pid for pid in started if alive(pid)]
