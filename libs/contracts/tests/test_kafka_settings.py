"""Kafka client settings: SASL/SCRAM credentials (inline or from a file) reach the client
options every service passes to aiokafka."""

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from slotstream_contracts.settings import KafkaSettings


def test_plaintext_by_default_without_sasl_options() -> None:
    options = KafkaSettings().client_options()
    assert options["security_protocol"] == "PLAINTEXT"
    assert "sasl_mechanism" not in options
    assert options["bootstrap_servers"] == "127.0.0.1:9092"


def test_scram_credentials_reach_the_client_options() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="gateway",
        sasl_password=SecretStr("s3cret-s3cret"),
    )
    options = settings.client_options()
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "gateway"
    assert options["sasl_plain_password"] == "s3cret-s3cret"
    assert "s3cret" not in repr(settings)


def test_password_file_is_read_at_start(tmp_path: Path) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text("from-a-file\n")
    settings = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="publisher",
        sasl_password_file=secret,
    )
    assert settings.client_options()["sasl_plain_password"] == "from-a-file"


def test_sasl_ssl_gets_a_tls_context() -> None:
    options = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u",
        sasl_password=SecretStr("p"),
    ).client_options()
    assert options["ssl_context"] is not None


@pytest.mark.parametrize(
    "fields",
    [
        {"security_protocol": "SASL_PLAINTEXT"},
        {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512"},
        {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "u",
        },
        {"sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u", "sasl_password": "p"},
        {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "u",
            "sasl_password": "p",
            "sasl_password_file": "/nonexistent/kafka-password",
        },
    ],
)
def test_incomplete_or_contradictory_sasl_settings_are_refused(fields: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        KafkaSettings.model_validate(fields)


def test_an_unreadable_password_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="sasl_password_file"):
        KafkaSettings(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="u",
            sasl_password_file=tmp_path / "missing",
        )
