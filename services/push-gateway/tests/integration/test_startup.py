"""A gateway (one process, or ``GATEWAY_WORKERS=2``) started while Kafka does not answer:
a closed port, or a port that accepts and drops every connection (a TCP fault proxy in
front of Tansu). It must keep running — ``/healthz`` 200, ``/readyz`` 503 and
``gateway_ready`` 0, one log line per attempt — become ready by itself (``gateway_ready``
1) once Kafka answers, and serve from the positions it would
have used; with ``GATEWAY_KAFKA__START_TIMEOUT_SECONDS`` it gives up with one line, exit 69.
"""

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from push_gateway.adapters.presence import KafkaPresenceBus
from push_gateway.config import GatewayKafkaSettings
from push_gateway.startup import KafkaStartup
from push_gateway.testing import slot_event
from slotstream_contracts.settings import KAFKA_UNREACHABLE_EXIT_CODE, TopicSettings
from slotstream_testkit.faultproxy import TcpFaultProxy
from slotstream_testkit.kafka import KafkaEndpoint, TansuBroker, create_topics
from slotstream_testkit.net import free_port, free_port_block

from .conftest import FakeBookingApi, start_gateway_process, stop_gateway_process
from .test_gateways import PAGE, Stream

pytestmark = pytest.mark.integration

#: how long the gateway is kept from Kafka before it may reach it
UNREACHABLE_SECONDS = 3.0
#: ``GATEWAY_KAFKA__START_TIMEOUT_SECONDS`` where a test wants the gateway to give up
START_TIMEOUT_SECONDS = 3


@dataclass
class LateKafka:
    """Tansu that clients reach only through ``proxy`` (it advertises the proxy's port)."""

    broker: TansuBroker
    proxy: TcpFaultProxy
    topics: TopicSettings

    @property
    def endpoint(self) -> KafkaEndpoint:
        """What the gateway is given: the proxy's address."""
        return KafkaEndpoint(f"127.0.0.1:{self.proxy.listen_port}", "tansu", False)

    async def unreachable(self, fault: str) -> None:
        if fault == "closed":
            await self.proxy.stop()  # nothing listens on the port
        else:
            self.proxy.cut()  # accepts, then drops at once

    async def reachable(self, fault: str) -> None:
        if fault == "closed":
            self.proxy = TcpFaultProxy(self.proxy.listen_port, "127.0.0.1", self.broker.port)
            await self.proxy.start()
        else:
            self.proxy.restore()


@pytest.fixture
async def late_kafka(tmp_path: Path) -> AsyncIterator[LateKafka]:
    broker_port, proxy_port = free_port(), free_port()
    proxy = TcpFaultProxy(proxy_port, "127.0.0.1", broker_port)
    await proxy.start()
    broker = TansuBroker(
        port=broker_port, advertised_port=proxy_port, log_path=tmp_path / "tansu.log"
    )
    tag = uuid.uuid4().hex[:8]
    topics = TopicSettings(
        schedule=f"late.{tag}.schedule",
        notifications=f"late.{tag}.notifications",
        presence=f"late.{tag}.presence",
    )
    late = LateKafka(broker, proxy, topics)
    try:
        await asyncio.to_thread(broker.start)
        await create_topics(
            broker.bootstrap_servers,
            {topics.schedule: 3, topics.notifications: 2, topics.presence: 1},
            {topics.presence: {"cleanup.policy": "compact"}},
        )
        yield late
    finally:
        await asyncio.to_thread(broker.stop)
        await late.proxy.stop()


async def _status(client: httpx.AsyncClient, url: str) -> int:
    try:
        return (await client.get(url, timeout=2)).status_code
    except httpx.HTTPError as exc:
        return -1 if isinstance(exc, httpx.ConnectError) else -2


async def _ready_metric(client: httpx.AsyncClient, probe: str) -> str:
    """The ``gateway_ready`` line of ``probe``'s ``/metrics`` ("" if there is none)."""
    text = (await client.get(probe + "/metrics", timeout=2)).text
    return next((ln for ln in text.splitlines() if ln.startswith("gateway_ready ")), "")


