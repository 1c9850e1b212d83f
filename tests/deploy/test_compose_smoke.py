"""The Compose stack for real, where a Docker engine exists: build, `up --wait` with nothing
prepared (keygen makes every secret), book a slot through the edge, read the change from
the SSE stream and the event with Kafka's console consumer (SASL as admin), scale the
gateways to three and see the edge spread streams over all of them, then `down -v`.
Opt-in (`SLOTSTREAM_COMPOSE_SMOKE=1`, CI job `compose-smoke`): it builds four images and
pulls MongoDB and Kafka, which takes minutes."""

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest

from slotstream_contracts import topics
from slotstream_contracts.auth import JwtSettings, Role, mint_token
from slotstream_testkit.net import free_port
from tests.deploy.smoke import book_and_watch_the_stream
from tests.deploy.support import REPO, compose_binary

pytestmark = [
    pytest.mark.deploy,
    pytest.mark.skipif(
        os.environ.get("SLOTSTREAM_COMPOSE_SMOKE") != "1",
        reason="set SLOTSTREAM_COMPOSE_SMOKE=1 (and have a Docker engine) to run the stack",
    ),
]


class Stack:
    def __init__(self) -> None:
        self.project = f"slotstream-smoke-{secrets.token_hex(3)}"
        self.edge_port = free_port()
        # No secret from outside: the stack must come up as a fresh clone does.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTSTREAM_")} | {
            "EDGE_PORT": str(self.edge_port),
            "KAFKA_HOST_PORT": str(free_port()),
        }
        self.signing_key = ""
        self.base_url = f"http://127.0.0.1:{self.edge_port}"

    def compose(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(compose_binary()),
                "--project-name",
                self.project,
                "--project-directory",
                str(REPO),
                "--file",
                str(REPO / "docker-compose.yml"),
                *args,
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def read_signing_key(self) -> None:
        """The Ed25519 private key keygen generated (only the seed reads it in the stack)."""
        key = self.compose(
            "run",
            "--rm",
            "--no-deps",
            "-T",
            "--entrypoint",
            "cat",
            "keygen",
            "/run/slotstream/seed/jwt-private.pem",
            timeout=120,
        )
        assert key.returncode == 0, key.stderr
        self.signing_key = key.stdout

    def token(self, user_id: str, role: Role) -> str:
        settings = JwtSettings.model_validate(
            {
                "algorithm": "EdDSA",
                "private_key": self.signing_key,
                "issuer": "slotstream",
                "audience": "slotstream",
            }
        )
        return mint_token(settings, user_id, role, ttl=timedelta(minutes=10))


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    engine = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if engine.returncode != 0:
        pytest.skip(f"no Docker engine answers: {engine.stderr.strip()[:200]}")
    running = Stack()
    try:
        up = running.compose("up", "--detach", "--build", "--wait", "--wait-timeout", "600")
        if up.returncode != 0:
            logs = running.compose("logs", "--no-color", "--tail", "50", timeout=60)
            pytest.fail(f"compose up failed:\n{up.stderr[-3000:]}\n{logs.stdout[-6000:]}")
        running.read_signing_key()
        yield running
    finally:
        running.compose("down", "--volumes", "--remove-orphans", timeout=300)


@pytest.mark.timeout(1800)
def test_a_booking_reaches_the_browser_stream_and_kafka(stack: Stack) -> None:
    instructor_id = book_and_watch_the_stream(stack.base_url, stack.token)

    consumed = stack.compose(
        "exec",
        "-T",
        "kafka",
        "/opt/kafka/bin/kafka-console-consumer.sh",
        "--bootstrap-server",
        "kafka:9092",
        "--consumer.config",
        "/tmp/slotstream-admin.properties",
        "--include",
        f"{re.escape(topics.SCHEDULE_TOPIC)}|{re.escape(topics.NOTIFICATIONS_TOPIC)}",
        "--from-beginning",
        "--timeout-ms",
        "15000",
        "--property",
        "print.key=true",
        "--property",
        "print.headers=true",
        timeout=120,
    )
    records = [line for line in consumed.stdout.splitlines() if instructor_id in line]
    assert any("ce_type:booking.created" in line for line in records), consumed.stdout[-3000:]


@pytest.mark.timeout(900)
def test_scaled_gateways_all_get_streams_through_the_edge(stack: Stack) -> None:
    scaled = stack.compose(
        "up", "--detach", "--no-build", "--wait", "--scale", "push-gateway=3", timeout=600
    )
    assert scaled.returncode == 0, scaled.stderr[-3000:]
    listed = stack.compose("ps", "--format", "json", "push-gateway", timeout=60)
    containers = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    assert len(containers) == 3, listed.stdout
    # The edge re-resolves the name every 5 s (resolver valid=5s): open streams until its
    # access log shows all three replicas as upstreams, within a generous deadline.
    upstreams: set[str] = set()
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        while len(upstreams) < 3 and time.monotonic() < deadline:
            for _ in range(6):
                with client.stream(
                    "GET", "/api/book-now/schedule-updates", params={"instructorId": "nobody"}
                ) as response:
                    assert response.status_code in {200, 404}, response.status_code
            logs = stack.compose("logs", "--no-color", "edge", timeout=60).stdout
            upstreams = set(
                re.findall(r"schedule-updates\S* [^\n]*?\"(\d+\.\d+\.\d+\.\d+):8002\"", logs)
            )
    assert len(upstreams) == 3, f"streams went to {upstreams}"
