"""``slotstream-events`` reaches a broker that wants SASL/SCRAM (Compose's ``localhost:9094``,
Strimzi): the security settings from the options or ``SLOTSTREAM_EVENTS_*`` reach the
consumer, and half-configured SASL is a usage error, not a failed connection."""

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from push_gateway import events_cli
from slotstream_testkit.net import free_port


class RecordingConsumer:
    created: list[dict[str, Any]] = []

    def __init__(self, **options: Any) -> None:
        self.created.append(options)

    async def start(self) -> None:
        raise RuntimeError("stop here: the options are recorded")


async def test_sasl_settings_reach_the_consumer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    password = tmp_path / "admin-password"
    password.write_text("admin-secret\n")
    monkeypatch.setattr(events_cli, "AIOKafkaConsumer", RecordingConsumer)
    args = events_cli.parse_args(
        [
            "schedule",
            "--bootstrap-servers",
            "localhost:9094",
            "--security-protocol",
            "SASL_PLAINTEXT",
            "--sasl-mechanism",
            "SCRAM-SHA-512",
            "--sasl-username",
            "admin",
            "--sasl-password-file",
            str(password),
        ]
    )
    with pytest.raises(RuntimeError, match="stop here"):
        await events_cli.tail(args, io.StringIO())
    options = RecordingConsumer.created[-1]
    assert options["bootstrap_servers"] == "localhost:9094"
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "admin"
    assert options["sasl_plain_password"] == "admin-secret"
    assert options["enable_auto_commit"] is False


async def test_sasl_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLOTSTREAM_EVENTS_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SLOTSTREAM_EVENTS_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("SLOTSTREAM_EVENTS_SASL_USERNAME", "admin")
    monkeypatch.setenv("SLOTSTREAM_EVENTS_SASL_PASSWORD", "from-env")
    monkeypatch.setattr(events_cli, "AIOKafkaConsumer", RecordingConsumer)
    args = events_cli.parse_args(["notifications", "--bootstrap-servers", "kafka:9093"])
    with pytest.raises(RuntimeError, match="stop here"):
        await events_cli.tail(args, io.StringIO())
    options = RecordingConsumer.created[-1]
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_plain_username"] == "admin"
    assert options["sasl_plain_password"] == "from-env"
    assert options["ssl_context"] is not None


def test_half_configured_sasl_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        events_cli.parse_args(["--security-protocol", "SASL_PLAINTEXT", "--sasl-username", "a"])
    assert exited.value.code == 2
    assert "SASL_PLAINTEXT needs" in capsys.readouterr().err


def test_a_broker_it_cannot_reach_is_one_line_and_status_1() -> None:
    """An address nothing answers on ended in aiokafka's traceback and an "Unclosed
    AIOKafkaConsumer" warning; the engineer gets one line naming the address."""
    ran = subprocess.run(
        [sys.executable, "-m", "push_gateway.events_cli", "schedule"],
        env={**os.environ, "SLOTSTREAM_EVENTS_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 1
    assert ran.stderr.startswith("slotstream-events: cannot reach the broker at 127.0.0.1:")
    assert "Traceback" not in ran.stderr
    assert "Unclosed" not in ran.stderr
