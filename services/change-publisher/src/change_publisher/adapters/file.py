"""A checkpoint store in a local JSON file, for the feed source (one publisher per host).

The feed mode has no database to keep its resume point in; without this store a restarted
publisher forgets where it was and starts at the latest change, skipping whatever was
written while it was down. Each save writes a temporary file, fsyncs it and renames it
over the old one, so a crash at any moment leaves either the old or the new checkpoint.
"""

import asyncio
import contextlib
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from change_publisher.domain import lease as lease_rules
from change_publisher.ports import Checkpoint, Fenced
from slotstream_contracts.changes import ClusterTime


class FileCheckpointStore:
    """Checkpoints by stream name in one JSON file, with the same epoch fencing as Mongo."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = asyncio.Lock()

    def _read(self) -> dict[str, Any]:
        try:
            content = self._path.read_bytes()
        except FileNotFoundError:
            return {}
        stored = json.loads(content) if content else {}
        if not isinstance(stored, dict):
            raise ValueError(f"{self._path} holds no checkpoint object")
        return stored

    def _write(self, stored: dict[str, Any]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
        with open(temporary, "w", encoding="utf-8") as out:
            json.dump(stored, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self._path)
        with contextlib.suppress(OSError):
            directory = os.open(self._path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    def check_writable(self) -> None:
        """Raise ``OSError`` unless the checkpoint can be read and written here (its
        directory made, a file created in it). Checked at start-up: a publisher that cannot
        save its checkpoint starts at the latest change after a restart, so whatever changed
        while it was down would never be published."""
        self._read()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        probe = self._path.with_name(f".{self._path.name}.{os.getpid()}.probe")
        probe.write_bytes(b"")
        probe.unlink()

    def stored_epoch(self, name: str) -> int | None:
        """The epoch of the stored checkpoint (read at start-up, before any lease)."""
        entry = self._read().get(name)
        return int(entry["epoch"]) if entry else None

    async def load(self, name: str) -> Checkpoint | None:
        entry = (await asyncio.to_thread(self._read)).get(name)
        if entry is None:
            return None
        at = entry.get("at")
        return Checkpoint(
            token=entry.get("token"),
            at=ClusterTime.model_validate(at) if at else None,
            epoch=int(entry["epoch"]),
            saved_at=datetime.fromisoformat(entry["savedAt"]),
        )

    async def save(self, name: str, checkpoint: Checkpoint) -> None:
        async with self._lock:
            stored = await asyncio.to_thread(self._read)
            current = stored.get(name)
            if not lease_rules.checkpoint_allowed(
                int(current["epoch"]) if current else None, checkpoint.epoch
            ):
                raise Fenced(f"checkpoint {name}: a newer epoch than {checkpoint.epoch} wrote")
            stored[name] = {
                "token": checkpoint.token,
                "at": checkpoint.at.model_dump() if checkpoint.at else None,
                "epoch": checkpoint.epoch,
                "savedAt": checkpoint.saved_at.isoformat(),
            }
            await asyncio.to_thread(self._write, stored)

    async def close(self) -> None:
        return None