@pytest.mark.parametrize(
    ("fault", "workers"), [("closed", 1), ("drops", 1), ("closed", 2)], ids=str
)
async def test_a_gateway_started_before_kafka_answers_waits_unready_then_serves(
    fault: str, workers: int, late_kafka: LateKafka, booking_api: FakeBookingApi, tmp_path: Path
) -> None:
    topics = late_kafka.topics
    # written before the gateway starts: a gateway that starts late must still hold them
    # in its ring (it starts a ring's length before the ends it finds)
    producer = AIOKafkaProducer(
        bootstrap_servers=late_kafka.broker.bootstrap_servers, enable_idempotence=False
    )
    await producer.start()
    try:
        sent = [
            await (
                await producer.send(topics.schedule, e.to_json(), key=b"late1", headers=e.headers())
            )
            for e in [slot_event("late1", "s1", v) for v in range(1, 6)]
        ]
    finally:
        await producer.stop()
    partition = sent[0].partition
    await late_kafka.unreachable(fault)

    port, log = free_port(), tmp_path / "gateway.log"
    extra: dict[str, str] = {}
    probes = [f"http://127.0.0.1:{port}"]
    if workers > 1:
        base = free_port_block(workers + 1)
        extra = {"GATEWAY_WORKERS": str(workers), "GATEWAY_WORKER_METRICS_PORT": str(base)}
        probes = [f"http://127.0.0.1:{base + n}" for n in range(workers)]
    process = start_gateway_process(late_kafka.endpoint, topics, booking_api, port, log, **extra)
    try:
        async with httpx.AsyncClient() as client:
            # the first answer can take a moment (the interpreter starting)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while any([await _status(client, p + "/healthz") != 200 for p in probes]):
                assert process.poll() is None, f"exited {process.poll()}: {log.read_text()}"
                assert loop.time() < deadline, f"/healthz never 200: {log.read_text()}"
                await asyncio.sleep(0.1)
            until = loop.time() + UNREACHABLE_SECONDS
            while loop.time() < until:
                assert process.poll() is None, f"exited {process.poll()}: {log.read_text()}"
                for probe in probes:
                    assert await _status(client, probe + "/healthz") == 200, log.read_text()
                    assert await _status(client, probe + "/readyz") == 503, log.read_text()
                    # what Prometheus sees of it (the alert GatewayNotReady)
                    assert await _ready_metric(client, probe) == "gateway_ready 0.0"
                await asyncio.sleep(0.2)

            await late_kafka.reachable(fault)
            deadline = loop.time() + 30
            while any([await _status(client, p + "/readyz") != 200 for p in probes]):
                assert process.poll() is None, f"exited {process.poll()}: {log.read_text()}"
                assert loop.time() < deadline, f"not ready 30 s later: {log.read_text()}"
                await asyncio.sleep(0.1)
            for probe in probes:
                assert await _ready_metric(client, probe) == "gateway_ready 1.0"

        resumed = Stream(
            f"http://127.0.0.1:{port}{PAGE}",
            {"instructorId": "late1"},
            {"Last-Event-ID": f"s{partition}:-1"},
        )
        async with resumed:
            replayed = await resumed.wait_for("slot", 5)
        assert [orjson.loads(e.data)["version"] for e in replayed] == [1, 2, 3, 4, 5]
        assert resumed.data("snapshot") == []
    finally:
        await asyncio.to_thread(stop_gateway_process, process)

    text = log.read_text()
    assert "Traceback" not in text
    assert "worker exited" not in text
    retries = [line for line in text.splitlines() if "kafka not reachable: retrying" in line]
    assert len(retries) >= 2 * workers
    for line in retries:
        assert late_kafka.endpoint.bootstrap_servers in line
        assert "Unable connect to" in line  # aiokafka's reason, folded into the one line
    # and never on a line of its own
    assert all("kafka not reachable" in ln for ln in text.splitlines() if "Unable connect" in ln)


