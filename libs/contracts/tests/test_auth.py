from datetime import timedelta

import pytest
from pydantic import SecretStr

from slotstream_contracts.auth import InvalidToken, JwtSettings, Role, mint_token, verify_token

SETTINGS = JwtSettings(secret=SecretStr("s" * 32))


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
    other = JwtSettings(secret=SecretStr("x" * 32))
    with pytest.raises(InvalidToken, match="Signature"):
        verify_token(mint_token(other, "u1", Role.ADMIN), SETTINGS)


def test_unknown_role_and_bad_subject_are_rejected() -> None:
    import jwt

    for claims in ({"sub": "u1", "role": "root"}, {"sub": "u$1", "role": "student"}):
        token = jwt.encode({**claims, "exp": 4_000_000_000}, "s" * 32, algorithm="HS256")
        with pytest.raises(InvalidToken, match="invalid claims"):
            verify_token(token, SETTINGS)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        JwtSettings(secret=SecretStr("short")).verification_key()
