from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import SecretStr, ValidationError

from slotstream_contracts.auth import (
    InvalidToken,
    JwtSettings,
    Role,
    mint_token,
    secret_weakness,
    verify_token,
    verify_token_claims,
)

STRONG = "2f8c1d9e7a4b6053c8e1f2a9d7b4c6e0"
SETTINGS = JwtSettings(secret=SecretStr(STRONG))


def _pem_pair(
    private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
) -> tuple[str, str]:
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return public_pem, private_pem


ED_PUBLIC, ED_PRIVATE = _pem_pair(ed25519.Ed25519PrivateKey.generate())


def test_minted_token_verifies_to_its_principal() -> None:
    token = mint_token(SETTINGS, "u1", Role.STUDENT, name="Ada")
    principal = verify_token(token, SETTINGS)
    assert (principal.user_id, principal.role, principal.name) == ("u1", Role.STUDENT, "Ada")
    assert principal.may_act_for("u1")
    assert not principal.may_act_for("u2")


def test_expired_token_is_rejected() -> None:
    token = mint_token(SETTINGS, "u1", Role.STUDENT, ttl=timedelta(seconds=-60))
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(token, SETTINGS)


def test_token_signed_with_another_secret_is_rejected() -> None:
    other = JwtSettings(secret=SecretStr("9" + STRONG[1:]))
    with pytest.raises(InvalidToken, match="Signature"):
        verify_token(mint_token(other, "u1", Role.ADMIN), SETTINGS)


def test_unknown_role_and_bad_subject_are_rejected() -> None:
    now = int(datetime.now(UTC).timestamp())
    for claims in ({"sub": "u1", "role": "root"}, {"sub": "u$1", "role": "student"}):
        token = jwt.encode({**claims, "iat": now, "exp": now + 60}, STRONG, algorithm="HS256")
        with pytest.raises(InvalidToken, match="invalid claims"):
            verify_token(token, SETTINGS)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        JwtSettings(secret=SecretStr("short"))
    with pytest.raises(ValueError, match="at least 32"):
        JwtSettings().verification_key()


@pytest.mark.parametrize(
    "secret", ["abcdefgh" * 4, "s" * 32, "x" * 40, "unit-secret-" + "x" * 32, "ab" * 30]
)
def test_low_entropy_secrets_are_refused(secret: str) -> None:
    assert secret_weakness(secret) is not None
    with pytest.raises(ValidationError):
        JwtSettings(secret=SecretStr(secret))


def test_random_secrets_pass() -> None:
    import secrets

    for _ in range(200):
        assert secret_weakness(secrets.token_hex(16)) is None
        assert secret_weakness(secrets.token_urlsafe(32)) is None


def test_a_random_secret_with_four_xs_in_a_row_is_no_placeholder() -> None:
    """Drawn by ``secrets.token_urlsafe(32)`` in test_random_secrets_pass, which it failed."""
    assert secret_weakness("Z1yY8nIrBXXxxAWrF0N2NYCrVkTlURSYJAcaK_uvOgw") is None
    assert secret_weakness("Z1yY8nIrBXXxxXXxxAWrF0N2NYCrVkTlURSYJAcaK_uvOgw") is not None


def test_iat_is_required() -> None:
    now = int(datetime.now(UTC).timestamp())
    token = jwt.encode({"sub": "u1", "role": "student", "exp": now + 60}, STRONG, "HS256")
    with pytest.raises(InvalidToken, match="iat"):
        verify_token(token, SETTINGS)


def test_lifetime_longer_than_the_maximum_is_refused() -> None:
    now = int(datetime.now(UTC).timestamp())
    claims = {"sub": "u1", "role": "student", "iat": now, "exp": now + 25 * 3600}
    with pytest.raises(InvalidToken, match="lifetime"):
        verify_token(jwt.encode(claims, STRONG, "HS256"), SETTINGS)
    with pytest.raises(ValueError, match="at most"):
        mint_token(SETTINGS, "u1", Role.STUDENT, ttl=timedelta(hours=25))


def test_issuer_and_audience_are_required_when_configured() -> None:
    strict = JwtSettings(secret=SecretStr(STRONG), issuer="slotstream", audience="slotstream-api")
    assert verify_token(mint_token(strict, "u1", Role.STUDENT), strict).user_id == "u1"
    for other in (
        JwtSettings(secret=SecretStr(STRONG)),
        JwtSettings(secret=SecretStr(STRONG), issuer="evil", audience="slotstream-api"),
        JwtSettings(secret=SecretStr(STRONG), issuer="slotstream", audience="other"),
    ):
        with pytest.raises(InvalidToken):
            verify_token(mint_token(other, "u1", Role.STUDENT), strict)


def _asymmetric(algorithm: str) -> tuple[str, str]:
    if algorithm == "EdDSA":
        return ED_PUBLIC, ED_PRIVATE
    if algorithm == "ES256":
        return _pem_pair(ec.generate_private_key(ec.SECP256R1()))
    return _pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256", "RS256"])
def test_asymmetric_algorithms_from_key_files(algorithm: str, tmp_path: Path) -> None:
    public_pem, private_pem = _asymmetric(algorithm)
    (tmp_path / "pub.pem").write_text(public_pem)
    (tmp_path / "key.pem").write_text(private_pem)
    minter = JwtSettings.model_validate(
        {"algorithm": algorithm, "private_key_file": tmp_path / "key.pem"}
    )
    verifier = JwtSettings.model_validate(
        {"algorithm": algorithm, "public_key_file": tmp_path / "pub.pem"}
    )
    verified = verify_token_claims(mint_token(minter, "u1", Role.ADMIN), verifier)
    assert verified.principal.role is Role.ADMIN
    assert verified.expires_at > datetime.now(UTC).timestamp()
    with pytest.raises(ValueError, match="private key"):
        verifier.signing_key()


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    verifier = JwtSettings.model_validate({"algorithm": "EdDSA", "public_key": ED_PUBLIC})
    now = int(datetime.now(UTC).timestamp())
    claims = {"sub": "admin", "role": "admin", "iat": now, "exp": now + 60}
    forged = _hmac_token(claims, ED_PUBLIC)
    with pytest.raises(InvalidToken):
        verify_token(forged, verifier)
    unsigned = jwt.encode(claims, "", algorithm="none")
    with pytest.raises(InvalidToken):
        verify_token(unsigned, verifier)


def _hmac_token(claims: dict[str, object], key: str) -> str:
    import base64
    import hashlib
    import hmac

    import orjson

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(orjson.dumps(claims))
    signature = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def test_key_of_the_wrong_kind_or_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not a key for ES256"):
        JwtSettings.model_validate({"algorithm": "ES256", "public_key": ED_PUBLIC})
    with pytest.raises(ValidationError, match="cannot read"):
        JwtSettings.model_validate({"algorithm": "EdDSA", "public_key_file": tmp_path / "no"})
    with pytest.raises(ValidationError, match="unreadable PEM"):
        JwtSettings.model_validate({"algorithm": "EdDSA", "public_key": "not a pem"})
    with pytest.raises(ValueError, match="needs a public key"):
        JwtSettings(algorithm="EdDSA").verification_key()
