"""Push-gateway settings: environment variables with the ``GATEWAY_`` prefix."""

import os
import socket
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Final, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from push_gateway.domain.requests import MAX_REQUEST_HEAD_BYTES
from slotstream_contracts.auth import JwtSettings
from slotstream_contracts.settings import (
    DEFAULT_KEEP_ALIVE_SECONDS,
    KafkaSettings,
    KeepAliveSeconds,
    LogSettings,
    TopicSettings,
)

#: Linux's ``sun_path`` is 108 bytes, its last the terminating NUL
MAX_UNIX_PATH_BYTES: Final = 107


def _default_instance_id() -> str:
    return socket.gethostname()[:64] or "gateway"


def _loopback() -> list[IPv4Network | IPv6Network]:
    return [IPv4Network("127.0.0.1/32"), IPv6Network("::1/128")]


class GatewayKafkaSettings(KafkaSettings):
    fetch_max_wait_ms: int = Field(
        default=5,
        ge=0,
        le=1000,
        description="Long-poll bound; Tansu answers at the deadline, so keep it low",
    )
    fetch_moderate_max_wait_ms: int = Field(
        default=25,
        ge=0,
        le=1000,
        description="Longest long-poll bound while records flow: at moderate rates the bound "
        "grows towards it so that a fetch round carries enough work (domain/fetch_wait.py); "
        "equal to fetch_max_wait_ms: always the short bound",
    )
    fetch_moderate_min_bytes: int = Field(
        default=1_048_576,
        ge=1,
        description="While the long-poll bound is above fetch_max_wait_ms (moderate rates), "
        "the broker is asked to wait for this many bytes, i.e. until the bound: a broker "
        "answers on data otherwise (Apache Kafka always, Tansu too), so records arriving "
        "every few ms meant a fetch round each whatever the bound. 1: answer on data "
        "(the old behaviour; more rounds, less latency). Never asked while a partition "
        "of the fetch is behind the high watermark the broker last reported (1 then). "
        "Lean fetch loop only",
    )
    fetch_hold_from_ms: int = Field(
        default=16,
        ge=0,
        le=30000,
        description="fetch_moderate_min_bytes is asked only while the moderate bound chosen "
        "is at least this long (rounds carry little: below ~15,600 records + deliveries/s "
        "with the other defaults) or the records have no subscriber here; at higher rates "
        "a round answered on data is full enough and a hold only adds latency. 0: hold at "
        "every moderate bound",
    )
    fetch_idle_max_wait_ms: int = Field(
        default=100,
        ge=0,
        le=30000,
        description="Long-poll bound after a whole getmany (1 s) brought nothing; back to "
        "fetch_max_wait_ms with the first record",
    )
    max_poll_records: int = Field(
        default=500,
        ge=1,
        description="Records per getmany: aiokafka decodes them in one synchronous step "
        "(fetch_loop=aiokafka only)",
    )
    fetch_loop: Literal["lean", "aiokafka"] = Field(
        default="lean",
        description="How the ingest fetches: `lean`, its own loop on aiokafka's connections "
        "(one pre-encoded request in flight per leader, responses read by the compiled "
        "decoder; a fraction of the CPU per fetch round); `aiokafka`, aiokafka's consumer "
        "(getmany), as before. `lean` falls back to `aiokafka` by itself on a broker that "
        "speaks none of Fetch v4-v11",
    )
    metadata_max_age_ms: int = Field(
        default=60_000,
        ge=100,
        le=3_600_000,
        description="How often the ingest refreshes its cluster metadata (aiokafka's default: "
        "5 min). A partition count change of a data topic is noticed within this and a "
        "second, and the gateway then stops for a restart (README: partitions added)",
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
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Gateway processes sharing the port (SO_REUSEPORT); each is a full "
        "gateway with instance id <instance_id>-w<n>",
    )
    worker_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="With workers > 1: worker n also listens on this port + n, so each "
        "worker's /metrics can be scraped on its own",
    )
    unix_socket: Path | None = Field(
        default=None,
        description="Also listen on this Unix socket, for an edge proxy on the same host "
        "(nginx: `server unix:<path>;`): a frame costs the gateway about half the CPU it "
        "costs over loopback TCP. Created mode 0660 (a peer on it is a trusted proxy: its "
        "X-Forwarded-For names the client); a socket file left by a gateway that died is "
        "replaced, one a live process listens on is refused. The TCP port stays (health "
        "checks, metrics, clients straight on the gateway)",
    )
    request_head_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A connection that has not sent its first request's complete head "
        "this long after connecting (silent, or dribbling it), or a later request's head "
        "this long after its first byte, is closed, within a second more (one sweep a "
        "second, no timer per connection); nginx waits 60 s (client_header_timeout)",
    )
    max_request_head_bytes: int = Field(
        default=MAX_REQUEST_HEAD_BYTES,
        ge=4096,
        description="A request head (request line and header fields) longer than this is "
        "answered 431 and its connection closed, as soon as that many bytes are read; "
        "keep it above what the proxy in front passes (the edge's nginx: "
        "large_client_header_buffers, 4 x 8 kB; Envoy: 60 KiB)",
    )
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
    internal_token: SecretStr | None = Field(
        default=None,
        description="X-Internal-Token for redeeming stream tickets at the booking-api",
    )
    log: LogSettings = LogSettings()

    ring_buffer_size: int = Field(
        default=4096, ge=16, description="Recent records kept per partition for resumes"
    )
    heartbeat_seconds: float = Field(default=15.0, gt=0)
    retry_ms: int = Field(default=3000, ge=0, description="SSE retry hint for reconnects")
    shutdown_retry_ms: int = Field(default=500, ge=0, description="retry hint sent at shutdown")
    shutdown_retry_jitter_ms: int = Field(
        default=5000,
        ge=0,
        description="Up to this much is added at random to each stream's shutdown retry "
        "hint, so a drained gateway's clients reconnect over a window, not all at once",
    )
    max_connections: int = Field(default=20_000, ge=1)
    max_channels_per_connection: int = Field(default=16, ge=1)
    max_pending_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        description="A client whose unsent output exceeds this (beyond a catch-up still "
        "being sent) is disconnected",
    )
    catch_up_timeout_seconds: float = Field(default=10.0, gt=0)
    cors_origins: list[str] = Field(default_factory=list)
    presence_interval_seconds: float = Field(default=2.0, gt=0)
    presence_events: bool = Field(
        default=True, description="Send `presence` events to schedule subscribers"
    )

    # -- history (Last-Event-ID) bounds --------------------------------------------------
    max_resume_lag: int = Field(
        default=4096,
        ge=0,
        description="A resume more than this many records behind a partition's end gets a "
        "fresh snapshot (schedule) or a `resync` frame (notifications) instead of a replay",
    )
    max_history_reads: int = Field(
        default=4, ge=1, description="Concurrent Kafka read-backs (one shared reader)"
    )
    history_wait_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How long a resume waits for a free history read before it is answered "
        "as if the history were gone (snapshot / resync)",
    )

    # -- per-client limits -----------------------------------------------------------------
    trusted_proxies: list[IPv4Network | IPv6Network] = Field(
        default_factory=_loopback,
        description="Proxies (networks) whose X-Forwarded-For names the client: walked "
        "from the right past these networks, the first address outside them is the client "
        "(X-Real-IP is never read); only the networks proxies forward from, never clients'",
    )
    max_streams_per_ip: int = Field(default=50, ge=1)
    max_streams_per_user: int = Field(
        default=10, ge=1, description="Streams with a private channel per JWT `sub`"
    )
    connect_rate_per_ip: float = Field(
        default=10.0, gt=0, description="Stream requests per second per client IP (refill)"
    )
    connect_burst_per_ip: int = Field(
        default=100, ge=1, description="Stream requests per client IP in a burst"
    )
    ws_subscribe_rate: float = Field(
        default=2.0,
        gt=0,
        description="WebSocket subscribe ops per second per connection (refill); past it "
        "an `error` 429 with `retryAfter`",
    )
    ws_subscribe_burst: int = Field(
        default=32, ge=1, description="WebSocket subscribe ops per connection in a burst"
    )
    ws_subscribe_rate_per_ip: float = Field(
        default=20.0,
        gt=0,
        description="WebSocket subscribe ops per second per client IP, all its sockets "
        "together (refill)",
    )
    ws_subscribe_burst_per_ip: int = Field(
        default=200, ge=1, description="WebSocket subscribe ops per client IP in a burst"
    )
    unknown_instructor_ttl_seconds: float = Field(
        default=30.0,
        ge=0,
        description="Remember the booking-api's 404 for an instructor this long",
    )

    @field_validator("unix_socket")
    @classmethod
    def _fits_a_socket_address(cls, value: Path | None) -> Path | None:
        if value is not None and len(os.fsencode(value)) > MAX_UNIX_PATH_BYTES:
            raise ValueError(
                f"a Unix socket path holds at most {MAX_UNIX_PATH_BYTES} bytes "
                f"(sun_path); {value} is longer: choose a shorter directory"
            )
        return value

    @field_validator("booking_api_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _refuse_missing_keys(self) -> "Settings":
        """Fail at start, as the booking-api does, without a key to verify tokens with
        (weak secrets and keys that do not fit the algorithm are refused by JwtSettings)."""
        self.jwt.verification_key()
        return self
