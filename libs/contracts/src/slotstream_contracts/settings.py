"""Settings shared by the services. Each service nests these in its own Settings class,
so one service's environment reads e.g. ``GATEWAY_KAFKA__BOOTSTRAP_SERVERS``."""

import re
import ssl
import sys
from pathlib import Path
from typing import Annotated, Any, Final, Literal, NoReturn, Self, TypeVar

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsError

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
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="Required with SASL_PLAINTEXT / SASL_SSL"
    )
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = Field(
        default=None,
        description="File holding the SASL password (a mounted secret), read once at start",
    )
    ssl_cafile: Path | None = Field(
        default=None, description="CA bundle for SSL / SASL_SSL (default: the system's)"
    )
    start_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="How long a starting service keeps trying to reach Kafka before it gives "
        "up (one line, exit status 69); unset: it keeps trying, unready, until Kafka answers",
    )

    @model_validator(mode="after")
    def _sasl_is_complete(self) -> Self:
        """Read the password file, then refuse half-configured SASL: a broker that wants
        SCRAM would otherwise only fail the first connection, minutes into a rollout."""
        if self.sasl_password_file is not None:
            if self.sasl_password is not None:
                raise ValueError("set sasl_password or sasl_password_file, not both")
            try:
                password = self.sasl_password_file.read_text().strip()
            except OSError as error:
                raise ValueError(f"sasl_password_file: {error}") from error
            if not password:
                raise ValueError(f"sasl_password_file: {self.sasl_password_file} is empty")
            self.sasl_password = SecretStr(password)
        uses_sasl = self.security_protocol.startswith("SASL_")
        if uses_sasl and (
            self.sasl_mechanism is None or not self.sasl_username or self.sasl_password is None
        ):
            raise ValueError(
                f"{self.security_protocol} needs sasl_mechanism, sasl_username and "
                "sasl_password (or sasl_password_file)"
            )
        if not uses_sasl and self.sasl_mechanism is not None:
            raise ValueError("sasl_mechanism needs security_protocol SASL_PLAINTEXT or SASL_SSL")
        return self

    def client_options(self) -> dict[str, Any]:
        """Connection keyword arguments for an aiokafka producer, consumer or admin client."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.security_protocol in {"SSL", "SASL_SSL"}:
            cafile = str(self.ssl_cafile) if self.ssl_cafile is not None else None
            options["ssl_context"] = ssl.create_default_context(cafile=cafile)
        if self.sasl_mechanism is not None and self.sasl_password is not None:
            # aiokafka names the credentials "plain" for every mechanism, SCRAM included.
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value()
        return options


#: a service's exit status when Kafka stayed unreachable for ``start_timeout_seconds`` at
#: start (sysexits' EX_UNAVAILABLE): a supervisor may restart it, the reason is in its log
KAFKA_UNREACHABLE_EXIT_CODE: Final = 69
#: the same for MongoDB (the booking-api's ``BOOKING_API_MONGO_START_TIMEOUT_SECONDS``): one
#: status, whichever dependency a start waited for in vain
MONGO_UNREACHABLE_EXIT_CODE: Final = KAFKA_UNREACHABLE_EXIT_CODE


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


S = TypeVar("S", bound=BaseSettings)


def load_settings(settings_class: type[S], service: str) -> S:
    """The service's settings from its environment, or exit 2 with the reason on stderr.

    pydantic-settings reports a list or object setting that is not JSON (e.g.
    ``GATEWAY_TRUSTED_PROXIES=10.0.0.0/8``) as a ``SettingsError`` before validation even
    starts, naming only the field: it is translated to the variable and what is expected."""
    try:
        return settings_class()
    except ValidationError as exc:
        refuse_to_start(service, f"bad settings:\n{exc}")
    except SettingsError as exc:
        prefix = str(settings_class.model_config.get("env_prefix") or "")
        refuse_to_start(service, f"bad settings:\n{_unparsable(exc, prefix)}")


def refuse_to_start(service: str, reason: str) -> NoReturn:
    """``<service>: refusing to start, <reason>`` on stderr, exit status 2."""
    sys.stderr.write(f"{service}: refusing to start, {reason}\n")
    raise SystemExit(2)


#: pydantic-settings' message when a complex value does not decode (``SettingsError``)
_UNPARSABLE = re.compile(r'^error parsing value for field "(?P<field>\w+)"')


def _unparsable(exc: SettingsError, prefix: str) -> str:
    found = _UNPARSABLE.match(str(exc))
    if found is None or exc.__cause__ is None:
        return f"{exc}: {exc.__cause__}" if exc.__cause__ is not None else str(exc)
    variable = f"{prefix}{found['field']}".upper()
    return (
        f"{variable} is not valid JSON ({exc.__cause__}): list and object settings are "
        f'read as JSON, e.g. \'["a", "b"]\' or \'{{"key": "value"}}\''
    )