@pytest.mark.parametrize("workers", [1, 2], ids=str)
def test_a_gateway_gives_up_on_kafka_after_its_start_timeout_with_one_line(
    workers: int, booking_api: FakeBookingApi, tmp_path: Path
) -> None:
    log = tmp_path / "gateway.log"
    nowhere = KafkaEndpoint(f"127.0.0.1:{free_port()}", "none", False)
    topics = TopicSettings(schedule="none.s", notifications="none.n", presence="none.p")
    extra = {"GATEWAY_KAFKA__START_TIMEOUT_SECONDS": "2"}
    if workers > 1:
        extra["GATEWAY_WORKERS"] = str(workers)
    process = start_gateway_process(nowhere, topics, booking_api, free_port(), log, **extra)
    try:
        code = process.wait(30)
    finally:
        stop_gateway_process(process)
    text = log.read_text()
    assert code == KAFKA_UNREACHABLE_EXIT_CODE, text[-3000:]
    assert "Traceback" not in text
    assert "worker exited" not in text  # the supervisor stops, it does not restart them
    gave_up = [line for line in text.splitlines() if "kafka not reachable: giving up" in line]
    # The first worker to give up says so; the supervisor then stops the others, which may
    # or may not have reached their own bound by then (they started a little later).
    assert 1 <= len(gave_up) <= workers, text[-3000:]
    assert all(nowhere.bootstrap_servers in line for line in gave_up)
    if workers > 1:
        assert "gave up on Kafka (its reason above): stopping all workers" in text, text[-3000:]


async def test_a_missing_data_topic_is_waited_for_only_within_the_start_timeout(
    kafka: KafkaEndpoint, booking_api: FakeBookingApi, tmp_path: Path
) -> None:
    """Kafka answers but the data topics were never created: with a start timeout the topic
    wait ends with it (an operator who allows 3 s does not wait 30), one line, exit 69."""
    tag = uuid.uuid4().hex[:8]
    topics = TopicSettings(
        schedule=f"nodata.{tag}.schedule",
        notifications=f"nodata.{tag}.notifications",
        presence=f"nodata.{tag}.presence",
    )
    # presence is there: what is missing is only what the ingest reads
    await create_topics(
        kafka.bootstrap_servers,
        {topics.presence: 1},
        {topics.presence: {"cleanup.policy": "compact"}},
    )
    log = tmp_path / "gateway.log"
    began = time.monotonic()
    process = start_gateway_process(
        kafka,
        topics,
        booking_api,
        free_port(),
        log,
        GATEWAY_KAFKA__START_TIMEOUT_SECONDS=str(START_TIMEOUT_SECONDS),
    )
    try:
        # the interpreter's start (a few seconds on a loaded machine) comes before the bound
        code = await asyncio.to_thread(process.wait, START_TIMEOUT_SECONDS + 12)
        took = time.monotonic() - began
    except subprocess.TimeoutExpired:
        took = time.monotonic() - began
        code = None
    finally:
        await asyncio.to_thread(stop_gateway_process, process)
    text = log.read_text()
    assert code == KAFKA_UNREACHABLE_EXIT_CODE, f"after {took:.1f} s: {text[-3000:]}"
    assert "Traceback" not in text
    gave_up = [line for line in text.splitlines() if "data topic missing: giving up" in line]
    assert len(gave_up) == 1, text[-3000:]
    assert topics.schedule in gave_up[0]


async def test_a_missing_presence_topic_is_waited_for_only_within_the_start_timeout(
    kafka: KafkaEndpoint,
) -> None:
    """Kafka answers, the presence topic is not there: the presence reader's wait for it
    (about 5 s without a start timeout) ends with the start timeout, as the data topics'
    does, and the start goes on (presence reads partition 0 until the topic exists).
    Against the start-up itself, not a gateway process: Tansu creates a topic a producer
    names, and a gateway's first presence publish names it while its reader waits; the
    deployments' Kafka does not (``auto.create.topics.enable: false``)."""
    timeout = 1.5
    settings = GatewayKafkaSettings(
        bootstrap_servers=kafka.bootstrap_servers, start_timeout_seconds=timeout
    )
    presence = KafkaPresenceBus(
        settings, f"nopresence.{uuid.uuid4().hex[:8]}", "g1", ttl_seconds=10
    )
    startup = KafkaStartup(settings, [(presence.start, presence.close)])
    began = time.monotonic()
    try:
        await asyncio.wait_for(startup.run(), 30)
        took = time.monotonic() - began
    finally:
        await presence.stop()
    assert startup.connected
    assert took < timeout + 0.5, f"started {took:.1f} s after it began"
