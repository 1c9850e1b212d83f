"""Snapshot/delta merge: which buffered deltas are newer than a snapshot."""

import orjson

from slotstream_contracts.entities import ScheduleSnapshot


def slot_versions(snapshot: ScheduleSnapshot) -> dict[str, int]:
    return {slot.id: slot.version for slot in snapshot.slots}


def newer_than_snapshot(family: bytes, value: bytes, versions: dict[str, int]) -> bool:
    """Whether a buffered delta must follow the snapshot.

    Slot events compare the slot's own ``version`` with the snapshot's copy (absent = 0).
    Booking events carry the booking's version, not the slot's; they are always passed on
    (the page derives slot state from slot events, which are filtered).
    """
    if family != b"slot":
        return True
    try:
        data = orjson.loads(value).get("data", {})
        return int(data["version"]) > versions.get(str(data["id"]), 0)
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return True
