"""Real MongoDB for the contract suites: ``MONGO_URL``, or a Docker replica set."""

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from slotstream_testkit.kafka import docker_available

NO_MONGO_REASON = (
    "real MongoDB not available: set MONGO_URL (a replica set, for change streams) or run "
    "where a Docker engine answers; the same suite ran against the in-memory fake"
)


@contextmanager
def real_mongo_url() -> Iterator[str | None]:
    """Yield a MongoDB URL, or None when no real MongoDB can be had here."""
    url = os.environ.get("MONGO_URL")
    if url:
        yield url
        return
    if not docker_available():
        yield None
        return
    from testcontainers.core.container import DockerContainer

    container = (
        DockerContainer(os.environ.get("SLOTSTREAM_MONGO_IMAGE", "mongo:7.0"))
        .with_command("--replSet rs0 --bind_ip_all")
        .with_exposed_ports(27017)
    )
    with container:
        init = "rs.initiate({_id:'rs0',members:[{_id:0,host:'localhost:27017'}]})"
        deadline = time.monotonic() + 60
        while True:
            code, _ = container.exec(["mongosh", "--quiet", "--eval", init])
            if code == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        host = container.get_container_host_ip()
        port = container.get_exposed_port(27017)
        yield f"mongodb://{host}:{port}/?directConnection=true"
