"""Settings refuse weak secrets; the console scripts mint tokens the API accepts."""

import os
from datetime import timedelta

import pytest
from pydantic import ValidationError

from booking_api import tokens
from booking_api.config import Settings
from slotstream_contracts.auth import JwtSettings, Role, verify_token
from slotstream_contracts.settings import load_settings

SECRET = "cli-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOOKING_API_STORAGE", "memory")
    monkeypatch.setenv("BOOKING_API_JWT__SECRET", SECRET)
    monkeypatch.setenv("BOOKING_API_PORT", "8123")
    monkeypatch.setenv("BOOKING_API_CORS_ORIGINS", '["http://localhost:8080"]')
    monkeypatch.setenv("BOOKING_API_LOG__LEVEL", "WARNING")
    settings = Settings()
    assert settings.storage == "memory"
    assert settings.port == 8123
    assert settings.cors_origins == ["http://localhost:8080"]
    assert settings.log.level == "WARNING"


def test_notifications_are_kept_90_days_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOOKING_API_JWT__SECRET", SECRET)
    assert Settings().notification_retention.days == 90
    monkeypatch.setenv("BOOKING_API_NOTIFICATION_RETENTION_DAYS", "0")
    with pytest.raises(ValidationError, match="notification_retention_days"):
        Settings()


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        (None, "at least 32 characters"),
        ("short", "at least 32 characters"),
        ("changeme-changeme-changeme-changeme", "placeholder"),
        ("a" * 40, "too repetitive"),
    ],
)
def test_weak_secrets_are_refused(
    monkeypatch: pytest.MonkeyPatch, secret: str | None, message: str
) -> None:
    monkeypatch.delenv("BOOKING_API_JWT__SECRET", raising=False)
    if secret is not None:
        monkeypatch.setenv("BOOKING_API_JWT__SECRET", secret)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_token_script_mints_a_verifiable_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BOOKING_API_JWT__SECRET", SECRET)
    tokens.main(["--sub", "i1", "--role", "instructor", "--name", "Ada"])
    token = capsys.readouterr().out.strip()
    principal = verify_token(token, JwtSettings.model_validate({"secret": SECRET}))
    assert (principal.user_id, principal.role, principal.name) == ("i1", Role.INSTRUCTOR, "Ada")


def test_token_script_needs_a_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BOOKING_API_JWT__SECRET", raising=False)
    with pytest.raises(SystemExit):
        tokens.main(["--sub", "i1", "--role", "student"])
    assert "BOOKING_API_JWT__SECRET" in capsys.readouterr().err


def test_server_refuses_to_start_with_a_placeholder_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from booking_api.__main__ import main

    monkeypatch.setenv("BOOKING_API_JWT__SECRET", "please-changeme-before-production-use")
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    assert "placeholder" in capsys.readouterr().err


def test_server_refuses_to_start_with_a_list_setting_that_is_not_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """pydantic-settings reads list settings as JSON and fails with its own error (no
    ValidationError): the refusal names the variable and says JSON, no traceback."""
    from booking_api.__main__ import main

    monkeypatch.setenv("BOOKING_API_JWT__SECRET", SECRET)
    monkeypatch.setenv("BOOKING_API_CORS_ORIGINS", "https://app.example.com")
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("booking-api: refusing to start, bad settings:")
    assert "BOOKING_API_CORS_ORIGINS" in err
    assert "JSON" in err


#: in every malformed URL below; it must never be printed
MONGO_PASSWORD = "s3cret-pw-7e1d"


@pytest.mark.parametrize(
    ("url", "said"),
    [
        (f"mongodb://booking-api:pa:{MONGO_PASSWORD}@db:27017/", "percent-encoded"),
        (f"mongodb://booking-api:{MONGO_PASSWORD}@db:notaport/", "Port contains non-digit"),
        (f"http://booking-api:{MONGO_PASSWORD}@db:27017/", "mongodb:// or mongodb+srv://"),
        (f"mongodb://booking-api:{MONGO_PASSWORD}@db/?replicaSet=", "replicaSet has no value"),
        (f"mongodb://booking-api:{MONGO_PASSWORD}@db/?replSet=rs0", "Unknown option: replset"),
        (
            f"mongodb://booking-api:{MONGO_PASSWORD}@db/?tls=false&tlsCAFile={os.devnull}",
            "TLS has not been enabled",
        ),
        ("mongodb://booking-api@db:27017/", "A password is required"),
        # an unescaped '/' or '?' in the password: the driver reads a part of it as the
        # database name or an option, so its message would quote that part
        (f"mongodb://booking-api:pa/ss {MONGO_PASSWORD}@db/", "'@' after the host list"),
        (f"mongodb://booking-api:pa?x={MONGO_PASSWORD}@db/", "'@' after the host list"),
        (f"mongodb://booking-api:12/{MONGO_PASSWORD}@db/", "'@' after the host list"),
    ],
)
def test_server_refuses_to_start_with_a_malformed_mongo_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str, said: str
) -> None:
    """The driver refuses these when the client is built, which used to be inside the
    server's start (exit 3, a traceback that may quote the URL): refused as a bad setting,
    naming the part, never the password."""
    monkeypatch.setenv("BOOKING_API_JWT__SECRET", SECRET)
    monkeypatch.setenv("BOOKING_API_STORAGE", "mongo")
    monkeypatch.setenv("BOOKING_API_MONGO_URL", url)
    with pytest.raises(SystemExit) as stopped:
        load_settings(Settings, "booking-api")
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("booking-api: refusing to start, bad settings:"), err
    assert "BOOKING_API_MONGO_URL" in err, err
    assert said in err, err
    assert MONGO_PASSWORD not in err, err


