"""Every service setting the deployment files set is a real setting of that service, and
the services accept the values. pydantic-settings ignores unknown variables, so a typo
(`GATEWAY_KAFKA_BOOTSTRAP_SERVERS`) would otherwise ship silently with a default."""

import base64
import typing
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from booking_api.config import Settings as BookingApiSettings
from change_publisher.config import Settings as PublisherSettings
from push_gateway.config import Settings as GatewaySettings
from tests.deploy.support import (
    OVERLAYS,
    SERVICES_DOCKERFILE,
    TEST_JWT_SECRET,
    Manifest,
    pod_templates,
)

pytestmark = pytest.mark.deploy

SETTINGS: dict[str, type[BaseSettings]] = {
    "BOOKING_API_": BookingApiSettings,
    "PUBLISHER_": PublisherSettings,
    "GATEWAY_": GatewaySettings,
}
#: What the Secret and the downward API would supply in a cluster.
SECRET_VALUES = {"jwt-secret": TEST_JWT_SECRET, "mongo-url": "mongodb://mongo-0.mongo:27017/"}


def prefix_of(variable: str) -> str | None:
    return next((p for p in SETTINGS if variable.startswith(p)), None)


def models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from models_in(argument)


def is_setting(variable: str) -> bool:
    prefix = prefix_of(variable)
    assert prefix is not None
    model: type[BaseModel] = SETTINGS[prefix]
    parts = variable.removeprefix(prefix).lower().split("__")
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if depth < len(parts) - 1:
            nested = list(models_in(field.annotation))
            if not nested:
                return False
            model = nested[0]
    return True


def build(prefix: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    import os

    for variable in list(os.environ):
        if prefix_of(variable):
            monkeypatch.delenv(variable)
    for variable, value in env.items():
        if variable.startswith(prefix):
            monkeypatch.setenv(variable, value)
    return SETTINGS[prefix]()


def is_python_service(image: str) -> bool:
    """The edge (nginx) uses look-alike names (BOOKING_API_UPSTREAM) for its templates."""
    return "slotstream/" in image and "/edge:" not in image


def compose_environments(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {
        name: {k: str(v) for k, v in (service.get("environment") or {}).items() if prefix_of(k)}
        for name, service in services.items()
        if is_python_service(service["image"])
    }


def cluster_environments(manifests: list[Manifest]) -> dict[str, dict[str, str]]:
    config_maps = {
        d["metadata"]["name"]: d.get("data", {}) for d in manifests if d["kind"] == "ConfigMap"
    }
    environments: dict[str, dict[str, str]] = {}
    for workload, template in pod_templates(manifests):
        for container in template["spec"]["containers"]:
            if not is_python_service(container["image"]):
                continue
            env: dict[str, str] = {}
            for source in container.get("envFrom", []):
                env.update(config_maps[source["configMapRef"]["name"]])
            for variable in container.get("env", []):
                source = variable.get("valueFrom", {})
                if "secretKeyRef" in source:
                    env[variable["name"]] = SECRET_VALUES[source["secretKeyRef"]["key"]]
                elif "fieldRef" in source:
                    env[variable["name"]] = f"{workload['metadata']['name']}-7d9f-x2k4q"
                else:
                    env[variable["name"]] = variable["value"]
            environments[workload["metadata"]["name"]] = {
                k: v for k, v in env.items() if prefix_of(k)
            }
    return environments


def test_compose_sets_only_real_settings(compose_services: dict[str, dict[str, Any]]) -> None:
    for service, env in compose_environments(compose_services).items():
        unknown = [variable for variable in env if not is_setting(variable)]
        assert not unknown, f"{service}: {unknown}"


@pytest.mark.parametrize("name", OVERLAYS)
def test_kubernetes_sets_only_real_settings(rendered: dict[str, list[Manifest]], name: str) -> None:
    for workload, env in cluster_environments(rendered[name]).items():
        unknown = [variable for variable in env if not is_setting(variable)]
        assert not unknown, f"{workload}: {unknown}"


def test_dockerfiles_set_only_real_settings() -> None:
    import re

    text = SERVICES_DOCKERFILE.read_text()
    for prefix in ("BOOKING_API", "PUBLISHER", "GATEWAY"):
        variables = re.findall(rf"\b({prefix}_\w+)=", text)
        assert variables, prefix
        unknown = [variable for variable in variables if not is_setting(variable)]
        assert not unknown, f"{prefix}: {unknown}"


def test_the_unknown_setting_check_can_fail() -> None:
    assert is_setting("GATEWAY_KAFKA__BOOTSTRAP_SERVERS")
    assert not is_setting("GATEWAY_KAFKA_BOOTSTRAP_SERVERS")
    assert not is_setting("PUBLISHER_KAFKA__BOOTSTRAP")


def test_services_accept_the_compose_settings(
    compose_services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    environments = compose_environments(compose_services)
    api = build("BOOKING_API_", environments["booking-api"], monkeypatch)
    assert api.storage == "mongo"
    assert api.port == 8000
    assert api.host == "0.0.0.0"
    publisher = build("PUBLISHER_", environments["change-publisher"], monkeypatch)
    assert publisher.kafka.bootstrap_servers == "kafka:9092"
    assert publisher.http_port == 8001
    assert publisher.source == "mongo"
    for gateway in ("push-gateway-1", "push-gateway-2"):
        settings = build("GATEWAY_", environments[gateway], monkeypatch)
        assert settings.kafka.bootstrap_servers == "kafka:9092"
        assert settings.jwt.verification_key() == TEST_JWT_SECRET
        assert settings.port == 8002
        assert settings.host == "0.0.0.0"


@pytest.mark.parametrize("name", OVERLAYS)
def test_services_accept_the_cluster_settings(
    rendered: dict[str, list[Manifest]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    environments = cluster_environments(rendered[name])
    api = build("BOOKING_API_", environments["booking-api"], monkeypatch)
    assert api.mongo_url.get_secret_value() == SECRET_VALUES["mongo-url"]
    publisher = build("PUBLISHER_", environments["change-publisher"], monkeypatch)
    assert publisher.instance_id.startswith("change-publisher-")
    assert publisher.kafka.bootstrap_servers == "slotstream-kafka-bootstrap:9092"
    gateway = build("GATEWAY_", environments["push-gateway"], monkeypatch)
    assert gateway.booking_api_url == "http://booking-api:8000"
    assert gateway.instance_id.startswith("push-gateway-")


def test_the_dev_secret_is_accepted_by_the_services(
    rendered: dict[str, list[Manifest]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The committed dev secret must pass the booking-api's weak-secret checks."""
    (secret,) = [doc for doc in rendered["dev"] if doc["kind"] == "Secret"]
    values = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    api = build(
        "BOOKING_API_",
        {
            "BOOKING_API_JWT__SECRET": values["jwt-secret"],
            "BOOKING_API_MONGO_URL": values["mongo-url"],
        },
        monkeypatch,
    )
    assert api.jwt.verification_key() == values["jwt-secret"]
    assert "replicaSet=rs0" in api.mongo_url.get_secret_value()
