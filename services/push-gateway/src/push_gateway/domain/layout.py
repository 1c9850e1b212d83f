"""Partition layout of the data topics: noticing that it changed under a running gateway.

The ingest reads the partitions a topic had when it started, and the hub maps a channel to
its partition by ``murmur2(key) % partition count``. When an operator adds partitions,
producers write the keys that now hash to a new partition there: a gateway that went on
with the old layout would never read them, and its streams would miss those events
without a sign. So a change is never served through; the gateway restarts with the new
layout (``adapters/kafka.py``, ``app.py``).
"""

from collections.abc import Mapping
from typing import NamedTuple


class LayoutChange(NamedTuple):
    """A data topic whose partition count is no longer the one the ingest assigned."""

    topic: str
    assigned: int
    found: int


def layout_changes(
    assigned: Mapping[str, int], found: Mapping[str, int | None]
) -> list[LayoutChange]:
    """The topics of ``assigned`` (topic → partitions read) whose count in the latest
    metadata (``found``; None: the topic is missing from it right now, as during a broker
    hiccup) differs."""
    return [
        LayoutChange(topic, count, now)
        for topic, count in assigned.items()
        if (now := found.get(topic)) is not None and now != count
    ]
