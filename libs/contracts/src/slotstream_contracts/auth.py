"""Bearer tokens (JWT) shared by the booking-api and the push-gateway.

Claims: ``sub`` (the user id; an instructor's user id is their instructor id), ``role``
(``student``, ``instructor`` or ``admin``), optional ``name``, ``iat`` and ``exp`` (both
required, ``exp - iat`` at most ``max_lifetime_seconds``), and ``iss``/``aud`` when the
settings name them.

Algorithms: EdDSA (Ed25519), ES256 and RS256 verify with a public key, so the tier that only
checks tokens (the gateways) cannot mint them; the private key lives only where tokens are
minted (``slotstream-token``, ``slotstream-seed``). HS256 (one shared secret) stays for
tests; its secret must be long and varied. Exactly one algorithm is accepted per
deployment, so ``alg: none`` and HS/RS confusion (an HMAC signed with the public key) are
refused by construction.
"""

import math
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    model_validator,
)

from slotstream_contracts.entities import DisplayName
from slotstream_contracts.ids import EntityId

Algorithm = Literal["EdDSA", "ES256", "RS256", "HS256"]

#: HS256 secrets: at least this many characters …
MIN_SECRET_CHARS: Final = 32
#: … this many distinct characters …
MIN_SECRET_DISTINCT: Final = 8
#: … this much Shannon entropy per character (32 random hex digits have ≈ 3.6 and never
#: less than ≈ 2.8 in 200,000 draws; ``secrets.token_urlsafe(32)`` ≈ 5), and must not be
#: one block repeated.
MIN_SECRET_BITS_PER_CHAR: Final = 2.75
MIN_RSA_BITS: Final = 2048
#: Fragments that mark a secret copied from an example rather than chosen (matched in any
#: case). Eight x, not four: about one random ``token_urlsafe(32)`` secret in 26,000 holds
#: four x/X in a row, and was refused as a placeholder.
PLACEHOLDER_FRAGMENTS: Final = (
    "changeme",
    "change-me",
    "change_me",
    "placeholder",
    "example",
    "xxxxxxxx",
)


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


def secret_weakness(secret: str) -> str | None:
    """Why ``secret`` is too weak for HS256, or None when it is acceptable."""
    if len(secret) < MIN_SECRET_CHARS:
        return f"an HS256 secret needs at least {MIN_SECRET_CHARS} characters"
    if any(fragment in secret.lower() for fragment in PLACEHOLDER_FRAGMENTS):
        return "the HS256 secret looks like a placeholder; choose one"
    counts = Counter(secret)
    if len(counts) < MIN_SECRET_DISTINCT:
        return f"the HS256 secret is too repetitive (< {MIN_SECRET_DISTINCT} distinct characters)"
    if _period(secret) <= len(secret) // 2:
        return "the HS256 secret is too repetitive (one block repeated, like abcdefgh × 4)"
    bits = -sum(n / len(secret) * math.log2(n / len(secret)) for n in counts.values())
    if bits < MIN_SECRET_BITS_PER_CHAR:
        return (
            f"the HS256 secret is too predictable ({bits:.2f} bits per character, "
            f"at least {MIN_SECRET_BITS_PER_CHAR} needed); use e.g. openssl rand -hex 32"
        )
    return None


