"""Settings of the change-publisher: environment variables with the ``PUBLISHER_`` prefix."""

import os
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from slotstream_contracts.documents import BOOKINGS, NOTIFICATIONS, SLOTS
from slotstream_contracts.settings import (
    DEFAULT_KEEP_ALIVE_SECONDS,
    KafkaSettings,
    KeepAliveSeconds,
    LogSettings,
    TopicSettings,
)

StoreKind = Literal["mongo", "memory"]
CheckpointKind = Literal["mongo", "memory", "file"]


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """Every knob of the publisher; see the service README for what each one does."""

    model_config = SettingsConfigDict(
        env_prefix="PUBLISHER_", env_nested_delimiter="__", extra="ignore"
    )

    source: Literal["mongo", "feed"] = "mongo"
    mongo_url: str = "mongodb://127.0.0.1:27017/?replicaSet=rs0"
    mongo_db: str = "slotstream"
    collections: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [SLOTS, BOOKINGS, NOTIFICATIONS],
        description="Collections to watch (comma-separated or a JSON list)",
    )
    pre_images: bool = Field(
        default=False,
        description="Ask Mongo for pre-images (fullDocumentBeforeChange: whenAvailable), so "
        "hard deletes can be mapped; the collections must have them enabled",
    )
    feed_url: str = "http://127.0.0.1:8000"
    feed_token: SecretStr | None = None
    feed_wait: float = Field(default=10.0, gt=0, le=30, description="Long-poll wait (s)")

    start_mode: Literal["resume", "latest", "snapshot"] = "resume"
    history_lost_policy: Literal["fail", "resnapshot"] = "resnapshot"

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    topic_map: dict[str, str] | None = Field(
        default=None,
        description="Collection → topic (JSON); default: slots → topics.schedule, bookings "
        "and notifications → topics.notifications (bookings name their student: never on "
        "the public schedule topic)",
    )
    enable_idempotence: bool = True
    compression: Literal["none", "gzip", "lz4", "zstd", "snappy"] = "zstd"
    max_batch_size: int = Field(default=262_144, ge=16_384, description="Producer batch bytes")
    max_record_bytes: int = Field(
        default=900_000,
        ge=1024,
        description="Events larger than this are dead-lettered (keep below the broker's "
        "message.max.bytes and the producer's max_request_size)",
    )

    max_in_flight: int = Field(default=20_000, ge=1, description="Unacknowledged records")
    read_batch: int = Field(default=1000, ge=1, le=1000, description="Changes per source read")
    checkpoint_interval: float = Field(default=1.0, gt=0, description="Seconds")
    ack_stall_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Unready while records wait this long for Kafka without an acknowledgement",
    )
    stop_drain_seconds: float = Field(
        default=2.0,
        gt=0,
        description="On stop, how long records in flight may still be acknowledged before "
        "they are given up (the next leader re-sends them from the checkpoint)",
    )
    lease_ttl: float = Field(default=6.0, gt=0, description="Seconds")
    backoff_initial: float = Field(default=0.5, gt=0)
    backoff_max: float = Field(default=15.0, gt=0)
    instance_id: str = Field(default_factory=_default_instance_id)
    stream_name: str = Field(
        default="change-publisher", description="Id of the lease and checkpoint documents"
    )
    checkpoint_store: CheckpointKind | None = Field(
        default=None,
        description="mongo | file | memory; default: mongo for source=mongo, file when "
        "checkpoint_file is set, else memory",
    )
    checkpoint_file: Path | None = Field(
        default=None,
        description="JSON file of the file checkpoint store (feed mode: the resume point "
        "outlives the process)",
    )
    lease_store: StoreKind | None = None

    http_host: str = "0.0.0.0"
    http_port: int = 8001
    http_keep_alive_timeout_seconds: KeepAliveSeconds = DEFAULT_KEEP_ALIVE_SECONDS
    log: LogSettings = Field(default_factory=LogSettings)

    @field_validator("collections", mode="before")
    @classmethod
    def _split_collections(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import orjson

                return orjson.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _bookings_stay_private(self) -> "Settings":
        """A booking event carries its student's id; the schedule topic feeds public
        channels, so a topic map that sends bookings there is refused at start."""
        if self.effective_topic_map().get(BOOKINGS) == self.topics.schedule:
            raise ValueError(
                "PUBLISHER_TOPIC_MAP routes bookings to the public schedule topic "
                f"{self.topics.schedule!r}; bookings go to the notifications topic"
            )
        return self

    def effective_topic_map(self) -> dict[str, str]:
        if self.topic_map is not None:
            return dict(self.topic_map)
        return {
            SLOTS: self.topics.schedule,
            BOOKINGS: self.topics.notifications,
            NOTIFICATIONS: self.topics.notifications,
        }

    def effective_checkpoint_store(self) -> CheckpointKind:
        if self.checkpoint_store is not None:
            return self.checkpoint_store
        if self.source == "mongo":
            return "mongo"
        return "file" if self.checkpoint_file is not None else "memory"

    @model_validator(mode="after")
    def _file_store_needs_a_path(self) -> "Settings":
        if self.effective_checkpoint_store() == "file" and self.checkpoint_file is None:
            raise ValueError("checkpoint_store=file needs checkpoint_file")
        return self

    def effective_lease_store(self) -> StoreKind:
        if self.lease_store is not None:
            return self.lease_store
        return "mongo" if self.source == "mongo" else "memory"
