"""Settings of the booking-api: environment variables prefixed ``BOOKING_API_``."""

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from slotstream_contracts.auth import JwtSettings
from slotstream_contracts.settings import (
    DEFAULT_KEEP_ALIVE_SECONDS,
    KeepAliveSeconds,
    LogSettings,
)

#: Fragments that mark a secret copied from an example rather than chosen.
PLACEHOLDER_FRAGMENTS = ("changeme", "change-me", "change_me", "placeholder", "example", "xxxx")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BOOKING_API_", env_nested_delimiter="__", extra="ignore"
    )

    storage: Literal["mongo", "memory"] = Field(
        default="mongo", description="mongo (MongoDB) or memory (in-process, for demos and tests)"
    )
    mongo_url: SecretStr = Field(
        default=SecretStr("mongodb://127.0.0.1:27017/?replicaSet=rs0"),
        description="MongoDB connection string (a replica set, for change streams)",
    )
    mongo_db: str = Field(default="slotstream", min_length=1, max_length=63)
    mongo_timeout_ms: int = Field(
        default=5_000, ge=100, le=60_000, description="server selection, connect and op timeout"
    )
    jwt: JwtSettings = Field(default_factory=JwtSettings)
    internal_token: SecretStr | None = Field(
        default=None, description="required X-Internal-Token for /internal/* (memory backend)"
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    keep_alive_timeout_seconds: KeepAliveSeconds = DEFAULT_KEEP_ALIVE_SECONDS
    cors_origins: list[str] = Field(default_factory=list, description="JSON list of origins")
    log: LogSettings = Field(default_factory=LogSettings)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60, le=7 * 24 * 3600)
    request_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="A POST with an Idempotency-Key runs at most this long (then 503); its "
        "record still pending after that was left by a crash and is taken over",
    )
    idempotency_max_keys_per_user: int = Field(
        default=1_000,
        ge=1,
        description="unexpired Idempotency-Keys one user may hold; a new one beyond: 429",
    )

    @model_validator(mode="after")
    def _refuse_weak_secrets(self) -> "Settings":
        """Refuse to start with no key, a short secret or an example placeholder."""
        self.jwt.verification_key()
        if self.jwt.algorithm == "HS256" and self.jwt.secret is not None:
            secret = self.jwt.secret.get_secret_value()
            lowered = secret.lower()
            if any(fragment in lowered for fragment in PLACEHOLDER_FRAGMENTS):
                raise ValueError("BOOKING_API_JWT__SECRET looks like a placeholder; choose one")
            if len(set(secret)) < 8:
                raise ValueError("BOOKING_API_JWT__SECRET is too repetitive to be a secret")
        return self