def _period(text: str) -> int:
    """The length of the shortest block that ``text`` repeats (``len(text)`` if none)."""
    for period in range(1, len(text) // 2 + 1):
        if all(text[i] == text[i + period] for i in range(len(text) - period)):
            return period
    return len(text)


def _check_key_type(algorithm: Algorithm, key: object, which: str) -> None:
    expected: tuple[type, ...]
    if algorithm == "EdDSA":
        expected = (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)
    elif algorithm == "ES256":
        expected = (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)
    else:
        expected = (rsa.RSAPublicKey, rsa.RSAPrivateKey)
    if not isinstance(key, expected):
        raise ValueError(f"the {which} is a {type(key).__name__}, not a key for {algorithm}")
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and not isinstance(
        key.curve, ec.SECP256R1
    ):
        raise ValueError(f"ES256 needs a P-256 key, the {which} uses {key.curve.name}")
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise ValueError(f"RS256 needs an RSA key of at least {MIN_RSA_BITS} bits")


class JwtSettings(BaseModel):
    """How tokens are verified (and, where a private key is given, minted).

    Keys are PEM, inline (``public_key``, ``private_key``) or read once at start from a file
    (``public_key_file``, ``private_key_file``). Construction refuses a weak HS256 secret,
    a key that does not fit the algorithm, or an unreadable file; :meth:`verification_key`
    refuses a missing key (services call it at start, so they fail fast).
    """

    model_config = ConfigDict(frozen=False)

    algorithm: Algorithm = "HS256"
    secret: SecretStr | None = Field(default=None, description="HS256 shared secret")
    public_key: str | None = Field(default=None, description="PEM public key (EdDSA/ES256/RS256)")
    public_key_file: Path | None = Field(default=None, description="file holding public_key")
    private_key: SecretStr | None = Field(
        default=None, description="PEM private key (only where tokens are minted)"
    )
    private_key_file: Path | None = Field(default=None, description="file holding private_key")
    audience: str | None = Field(default=None, description="required `aud` when set")
    issuer: str | None = Field(default=None, description="required `iss` when set")
    leeway_seconds: int = Field(default=10, ge=0, le=300)
    max_lifetime_seconds: int = Field(
        default=24 * 3600, ge=60, le=30 * 24 * 3600, description="largest accepted exp - iat"
    )

    _public: Any = PrivateAttr(default=None)
    _private: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _load_and_check_keys(self) -> "JwtSettings":
        if self.public_key_file is not None:
            if self.public_key:
                raise ValueError("give public_key or public_key_file, not both")
            self.public_key = _read(self.public_key_file, "public key")
        if self.private_key_file is not None:
            if self.private_key is not None:
                raise ValueError("give private_key or private_key_file, not both")
            self.private_key = SecretStr(_read(self.private_key_file, "private key"))
        if self.algorithm == "HS256":
            if self.secret is not None:
                weakness = secret_weakness(self.secret.get_secret_value())
                if weakness is not None:
                    raise ValueError(weakness)
            return self
        try:
            if self.public_key:
                self._public = serialization.load_pem_public_key(self.public_key.encode())
            if self.private_key is not None:
                self._private = serialization.load_pem_private_key(
                    self.private_key.get_secret_value().encode(), password=None
                )
        except (ValueError, TypeError) as exc:
            raise ValueError(f"unreadable PEM key for {self.algorithm}: {exc}") from None
        if self._public is not None:
            _check_key_type(self.algorithm, self._public, "public key")
        if self._private is not None:
            _check_key_type(self.algorithm, self._private, "private key")
            if self._public is None:
                self._public = self._private.public_key()
        return self

    def verification_key(self) -> Any:
        """The key that verifies signatures; ``ValueError`` when none is configured."""
        if self.algorithm == "HS256":
            if self.secret is None:
                raise ValueError(f"HS256 needs a secret of at least {MIN_SECRET_CHARS} characters")
            return self.secret.get_secret_value()
        if self._public is None:
            raise ValueError(f"{self.algorithm} needs a public key (public_key_file)")
        return self._public

    def signing_key(self) -> Any:
        """The key that signs tokens; ``ValueError`` when this side may not mint."""
        if self.algorithm == "HS256":
            return self.verification_key()
        if self._private is None:
            raise ValueError(f"{self.algorithm} signing needs a private key (private_key_file)")
        return self._private


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the {what} file {path}: {exc}") from None


class InvalidToken(Exception):
    """The token is missing, malformed, expired, or its signature or claims are wrong."""


@dataclass(frozen=True)
class VerifiedToken:
    principal: Principal
    #: the token's ``exp`` (Unix seconds)
    expires_at: float


def verify_token_claims(token: str, settings: JwtSettings) -> VerifiedToken:
    """The principal and expiry of a valid token; ``InvalidToken`` otherwise."""
    key = settings.verification_key()
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[settings.algorithm],
            audience=settings.audience,
            issuer=settings.issuer,
            leeway=settings.leeway_seconds,
            options={"require": ["exp", "iat", "sub"]},
        )
        lifetime = float(claims["exp"]) - float(claims["iat"])
        if lifetime > settings.max_lifetime_seconds:
            raise InvalidToken(
                f"token lifetime {lifetime:.0f} s exceeds {settings.max_lifetime_seconds} s"
            )
        return VerifiedToken(Principal.model_validate(claims), float(claims["exp"]))
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from exc
    except ValidationError as exc:
        raise InvalidToken(f"invalid claims: {exc.errors()[0]['msg']}") from exc
    except (TypeError, ValueError) as exc:  # odd claim types (e.g. a non-numeric iat)
        raise InvalidToken(f"invalid claims: {exc}") from exc


def verify_token(token: str, settings: JwtSettings) -> Principal:
    return verify_token_claims(token, settings).principal


def mint_token(
    settings: JwtSettings,
    user_id: str,
    role: Role,
    name: str | None = None,
    ttl: timedelta = timedelta(hours=12),
) -> str:
    if ttl.total_seconds() > settings.max_lifetime_seconds:
        raise ValueError(
            f"a token may live at most {settings.max_lifetime_seconds} s (max_lifetime_seconds)"
        )
    now = datetime.now(UTC)
    claims: dict[str, object] = {"sub": user_id, "role": role.value, "iat": now, "exp": now + ttl}
    if name:
        claims["name"] = name
    if settings.audience:
        claims["aud"] = settings.audience
    if settings.issuer:
        claims["iss"] = settings.issuer
    return jwt.encode(claims, settings.signing_key(), algorithm=settings.algorithm)
