"""SSE event ids: a connection's position in the Kafka log, as a compact vector.

Each component is ``<topic letter><partition>:<offset>`` (``s`` = schedule topic,
``n`` = notifications topic), joined by ``.``, e.g. ``s3:1042.n1:77``. A component says that
every record of that partition up to and including that offset has been delivered (or is
covered by a snapshot that was). All gateways read the same log, so a position taken from one
gateway resumes on any other. For a connection whose channels live on one partition (the
page's endpoint: one instructor) the id is exactly the record's partition and offset.
"""

import re
from collections.abc import Iterable, Mapping
from typing import Final

#: (topic letter, partition)
PartitionKey = tuple[str, int]

SCHEDULE_LETTER: Final = "s"
NOTIFICATIONS_LETTER: Final = "n"
MAX_COMPONENTS: Final = 64
_COMPONENT_RE: Final = re.compile(r"^([sn])(\d{1,6}):(-1|\d{1,19})$")


class PositionError(ValueError):
    """A ``Last-Event-ID`` that is not a position this gateway wrote."""


def format_position(vector: Mapping[PartitionKey, int]) -> bytes:
    return ".".join(
        f"{letter}{part}:{offset}" for (letter, part), offset in sorted(vector.items())
    ).encode()


def component(key: PartitionKey, offset: int) -> str:
    return f"{key[0]}{key[1]}:{offset}"


def parse_position(text: str) -> dict[PartitionKey, int]:
    """Parse a ``Last-Event-ID``; raise :class:`PositionError` when it is not one of ours."""
    text = text.strip()
    if not text or len(text) > 2048:
        raise PositionError("empty or oversized Last-Event-ID")
    parts = text.split(".")
    if len(parts) > MAX_COMPONENTS:
        raise PositionError("too many components in Last-Event-ID")
    vector: dict[PartitionKey, int] = {}
    for part in parts:
        match = _COMPONENT_RE.fullmatch(part)
        if match is None:
            raise PositionError(f"malformed Last-Event-ID component {part[:40]!r}")
        key = (match.group(1), int(match.group(2)))
        if key in vector:
            raise PositionError(f"duplicate Last-Event-ID component {part[:40]!r}")
        vector[key] = int(match.group(3))
    return vector


def id_prefixes(partitions: Iterable[PartitionKey]) -> tuple[PartitionKey, ...]:
    """A connection's partitions in the order ids list them."""
    return tuple(sorted(set(partitions)))
