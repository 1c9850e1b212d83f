"""The producer gets the SASL settings from PUBLISHER_KAFKA__* (Compose and Kubernetes run
Kafka with SCRAM-SHA-512)."""

from pathlib import Path
from typing import Any

import pytest

from change_publisher.adapters import kafka as kafka_adapter
from change_publisher.config import Settings


class RecordingProducer:
    created: list[dict[str, Any]] = []

    def __init__(self, **options: Any) -> None:
        self.created.append(options)

    async def start(self) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def stop(self) -> None:
        return None


async def test_scram_settings_from_the_environment_reach_the_producer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    password = tmp_path / "password"
    password.write_text("publisher-password\n")
    monkeypatch.setenv("PUBLISHER_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("PUBLISHER_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("PUBLISHER_KAFKA__SASL_USERNAME", "change-publisher")
    monkeypatch.setenv("PUBLISHER_KAFKA__SASL_PASSWORD_FILE", str(password))
    monkeypatch.setattr(kafka_adapter, "AIOKafkaProducer", RecordingProducer)
    settings = Settings()
    producer = kafka_adapter.KafkaEventProducer(
        settings.kafka, enable_idempotence=True, compression="none", max_batch_size=1
    )
    await producer.start()
    options = RecordingProducer.created[-1]
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "change-publisher"
    assert options["sasl_plain_password"] == "publisher-password"
    assert options["acks"] == "all"
    await producer.stop(1.0)
