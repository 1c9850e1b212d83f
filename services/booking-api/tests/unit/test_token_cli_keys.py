"""slotstream-token signs with the private key from BOOKING_API_JWT__PRIVATE_KEY_FILE."""

from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from booking_api import tokens
from slotstream_contracts.auth import JwtSettings, verify_token


def test_eddsa_token_with_issuer_and_audience_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "pub.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    monkeypatch.delenv("BOOKING_API_JWT__SECRET", raising=False)
    monkeypatch.setenv("BOOKING_API_JWT__ALGORITHM", "EdDSA")
    monkeypatch.setenv("BOOKING_API_JWT__PRIVATE_KEY_FILE", str(tmp_path / "key.pem"))
    monkeypatch.setenv("BOOKING_API_JWT__ISSUER", "slotstream")
    monkeypatch.setenv("BOOKING_API_JWT__AUDIENCE", "slotstream-api")
    tokens.main(["--sub", "s1", "--role", "student", "--ttl-hours", "1"])
    token = capsys.readouterr().out.strip()
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    verifier = JwtSettings.model_validate(
        {
            "algorithm": "EdDSA",
            "public_key_file": tmp_path / "pub.pem",
            "issuer": "slotstream",
            "audience": "slotstream-api",
        }
    )
    assert verify_token(token, verifier).user_id == "s1"
    with pytest.raises(SystemExit):  # beyond the 24 h maximum lifetime
        tokens.main(["--sub", "s1", "--role", "student", "--ttl-hours", "25"])
