"""Settings from the environment (PUBLISHER_ prefix, nested with __)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from change_publisher.config import Settings
from slotstream_testkit.net import free_port


def test_defaults_follow_the_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert settings.http_port == 8001
    assert settings.collections == ["slots", "bookings", "notifications"]
    assert settings.effective_topic_map() == {
        "slots": "slotstream.schedule.v1",
        "bookings": "slotstream.notifications.v1",
        "notifications": "slotstream.notifications.v1",
    }
    assert (settings.start_mode, settings.history_lost_policy) == ("resume", "resnapshot")
    assert settings.enable_idempotence is True
    assert settings.effective_checkpoint_store() == "mongo"
    monkeypatch.setenv("PUBLISHER_SOURCE", "feed")
    assert Settings().effective_lease_store() == "memory"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBLISHER_COLLECTIONS", "slots, bookings")
    monkeypatch.setenv("PUBLISHER_TOPIC_MAP", '{"slots": "a.v1", "bookings": "b.v1"}')
    monkeypatch.setenv("PUBLISHER_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("PUBLISHER_TOPICS__DEADLETTER", "dlq.v1")
    monkeypatch.setenv("PUBLISHER_ENABLE_IDEMPOTENCE", "false")
    monkeypatch.setenv("PUBLISHER_CHECKPOINT_STORE", "memory")
    settings = Settings()
    assert settings.collections == ["slots", "bookings"]
    assert settings.effective_topic_map() == {"slots": "a.v1", "bookings": "b.v1"}
    assert settings.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert settings.topics.deadletter == "dlq.v1"
    assert settings.enable_idempotence is False
    assert settings.effective_checkpoint_store() == "memory"
    monkeypatch.setenv("PUBLISHER_COLLECTIONS", '["notifications"]')
    assert Settings().collections == ["notifications"]


def test_bookings_may_not_be_routed_to_the_public_schedule_topic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A booking names its student: it goes to private channels only (docs/architecture.md)."""
    monkeypatch.setenv("PUBLISHER_TOPIC_MAP", '{"bookings": "slotstream.schedule.v1"}')
    with pytest.raises(ValueError, match="bookings"):
        Settings()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PUBLISHER_HTTP_PORT": "abc"}, "http_port"),
        ({"PUBLISHER_START_MODE": "newest"}, "start_mode"),
        ({"PUBLISHER_TOPIC_MAP": '{"bookings": "slotstream.schedule.v1"}'}, "bookings"),
        ({"PUBLISHER_KAFKA": "k1:9092"}, "PUBLISHER_KAFKA"),
    ],
)
def test_the_publisher_refuses_to_start_with_bad_settings(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    message: str,
) -> None:
    """As the booking-api and the gateway do: the reason on stderr and status 2, not a
    traceback (status 1) that a crash-looping container repeats without saying why."""
    from change_publisher.__main__ import main

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("change-publisher: refusing to start, bad settings:")
    assert message in err


@pytest.mark.parametrize("where", ["under-a-file", "unwritable"])
def test_the_publisher_refuses_a_checkpoint_file_it_cannot_write(
    tmp_path: Path, where: str
) -> None:
    """A checkpoint file it cannot write used to start a publisher that answered ready,
    logged a failed save every second without naming the file, and after a restart began
    at the latest change: whatever changed while it was down was never published (under a
    regular file: a traceback, status 3). It must refuse to start, naming the file."""
    if where == "under-a-file":
        (tmp_path / "a-file").write_text("")
        path = tmp_path / "a-file" / "checkpoint.json"
    else:
        path = Path("/proc/slotstream/checkpoint.json")  # not writable, even for root
    env = {
        **os.environ,
        "PUBLISHER_SOURCE": "feed",
        "PUBLISHER_CHECKPOINT_FILE": str(path),
        "PUBLISHER_HTTP_PORT": str(free_port()),
    }
    try:
        ran = subprocess.run(
            [sys.executable, "-m", "change_publisher"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the publisher started with a checkpoint file it cannot write: {path}")
    assert ran.returncode == 2, ran.stderr[-2000:]
    assert ran.stderr.startswith("change-publisher: refusing to start, ")
    assert str(path) in ran.stderr
