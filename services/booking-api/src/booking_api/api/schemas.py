"""Request bodies. camelCase only, unknown fields rejected, strings bounded, and any key
that starts with ``$`` or contains ``.`` rejected before anything reaches a store."""

from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from booking_api.domain.slots import MAX_BATCH
from slotstream_contracts.entities import DisplayName, WrittenCancelReason
from slotstream_contracts.ids import EntityId


def _forbidden_key(value: Any) -> str | None:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and (key.startswith("$") or "." in key):
                return key
            found = _forbidden_key(item)
            if found is not None:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _forbidden_key(item)
            if found is not None:
                return found
    return None


class RequestBody(BaseModel):
    """Base of request bodies; fields are single words or carry their camelCase alias."""

    model_config = ConfigDict(
        validate_by_alias=True,
        validate_by_name=False,
        extra="forbid",
        frozen=True,
        str_strip_whitespace=True,
        str_max_length=1000,
    )

    @model_validator(mode="before")
    @classmethod
    def _no_operator_keys(cls, data: Any) -> Any:
        key = _forbidden_key(data)
        if key is not None:
            raise ValueError(f"field names may not start with '$' or contain '.': {key[:64]!r}")
        return data


def _known_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except Exception:  # ZoneInfo raises several types for odd names (paths, NULs, ...)
        raise ValueError(f"unknown IANA time zone {name[:64]!r}") from None
    return name


TimeZoneName = Annotated[
    str,
    Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_+\-/]+$", examples=["Europe/Berlin"]),
    AfterValidator(_known_timezone),
]


class InstructorCreate(RequestBody):
    id: EntityId | None = Field(
        default=None, description="only admins choose it; an instructor's id is their user id"
    )
    name: DisplayName
    timezone: TimeZoneName = "UTC"


class SlotCreate(RequestBody):
    start: AwareDatetime = Field(description="ISO 8601 with an offset; stored in UTC")
    end: AwareDatetime


class SlotMove(RequestBody):
    """A new start (the length stays), a new end (the length changes), or both."""

    start: AwareDatetime | None = Field(default=None, description="ISO 8601 with an offset")
    end: AwareDatetime | None = None


class SlotBatch(RequestBody):
    slots: list[SlotCreate] = Field(min_length=1, max_length=MAX_BATCH)


class BookingCancel(RequestBody):
    reason: WrittenCancelReason | None = Field(
        default=None, description="shown to the student in their notification"
    )


class BookingCreate(RequestBody):
    slot_id: EntityId = Field(alias="slotId")