@pytest.mark.parametrize(
    "url",
    [
        "mongodb://127.0.0.1:27017/?replicaSet=rs0",
        f"mongodb://booking-api:{MONGO_PASSWORD}@db-0:27017,db-1:27017/slotstream?replicaSet=rs0"
        "&authSource=admin&appName=a@b",
        # SRV needs DNS: the check must not resolve (this name cannot be)
        f"mongodb+srv://booking-api:{MONGO_PASSWORD}@cluster0.example.invalid/?tls=true",
    ],
)
def test_well_formed_mongo_urls_are_accepted_without_resolving(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("BOOKING_API_JWT__SECRET", SECRET)
    monkeypatch.setenv("BOOKING_API_STORAGE", "mongo")
    monkeypatch.setenv("BOOKING_API_MONGO_URL", url)
    assert load_settings(Settings, "booking-api").mongo_url.get_secret_value() == url


def test_a_repair_grace_shorter_than_a_booking_can_run_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """30 s request timeout + 10 × 5 s store timeout + 5 s: a shorter grace could free the
    slot of a booking whose insert is still coming."""
    monkeypatch.setenv("BOOKING_API_STORAGE", "memory")
    monkeypatch.setenv("BOOKING_API_JWT__SECRET", SECRET)
    monkeypatch.setenv("BOOKING_API_REPAIR_GRACE_SECONDS", "60")
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert "BOOKING_API_REPAIR_GRACE_SECONDS (60) must be at least 85" in str(refused.value)
    assert "BOOKING_API_REQUEST_TIMEOUT_SECONDS (30)" in str(refused.value)
    monkeypatch.setenv("BOOKING_API_REPAIR_GRACE_SECONDS", "85")
    assert Settings().repair_grace.total_seconds() == 85


def test_the_default_repair_grace_outlasts_a_long_request_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BOOKING_API_STORAGE", "memory")
    monkeypatch.setenv("BOOKING_API_JWT__SECRET", SECRET)
    assert Settings().repair_grace.total_seconds() == 300
    monkeypatch.setenv("BOOKING_API_REQUEST_TIMEOUT_SECONDS", "600")
    monkeypatch.setenv("BOOKING_API_MONGO_TIMEOUT_MS", "20000")
    assert Settings().repair_grace.total_seconds() == 600 + 10 * 20 + 5


@pytest.mark.parametrize("grace", ["inf", "1e12", "15552001"])
def test_a_repair_grace_past_the_booking_horizon_is_refused(
    monkeypatch: pytest.MonkeyPatch, grace: str
) -> None:
    """A slot is booked at most 180 days ahead, so a longer grace never frees one before it
    starts. Such values (`inf` as "never") used to be accepted, then broke the repair:
    `inf` ended its task at start (OverflowError, nothing repaired until a restart), `1e12`
    failed every run (date value out of range)."""
    monkeypatch.setenv("BOOKING_API_STORAGE", "memory")
    monkeypatch.setenv("BOOKING_API_JWT__SECRET", SECRET)
    monkeypatch.setenv("BOOKING_API_REPAIR_GRACE_SECONDS", grace)
    with pytest.raises(ValidationError, match="repair_grace_seconds"):
        Settings()
    monkeypatch.setenv("BOOKING_API_REPAIR_GRACE_SECONDS", "15552000")
    assert Settings().repair_grace == timedelta(days=180)


@pytest.mark.parametrize("interval", ["1e-9", "0.009"])
def test_a_repair_interval_that_would_spin_against_mongodb_is_refused(
    monkeypatch: pytest.MonkeyPatch, interval: str
) -> None:
    """The repair runs a batch every interval: 1e-9 s used to be accepted, a busy loop of
    queries against MongoDB in every replica."""
    monkeypatch.setenv("BOOKING_API_STORAGE", "memory")
    monkeypatch.setenv("BOOKING_API_JWT__SECRET", SECRET)
    monkeypatch.setenv("BOOKING_API_REPAIR_INTERVAL_SECONDS", interval)
    with pytest.raises(ValidationError, match="repair_interval_seconds"):
        Settings()
    monkeypatch.setenv("BOOKING_API_REPAIR_INTERVAL_SECONDS", "0.01")
    assert Settings().repair_interval_seconds == 0.01
