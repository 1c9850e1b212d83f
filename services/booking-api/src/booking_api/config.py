"""Settings of the booking-api: environment variables prefixed ``BOOKING_API_``."""

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from slotstream_contracts.auth import JwtSettings
from slotstream_contracts.settings import LogSettings


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
        default=None,
        description="required X-Internal-Token for /internal/* (without it they answer 403)",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    cors_origins: list[str] = Field(default_factory=list, description="JSON list of origins")
    log: LogSettings = Field(default_factory=LogSettings)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    stream_ticket_ttl_seconds: int = Field(
        default=30, ge=5, le=300, description="lifetime of a single-use stream ticket"
    )
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60, le=7 * 24 * 3600)

    @model_validator(mode="after")
    def _refuse_missing_keys(self) -> "Settings":
        """Refuse to start without a verification key (weak secrets, unreadable or
        mismatched keys are already refused by ``JwtSettings`` itself)."""
        self.jwt.verification_key()
        return self
