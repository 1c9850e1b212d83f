"""Bearer tokens (JWT) shared by the booking-api and the push-gateway.

Claims: ``sub`` (the user id; an instructor's user id is their instructor id), ``role``
(``student``, ``instructor`` or ``admin``), optional ``name``, and ``exp`` (required).
HS256 with a shared secret, or RS256 with a public key for verification.
"""

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Literal

import jwt
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from slotstream_contracts.entities import DisplayName
from slotstream_contracts.ids import EntityId


class Role(StrEnum):
    STUDENT = "student"
    INSTRUCTOR = "instructor"
    ADMIN = "admin"


class Principal(BaseModel):
    """Who is calling, as proven by a verified token."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    user_id: EntityId = Field(alias="sub")
    role: Role
    name: DisplayName | None = None

    def may_act_for(self, user_id: str) -> bool:
        return self.role is Role.ADMIN or self.user_id == user_id


class JwtSettings(BaseModel):
    algorithm: Literal["HS256", "RS256"] = "HS256"
    secret: SecretStr | None = Field(default=None, description="HS256 shared secret")
    public_key: str | None = Field(default=None, description="RS256 PEM public key")
    private_key: SecretStr | None = Field(
        default=None, description="RS256 PEM private key (only where tokens are minted)"
    )
    audience: str | None = None
    issuer: str | None = None
    leeway_seconds: int = Field(default=10, ge=0, le=300)

    def verification_key(self) -> str:
        if self.algorithm == "HS256":
            if self.secret is None or len(self.secret.get_secret_value()) < 32:
                raise ValueError("HS256 needs a secret of at least 32 characters")
            return self.secret.get_secret_value()
        if not self.public_key:
            raise ValueError("RS256 needs a public key")
        return self.public_key

    def signing_key(self) -> str:
        if self.algorithm == "HS256":
            return self.verification_key()
        if self.private_key is None:
            raise ValueError("RS256 signing needs a private key")
        return self.private_key.get_secret_value()


class InvalidToken(Exception):
    """The token is missing, malformed, expired, or its signature or claims are wrong."""


def verify_token(token: str, settings: JwtSettings) -> Principal:
    try:
        claims = jwt.decode(
            token,
            settings.verification_key(),
            algorithms=[settings.algorithm],
            audience=settings.audience,
            issuer=settings.issuer,
            leeway=settings.leeway_seconds,
            options={"require": ["exp", "sub"]},
        )
        return Principal.model_validate(claims)
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from exc
    except ValidationError as exc:
        raise InvalidToken(f"invalid claims: {exc.errors()[0]['msg']}") from exc


def mint_token(
    settings: JwtSettings,
    user_id: str,
    role: Role,
    name: str | None = None,
    ttl: timedelta = timedelta(hours=12),
) -> str:
    now = datetime.now(UTC)
    claims: dict[str, object] = {"sub": user_id, "role": role.value, "iat": now, "exp": now + ttl}
    if name:
        claims["name"] = name
    if settings.audience:
        claims["aud"] = settings.audience
    if settings.issuer:
        claims["iss"] = settings.issuer
    return jwt.encode(claims, settings.signing_key(), algorithm=settings.algorithm)
