"""The gateway checks its token settings at start, as the booking-api does."""

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from push_gateway.__main__ import main
from push_gateway.config import Settings


@pytest.fixture(autouse=True)
def no_gateway_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SECRET", "ALGORITHM", "PUBLIC_KEY", "PUBLIC_KEY_FILE", "PRIVATE_KEY"):
        monkeypatch.delenv(f"GATEWAY_JWT__{name}", raising=False)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "HS256 needs a secret"),
        ({"GATEWAY_JWT__SECRET": "abcdefgh" * 4}, "too repetitive"),
        ({"GATEWAY_JWT__ALGORITHM": "EdDSA"}, "EdDSA needs a public key"),
        (
            {"GATEWAY_JWT__ALGORITHM": "EdDSA", "GATEWAY_JWT__PUBLIC_KEY_FILE": "/nonexistent"},
            "cannot read the public key file",
        ),
    ],
)
def test_the_gateway_refuses_to_start_with_bad_key_settings(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_TRUSTED_PROXIES", "10.0.0.0/8"),
        ("GATEWAY_CORS_ORIGINS", "https://app.example.com"),
        ("GATEWAY_KAFKA", "k1:9092"),
    ],
)
def test_the_gateway_refuses_to_start_with_a_json_setting_that_is_not_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    """pydantic-settings decodes list and object settings as JSON and fails with its own
    error (no ValidationError): the refusal names the variable and says JSON."""
    monkeypatch.setenv("GATEWAY_JWT__SECRET", "k3Vq8-ZpWm2Rt7Yx4Lb9Nc6Hd1Fg5Js0Ae")
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("push-gateway: refusing to start, bad settings:")
    assert name in err
    assert "JSON" in err


def test_a_public_key_file_is_enough_to_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "public.pem").write_bytes(pem)
    monkeypatch.setenv("GATEWAY_JWT__ALGORITHM", "EdDSA")
    monkeypatch.setenv("GATEWAY_JWT__PUBLIC_KEY_FILE", str(tmp_path / "public.pem"))
    settings = Settings()
    with pytest.raises(ValueError, match="private key"):
        settings.jwt.signing_key()  # the gateway can verify, never mint


def test_the_fetch_loop_settings_default_to_the_lean_loop_and_can_go_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_JWT__SECRET", "s3cr3t-for-the-fetch-settings-test-7f2a")
    kafka = Settings().kafka
    assert (kafka.fetch_loop, kafka.fetch_moderate_min_bytes) == ("lean", 1_048_576)
    monkeypatch.setenv("GATEWAY_KAFKA__FETCH_LOOP", "aiokafka")
    monkeypatch.setenv("GATEWAY_KAFKA__FETCH_MODERATE_MIN_BYTES", "1")
    kafka = Settings().kafka
    assert (kafka.fetch_loop, kafka.fetch_moderate_min_bytes) == ("aiokafka", 1)
    monkeypatch.setenv("GATEWAY_KAFKA__FETCH_LOOP", "kafka-python")
    with pytest.raises(ValueError, match="fetch_loop"):
        Settings()


def test_a_unix_socket_path_longer_than_a_socket_address_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("GATEWAY_JWT__SECRET", "s3cr3t-for-the-unix-socket-test-4be1")
    monkeypatch.setenv("GATEWAY_UNIX_SOCKET", str(tmp_path / ("d" * 100) / "gateway.sock"))
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    assert "at most 107 bytes" in capsys.readouterr().err


def test_a_unix_socket_path_that_is_a_file_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("the operator's notes")
    monkeypatch.setenv("GATEWAY_JWT__SECRET", "s3cr3t-for-the-unix-socket-test-4be1")
    monkeypatch.setenv("GATEWAY_UNIX_SOCKET", str(notes))
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    assert "exists and is not a socket" in capsys.readouterr().err
    assert notes.read_text() == "the operator's notes"
