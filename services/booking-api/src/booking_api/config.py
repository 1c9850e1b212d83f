"""Settings of the booking-api: environment variables prefixed ``BOOKING_API_``."""

import ipaddress
from datetime import timedelta
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from booking_api.adapters.mongo import connection_string_problem
from booking_api.domain.repair import (
    BOOKING_STORE_STEPS,
    DEFAULT_GRACE_SECONDS,
    GRACE_MARGIN_SECONDS,
    minimum_grace_seconds,
)
from booking_api.domain.slots import MAX_HORIZON
from booking_api.ports import DEFAULT_NOTIFICATION_RETENTION
from slotstream_contracts.auth import JwtSettings
from slotstream_contracts.settings import (
    DEFAULT_KEEP_ALIVE_SECONDS,
    KeepAliveSeconds,
    LogSettings,
)


class Settings(BaseSettings):
    # Without ``hide_input_in_errors`` a refusal quotes the input: the connection string
    # (with its password) or, from a model validator, every setting, secrets included.
    model_config = SettingsConfigDict(
        env_prefix="BOOKING_API_",
        env_nested_delimiter="__",
        extra="ignore",
        hide_input_in_errors=True,
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
    mongo_start_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="How long a start keeps trying to reach MongoDB and create the indexes "
        "before it gives up (one line, exit status 69); unset: it keeps trying, unready",
    )
    jwt: JwtSettings = Field(default_factory=JwtSettings)
    internal_token: SecretStr | None = Field(
        default=None,
        description="required X-Internal-Token for /internal/* (without it they answer 403)",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    keep_alive_timeout_seconds: KeepAliveSeconds = DEFAULT_KEEP_ALIVE_SECONDS
    cors_origins: list[str] = Field(default_factory=list, description="JSON list of origins")
    max_active_bookings_per_student: int = Field(
        default=20,
        ge=1,
        le=10_000,
        description="active bookings a student may hold at once; more: 409 quota-exceeded",
    )
    docs_enabled: bool = Field(
        default=True,
        description="serve /api/docs and /api/openapi.json (turn off on the internet)",
    )
    log: LogSettings = Field(default_factory=LogSettings)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    stream_ticket_ttl_seconds: int = Field(
        default=30, ge=5, le=300, description="lifetime of a single-use stream ticket"
    )
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60, le=7 * 24 * 3600)
    request_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="A POST with an Idempotency-Key runs at most this long (then 503); its "
        "record still pending after that was left by a crash and is taken over",
    )
    repair_interval_seconds: float = Field(
        default=60.0,
        # Each run queries MongoDB: a tiny interval (1e-9 was accepted) is a busy loop.
        ge=0.01,
        le=24 * 3600,
        description="How often the repair looks for slots held by a booking that does not "
        "exist or is cancelled (0.01 s to a day)",
    )
    repair_grace_seconds: float | None = Field(
        default=None,
        gt=0,
        # A slot is booked at most MAX_HORIZON ahead, so a longer grace would never free one
        # before it starts; and `inf` or 1e12 broke the repair (no timedelta, no date).
        le=MAX_HORIZON.total_seconds(),
        description="How long a booked slot must be unchanged before the repair may free "
        "it; at least the request timeout + 10 store timeouts + 5 s (a booking still in "
        f"flight is never freed), at most {MAX_HORIZON.days} days (how far ahead a slot can "
        f"be booked); unset: {DEFAULT_GRACE_SECONDS:g} s or that minimum",
    )
    repair_batch: int = Field(
        default=100, ge=1, le=10_000, description="booked slots the repair reads per run"
    )
    notification_retention_days: int = Field(
        default=DEFAULT_NOTIFICATION_RETENTION.days,
        ge=1,
        # MongoDB's largest expireAfterSeconds is 2^31 - 1 seconds.
        le=(2**31 - 1) // (24 * 3600),
        description="Days a notification is kept (from its creation); then MongoDB's TTL "
        "index deletes it and users no longer see it. A change takes effect at the next "
        "start",
    )
    idempotency_max_keys_per_user: int = Field(
        default=1_000,
        ge=1,
        description="unexpired Idempotency-Keys one user may hold; a new one beyond: 429",
    )

    @property
    def notification_retention(self) -> timedelta:
        return timedelta(days=self.notification_retention_days)

    @property
    def repair_grace(self) -> timedelta:
        minimum = self._minimum_repair_grace()
        grace = self.repair_grace_seconds or max(DEFAULT_GRACE_SECONDS, minimum)
        return timedelta(seconds=grace)

    def _minimum_repair_grace(self) -> float:
        return minimum_grace_seconds(self.request_timeout_seconds, self.mongo_timeout_ms / 1000)

    @model_validator(mode="after")
    def _repair_grace_outlasts_a_booking(self) -> "Settings":
        """A shorter grace could free the slot of a booking whose insert is still coming:
        a second student could then book it, and two bookings hold one slot."""
        minimum = self._minimum_repair_grace()
        if self.repair_grace_seconds is not None and self.repair_grace_seconds < minimum:
            raise ValueError(
                f"BOOKING_API_REPAIR_GRACE_SECONDS ({self.repair_grace_seconds:g}) must be at "
                f"least {minimum:g}: BOOKING_API_REQUEST_TIMEOUT_SECONDS "
                f"({self.request_timeout_seconds:g}) + {BOOKING_STORE_STEPS} × "
                f"BOOKING_API_MONGO_TIMEOUT_MS ({self.mongo_timeout_ms} ms) + "
                f"{GRACE_MARGIN_SECONDS:g} s, so that a booking still in flight is never "
                "freed under it"
            )
        return self

    @model_validator(mode="after")
    def _refuse_missing_keys(self) -> "Settings":
        """Refuse to start without a verification key (weak secrets, unreadable or
        mismatched keys are already refused by ``JwtSettings`` itself)."""
        self.jwt.verification_key()
        return self

    @model_validator(mode="after")
    def _mongo_url_usable(self) -> "Settings":
        """Refused here, not when the server's start builds the client (exit 3 and a
        traceback that may quote the URL)."""
        if self.storage == "mongo":
            url = self.mongo_url.get_secret_value()
            problem = connection_string_problem(url, self.mongo_timeout_ms)
            if problem is not None:
                raise ValueError(
                    f"BOOKING_API_MONGO_URL is not a usable MongoDB connection string: {problem}"
                )
        return self

    @field_validator("internal_token")
    @classmethod
    def _strong_internal_token(cls, value: SecretStr | None) -> SecretStr | None:
        """An empty token is no token (``/internal/*`` then fails closed); a set one must
        not be guessable."""
        if value is None or not value.get_secret_value():
            return None
        if len(value.get_secret_value()) < MIN_INTERNAL_TOKEN:
            raise ValueError(
                f"BOOKING_API_INTERNAL_TOKEN must have at least {MIN_INTERNAL_TOKEN} characters"
            )
        return value

    @model_validator(mode="after")
    def _memory_feed_guarded_off_loopback(self) -> "Settings":
        """The memory backend serves every stored document on ``/internal/*``: it only
        listens beyond this machine with an internal token guarding that feed."""
        if self.storage == "memory" and self.internal_token is None and not _loopback(self.host):
            raise ValueError(
                f"BOOKING_API_STORAGE=memory on {self.host!r} (not loopback) needs "
                f"BOOKING_API_INTERNAL_TOKEN (at least {MIN_INTERNAL_TOKEN} characters)"
            )
        return self


#: The shortest internal token accepted (docs/architecture.md, D3).
MIN_INTERNAL_TOKEN = 32


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
