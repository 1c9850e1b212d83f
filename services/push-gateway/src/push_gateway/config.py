"""Push-gateway settings: environment variables with the ``GATEWAY_`` prefix."""

import socket

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from slotstream_contracts.auth import JwtSettings
from slotstream_contracts.settings import (
    DEFAULT_KEEP_ALIVE_SECONDS,
    KafkaSettings,
    KeepAliveSeconds,
    LogSettings,
    TopicSettings,
)


def _default_instance_id() -> str:
    return socket.gethostname()[:64] or "gateway"


class GatewayKafkaSettings(KafkaSettings):
    fetch_max_wait_ms: int = Field(
        default=5,
        ge=0,
        le=1000,
        description="Long-poll bound; Tansu answers at the deadline, so keep it low",
    )
    max_poll_records: int = Field(
        default=500,
        ge=1,
        description="Records per getmany: aiokafka decodes them in one synchronous step",
    )


class Settings(BaseSettings):
    """Everything the gateway reads from its environment (``GATEWAY_*``, nested with ``__``)."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", env_nested_delimiter="__", extra="ignore"
    )

    host: str = "0.0.0.0"
    port: int = Field(default=8002, ge=1, le=65535)
    keep_alive_timeout_seconds: KeepAliveSeconds = DEFAULT_KEEP_ALIVE_SECONDS
    backlog: int = Field(
        default=4096, ge=64, description="Listen backlog (the kernel caps it at somaxconn)"
    )
    instance_id: str = Field(default_factory=_default_instance_id, min_length=1, max_length=64)
    booking_api_url: str = "http://127.0.0.1:8000"
    snapshot_timeout_seconds: float = Field(default=5.0, gt=0)
    snapshot_reuse_seconds: float = Field(
        default=5.0,
        ge=0,
        description="Share a fetched snapshot with connections arriving this soon after",
    )

    kafka: GatewayKafkaSettings = GatewayKafkaSettings()
    topics: TopicSettings = TopicSettings()
    jwt: JwtSettings = JwtSettings()
    log: LogSettings = LogSettings()

    ring_buffer_size: int = Field(
        default=4096, ge=16, description="Recent records kept per partition for resumes"
    )
    heartbeat_seconds: float = Field(default=15.0, gt=0)
    retry_ms: int = Field(default=3000, ge=0, description="SSE retry hint for reconnects")
    shutdown_retry_ms: int = Field(default=500, ge=0, description="retry hint sent at shutdown")
    max_connections: int = Field(default=20_000, ge=1)
    max_channels_per_connection: int = Field(default=16, ge=1)
    max_pending_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        description="A client whose unsent output exceeds this is disconnected",
    )
    catch_up_timeout_seconds: float = Field(default=10.0, gt=0)
    cors_origins: list[str] = Field(default_factory=list)
    presence_interval_seconds: float = Field(default=2.0, gt=0)
    presence_events: bool = Field(
        default=True, description="Send `presence` events to schedule subscribers"
    )

    @field_validator("booking_api_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")
