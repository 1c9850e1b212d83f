"""Settings shared by the services. Each service nests these in its own Settings class,
so one service's environment reads e.g. ``GATEWAY_KAFKA__BOOTSTRAP_SERVERS``."""

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from slotstream_contracts.topics import (
    DEADLETTER_TOPIC,
    NOTIFICATIONS_TOPIC,
    PRESENCE_TOPIC,
    SCHEDULE_TOPIC,
)


class KafkaSettings(BaseModel):
    bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Comma-separated host:port list of brokers"
    )
    client_id: str = "slotstream"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    request_timeout_ms: int = Field(default=30_000, ge=1_000)


class TopicSettings(BaseModel):
    schedule: str = SCHEDULE_TOPIC
    notifications: str = NOTIFICATIONS_TOPIC
    deadletter: str = DEADLETTER_TOPIC
    presence: str = PRESENCE_TOPIC


class LogSettings(BaseModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_logs: bool = Field(default=True, description="JSON lines (true) or console text")


#: uvicorn's ``timeout_keep_alive`` for a service behind the edge. It must outlast the edge's
#: upstream ``keepalive_timeout`` (nginx: 60 s): nginx reuses an idle connection without
#: knowing the service is closing it, and does not retry a POST, so the browser gets a 502.
KeepAliveSeconds = Annotated[
    int,
    Field(
        ge=1,
        description="How long an idle HTTP keep-alive connection stays open; must outlast "
        "the edge's upstream keepalive_timeout (nginx: 60 s)",
    ),
]
DEFAULT_KEEP_ALIVE_SECONDS = 75
