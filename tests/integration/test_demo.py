"""`make demo` (scripts/demo.py): starts everything on the documented ports, prints the
users and tokens, serves the page, and Ctrl-C stops every process it started."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from scripts.devstack import REPO, DevStack, Ports, nginx_binary
from tests.integration.test_click_to_stream import TIMEOUT, SseReader, available_slot

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


CRASHABLE = ("slotstream-push-gateway", "slotstream-change-publisher")


def command_of(pid: int) -> str:
    """The program a process runs (its argv joined), '' when it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


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

        # The README's experiment: kill -9 a gateway and the publisher; the demo restarts
        # both and keeps running.
        killed = [pid for pid in started if command_of(pid).endswith(CRASHABLE)]
        assert len(killed) == 3, [command_of(pid) for pid in started]
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while output.read_text().count("demo: restarted ") < 3:
            assert demo.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.2)
        for port in (ports.gateway_1, ports.gateway_2, ports.publisher):
            assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).is_success
        started = children_of(demo.pid)
        assert len(started) == 6, started
        assert not set(killed) & started
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(30)
    assert code == 0, output.read_text()
    assert "every process stopped" in output.read_text()
    assert not [pid for pid in started if alive(pid)]


@asynccontextmanager
async def student_watching(
    stack: DevStack, gateway: int
) -> AsyncIterator[tuple[httpx.AsyncClient, SseReader, dict[str, str], str]]:
    """The API client, an SSE client of ``gateway`` past its snapshot, the demo student's
    auth header and an available slot of the demo instructor."""
    instructor_id = stack.user("instructor").id
    path = f"/api/book-now/schedule-updates?instructorId={instructor_id}"
    async with (
        httpx.AsyncClient(base_url=stack.booking_api_url, timeout=TIMEOUT) as api,
        httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT, read=None)) as sse,
        SseReader(sse, f"{stack.gateway_url(gateway)}{path}").open() as page,
    ):
        await page.wait_for("snapshot")
        auth = {"Authorization": f"Bearer {stack.user('student').token}"}
        yield api, page, auth, await available_slot(api, instructor_id)


async def booked_then_cancelled(
    api: httpx.AsyncClient, page: SseReader, auth: dict[str, str], booking: httpx.Response
) -> None:
    """``page`` sees the booking's slot booked; then the booking is cancelled."""
    assert booking.status_code == 201, booking.text
    slot_id = booking.json()["slotId"]
    await page.wait_for(
        "slot", lambda d: d["data"]["id"] == slot_id and d["data"]["status"] == "booked"
    )
    cancelled = await api.delete(f"/api/bookings/{booking.json()['id']}", headers=auth)
    assert cancelled.status_code == 200, cancelled.text


async def test_a_killed_gateway_and_publisher_are_restarted_and_serve(stack: DevStack) -> None:
    """Supervision (`restart: unless-stopped`): `kill -9` of a gateway and of the publisher
    leaves the rest running; both come back with new PIDs and a booking made afterwards
    reaches a client of the restarted gateway."""
    untouched = {name: stack.processes[name].pid for name in ("tansu", "booking-api", "edge")}
    gateway_pid = stack.kill_gateway(2)
    publisher_pid = stack.kill("change-publisher")
    assert not alive(gateway_pid)
    assert not alive(publisher_pid)
    await asyncio.to_thread(stack.wait_restarted, "push-gateway-2", gateway_pid)
    await asyncio.to_thread(stack.wait_restarted, "change-publisher", publisher_pid)
    assert {name: stack.processes[name].pid for name in untouched} == untouched
    assert stack.processes["push-gateway-2"].restarts >= 1

    async with student_watching(stack, 2) as (api, restarted, auth, slot_id):
        booked = await api.post("/api/bookings", json={"slotId": slot_id}, headers=auth)
        await booked_then_cancelled(api, restarted, auth, booked)


def test_a_deliberately_stopped_gateway_stays_down_until_started(stack: DevStack) -> None:
    stack.stop_gateway(2)
    try:
        time.sleep(2.0)  # several supervisor passes (and more than the first back-off)
        assert not stack.processes["push-gateway-2"].running
    finally:
        stack.start_gateway(2)
    assert stack.processes["push-gateway-2"].running


async def test_a_booking_made_while_the_publisher_is_down_still_reaches_open_streams(
    stack: DevStack,
) -> None:
    """The demo's publisher keeps no checkpoint across a restart (memory stores), but the
    booking-api lives on: a change written while it is down must still be published once
    it is back, or every open page shows a stale slot until it reloads."""
    async with student_watching(stack, 1) as (api, page, auth, slot_id):
        publisher_pid = stack.kill("change-publisher")
        booked = await api.post("/api/bookings", json={"slotId": slot_id}, headers=auth)
        assert booked.status_code == 201, booked.text
        await asyncio.to_thread(stack.wait_restarted, "change-publisher", publisher_pid)
        await booked_then_cancelled(api, page, auth, booked)


async def test_the_edge_reaches_each_gateway_over_its_unix_socket(stack: DevStack) -> None:
    """On one host the edge talks to the gateways over their Unix sockets
    (`GATEWAY_UNIX_SOCKET`), also to a gateway killed and restarted over the socket file it
    left behind."""
    gateway_pid = stack.kill_gateway(1)
    await asyncio.to_thread(stack.wait_restarted, "push-gateway-1", gateway_pid)
    instructor_id = stack.user("instructor").id
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=TIMEOUT) as edge:
        for _ in range(6):  # the edge spreads streams over both gateways
            async with edge.stream(
                "GET", "/api/book-now/schedule-updates", params={"instructorId": instructor_id}
            ) as stream:
                assert stream.status_code == 200
                async for line in stream.aiter_lines():
                    if line == "event: snapshot":
                        break
    upstreams = (stack.logs / "edge.log").read_text()
    for number in (1, 2):
        assert f'"unix:{stack.gateway_socket(number)}"' in upstreams


@pytest.mark.parametrize("ask", ["--help", "-h"])
def test_asking_for_help_prints_it_and_starts_nothing(ask: str) -> None:
    """A newcomer's first try, ``scripts/demo.py --help``, must print what the demo does
    and exit, not start the whole stack (it used to: the script read no arguments)."""
    demo = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "demo.py"), ask],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = demo.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(demo.pid, signal.SIGTERM)
        demo.communicate(timeout=60)
        pytest.fail(f"`demo.py {ask}` was still running after 20 s: it started the stack")
    text = out.decode()
    assert demo.returncode == 0, text
    assert text.startswith("usage: demo.py"), text
    assert "http://127.0.0.1:8080/" in text
    assert "demo:" not in text  # no step of a start
