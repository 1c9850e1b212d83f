"""Every service setting the deployment files set is a real setting of that service, and
the services accept the values. pydantic-settings ignores unknown variables, so a typo
(`GATEWAY_KAFKA_BOOTSTRAP_SERVERS`) would otherwise ship silently with a default."""

import base64
import re
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from booking_api.config import Settings as BookingApiSettings
from change_publisher.config import Settings as PublisherSettings
from push_gateway.config import Settings as GatewaySettings
from tests.deploy.support import (
    OVERLAYS,
    REPO,
    SERVICES_DOCKERFILE,
    Manifest,
    pod_templates,
)

pytestmark = pytest.mark.deploy

SETTINGS: dict[str, type[BaseSettings]] = {
    "BOOKING_API_": BookingApiSettings,
    "PUBLISHER_": PublisherSettings,
    "GATEWAY_": GatewaySettings,
}
#: What the generated Secrets and the downward API would supply in a cluster.
SECRET_VALUES = {
    "mongo-url": "mongodb://booking-api:pw@mongo-0.mongo:27017/slotstream?authSource=admin",
    "internal-token": "t" * 40,
}
#: Where the pods mount files (Kafka password, JWT public key).
MOUNTS = "/etc/slotstream"


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
        if not variable.startswith(prefix):
            continue
        monkeypatch.setenv(variable, value)
    return SETTINGS[prefix]()


def is_python_service(image: str) -> bool:
    """The edge (nginx) uses look-alike names (BOOKING_API_UPSTREAM) for its templates."""
    return "slotstream/" in image and not re.search(r"/edge[:@]", image)


SECRETS_MOUNT = "/run/slotstream"


def compose_environments(
    services: dict[str, dict[str, Any]], secrets: Path | None = None
) -> dict[str, dict[str, str]]:
    """The services' settings as the processes see them: `SECRET_FILE__X` becomes X (what
    with-secrets.sh exports) and, with `secrets` (a folder keygen.py wrote), paths into the
    secrets volume point there and the secret files are read."""
    environments: dict[str, dict[str, str]] = {}
    for name, service in services.items():
        if not is_python_service(service["image"]) or name == "keygen":
            continue
        env: dict[str, str] = {}
        for variable, value in (service.get("environment") or {}).items():
            text = str(value)
            if secrets is not None and text.startswith(SECRETS_MOUNT):
                text = str(secrets) + text.removeprefix(SECRETS_MOUNT)
            if variable.startswith("SECRET_FILE__"):
                variable = variable.removeprefix("SECRET_FILE__")
                text = Path(text).read_text() if secrets is not None else "from-a-file"
            if prefix_of(variable):
                env[variable] = text
        environments[name] = env
    return environments


