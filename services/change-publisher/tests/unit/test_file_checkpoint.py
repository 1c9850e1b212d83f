"""The file checkpoint store of the feed mode: the resume point outlives the process."""

from pathlib import Path

import pytest

from change_publisher.adapters.file import FileCheckpointStore
from change_publisher.adapters.memory import MemoryLeaseStore
from change_publisher.config import Settings
from change_publisher.ports import Checkpoint, Fenced
from slotstream_contracts.changes import ClusterTime

from ..conftest import NOW


async def test_a_checkpoint_survives_a_new_store_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "checkpoint.json"
    store = FileCheckpointStore(path)
    assert await store.load("s") is None
    await store.save("s", Checkpoint(None, ClusterTime(t=5, i=2), epoch=1, saved_at=NOW))
    await store.save("s", Checkpoint({"_data": "0A"}, None, epoch=2, saved_at=NOW))
    with pytest.raises(Fenced):
        await store.save("s", Checkpoint({"_data": "0B"}, None, epoch=1, saved_at=NOW))

    reopened = FileCheckpointStore(path)  # a restarted process
    loaded = await reopened.load("s")
    assert loaded is not None
    assert (loaded.token, loaded.epoch, loaded.saved_at) == ({"_data": "0A"}, 2, NOW)
    assert reopened.stored_epoch("s") == 2
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.json"]  # no temp files


async def test_the_next_process_leads_above_the_stored_epoch() -> None:
    leases = MemoryLeaseStore(first_epoch=3)
    lease = await leases.acquire("s", "b", ttl=5)
    assert lease is not None
    assert lease.epoch == 3


def test_feed_mode_uses_the_file_store_when_a_file_is_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PUBLISHER_SOURCE", "feed")
    assert Settings().effective_checkpoint_store() == "memory"
    monkeypatch.setenv("PUBLISHER_CHECKPOINT_FILE", str(tmp_path / "c.json"))
    assert Settings().effective_checkpoint_store() == "file"
    monkeypatch.delenv("PUBLISHER_CHECKPOINT_FILE")
    monkeypatch.setenv("PUBLISHER_CHECKPOINT_STORE", "file")
    with pytest.raises(ValueError, match="checkpoint_file"):
        Settings()
