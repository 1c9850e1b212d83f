"""Identifier types shared by every service.

Ids are opaque strings of letters, digits, ``_`` and ``-`` (at most 64). That keeps them
safe as Mongo ``_id`` values, as Kafka record keys, inside channel names and in URLs,
and rules out ``$``/``.``-style injection into queries before any store sees them.
"""

import re
from typing import Annotated

from pydantic import StringConstraints

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_ID_RE = re.compile(ID_PATTERN)

EntityId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


def is_valid_id(value: str) -> bool:
    return _ID_RE.fullmatch(value) is not None