@pytest.fixture(scope="module")
def generated_secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the Compose `keygen` service writes, generated for real."""
    folder = tmp_path_factory.mktemp("secrets")
    subprocess.run(
        [sys.executable, str(REPO / "deploy" / "compose" / "keygen.py")],
        env={"PATH": "/usr/bin:/bin", "SECRETS_DIR": str(folder)},
        check=True,
        timeout=60,
    )
    return folder


def cluster_environments(
    manifests: list[Manifest], files: Path | None = None
) -> dict[str, dict[str, str]]:
    """The services' settings in the cluster; with `files`, paths under the pods' mounts
    point into that folder (see mounted_files)."""
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
            if files is not None:
                env = {k: v.replace(MOUNTS, str(files), 1) for k, v in env.items()}
            environments[workload["metadata"]["name"]] = {
                k: v for k, v in env.items() if prefix_of(k)
            }
    return environments


@pytest.fixture(scope="module")
def mounted_files(tmp_path_factory: pytest.TempPathFactory, generated_secrets: Path) -> Path:
    """What the pods find under /etc/slotstream: the KafkaUser password Strimzi writes and
    the JWT public key the overlay generates."""
    folder = tmp_path_factory.mktemp("etc-slotstream")
    (folder / "kafka").mkdir()
    (folder / "kafka" / "password").write_text("scram-password")
    (folder / "jwt").mkdir()
    public = (generated_secrets / "public" / "jwt-public.pem").read_text()
    (folder / "jwt" / "jwt-public.pem").write_text(public)
    return folder


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
    compose_services: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    generated_secrets: Path,
) -> None:
    """With the secrets keygen generates, each service starts from its Compose settings."""
    environments = compose_environments(compose_services, generated_secrets)
    api = build("BOOKING_API_", environments["booking-api"], monkeypatch)
    assert api.storage == "mongo"
    assert api.port == 8000
    assert api.host == "0.0.0.0"
    assert api.mongo_url.get_secret_value().startswith("mongodb://booking-api:")
    assert (
        api.internal_token.get_secret_value()
        == (generated_secrets / "booking-api" / "internal-token").read_text()
    )
    publisher = build("PUBLISHER_", environments["change-publisher"], monkeypatch)
    assert publisher.kafka.bootstrap_servers == "kafka:9092"
    assert publisher.http_port == 8001
    assert publisher.source == "mongo"
    assert publisher.kafka.client_options()["sasl_plain_username"] == "change-publisher"
    assert (
        publisher.kafka.client_options()["sasl_plain_password"]
        == (generated_secrets / "kafka" / "change-publisher-password").read_text()
    )
    settings = build("GATEWAY_", environments["push-gateway"], monkeypatch)
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.kafka.client_options()["sasl_plain_username"] == "push-gateway"
    assert settings.port == 8002
    assert settings.host == "0.0.0.0"
    # The edge's address on the Compose network is trusted to name the client.
    trusted = [str(network) for network in settings.trusted_proxies]
    assert "172.16.0.0/12" in trusted
    public_key = (generated_secrets / "public" / "jwt-public.pem").read_text()
    for jwt in (api.jwt, settings.jwt):
        assert jwt.algorithm == "EdDSA"
        assert jwt.issuer
        assert jwt.audience
        assert jwt.public_key == public_key


@pytest.mark.parametrize("name", OVERLAYS)
def test_services_accept_the_cluster_settings(
    rendered: dict[str, list[Manifest]],
    name: str,
    monkeypatch: pytest.MonkeyPatch,
    mounted_files: Path,
) -> None:
    environments = cluster_environments(rendered[name], mounted_files)
    api = build("BOOKING_API_", environments["booking-api"], monkeypatch)
    assert api.mongo_url.get_secret_value() == SECRET_VALUES["mongo-url"]
    assert api.internal_token.get_secret_value() == SECRET_VALUES["internal-token"]
    publisher = build("PUBLISHER_", environments["change-publisher"], monkeypatch)
    assert publisher.instance_id.startswith("change-publisher-")
    assert publisher.kafka.bootstrap_servers == "slotstream-kafka-bootstrap:9092"
    options = publisher.kafka.client_options()
    assert options["sasl_plain_username"] == "change-publisher"
    assert options["sasl_plain_password"] == "scram-password"
    gateway = build("GATEWAY_", environments["push-gateway"], monkeypatch)
    assert gateway.booking_api_url == "http://booking-api:8000"
    assert gateway.instance_id.startswith("push-gateway-")
    assert gateway.kafka.client_options()["sasl_plain_username"] == "push-gateway"
    public_key = (mounted_files / "jwt" / "jwt-public.pem").read_text()
    for jwt in (api.jwt, gateway.jwt):
        assert jwt.algorithm == "EdDSA"
        assert jwt.public_key == public_key


def test_the_generated_secrets_are_accepted_by_the_services(
    rendered: dict[str, list[Manifest]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What generate-secrets.sh writes (rendered into the dev overlay's Secret) starts the
    booking-api: a Mongo URL for its own user and a strong internal token."""
    (secret,) = [
        doc
        for doc in rendered["dev"]
        if doc["kind"] == "Secret" and doc["metadata"]["name"].startswith("booking-api-secrets")
    ]
    values = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    (public_key,) = [
        doc["data"]["jwt-public.pem"]
        for doc in rendered["dev"]
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith("jwt-public-key")
    ]
    assert "PRIVATE" not in public_key
    (tmp_path / "jwt-public.pem").write_text(public_key)
    api = build(
        "BOOKING_API_",
        {
            "BOOKING_API_MONGO_URL": values["mongo-url"],
            "BOOKING_API_INTERNAL_TOKEN": values["internal-token"],
            "BOOKING_API_JWT__ALGORITHM": "EdDSA",
            "BOOKING_API_JWT__PUBLIC_KEY_FILE": str(tmp_path / "jwt-public.pem"),
        },
        monkeypatch,
    )
    url = api.mongo_url.get_secret_value()
    assert url.startswith("mongodb://booking-api:")
    assert "replicaSet=rs0" in url
    assert "authSource=admin" in url
    assert len(api.internal_token.get_secret_value()) >= 32
