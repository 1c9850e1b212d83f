"""Every Kafka client of the gateway (ingest, history reads, presence) gets the SASL
settings from GATEWAY_KAFKA__* (Compose and Kubernetes run Kafka with SCRAM-SHA-512)."""

import secrets
from pathlib import Path
from typing import Any

import pytest

from push_gateway.adapters import kafka as kafka_adapter
from push_gateway.adapters import presence as presence_adapter
from push_gateway.config import Settings


class RecordingClient:
    created: list[dict[str, Any]] = []

    def __init__(self, **options: Any) -> None:
        self.created.append(options)


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    password = tmp_path / "password"
    password.write_text("gateway-password")
    monkeypatch.setenv("GATEWAY_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("GATEWAY_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("GATEWAY_KAFKA__SASL_USERNAME", "push-gateway")
    monkeypatch.setenv("GATEWAY_KAFKA__SASL_PASSWORD_FILE", str(password))
    # the gateway refuses to start without a usable verification key
    monkeypatch.setenv("GATEWAY_JWT__SECRET", secrets.token_hex(32))
    return Settings()


def assert_scram(options: dict[str, Any]) -> None:
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "push-gateway"
    assert options["sasl_plain_password"] == "gateway-password"


def test_ingest_and_history_consumers_authenticate(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka_adapter, "AIOKafkaConsumer", RecordingClient)
    kafka_adapter._consumer(settings.kafka, auto_offset_reset="earliest")
    options = RecordingClient.created[-1]
    assert_scram(options)
    assert options["group_id"] is None
    assert options["fetch_max_wait_ms"] == settings.kafka.fetch_max_wait_ms


async def test_presence_clients_authenticate(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FailingStart(RecordingClient):
        async def start(self) -> None:
            raise RuntimeError("stop here: the options are recorded")

        async def stop(self) -> None:  # a failed start closes what it opened
            return None

    monkeypatch.setattr(presence_adapter, "AIOKafkaProducer", FailingStart)
    presence = presence_adapter.KafkaPresenceBus(
        settings.kafka, settings.topics.presence, "gw-1", ttl_seconds=30
    )
    with pytest.raises(RuntimeError, match="stop here"):
        await presence.start()
    options = RecordingClient.created[-1]
    assert_scram(options)
    assert options["client_id"].endswith("-presence")
