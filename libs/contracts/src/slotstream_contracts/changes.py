"""A database change, in the shape of a MongoDB change stream event.

The Mongo change source parses real change stream documents into this model; the
booking-api's memory backend records its writes as the same model and serves them on its
internal change feed. The change-publisher only ever sees ``ChangeEvent``.
"""

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: A resume token, opaque to everyone but its change source (Mongo's is ``{"_data": hex}``).
ResumeToken = dict[str, Any]


class OperationType(StrEnum):
    INSERT = "insert"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"
    INVALIDATE = "invalidate"
    DROP = "drop"
    RENAME = "rename"
    DROP_DATABASE = "dropDatabase"


class Namespace(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    db: str
    coll: str | None = None


class ClusterTime(BaseModel):
    """A BSON timestamp: seconds since the epoch and an ordinal within that second."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    t: int = Field(ge=0)
    i: int = Field(ge=0)


class UpdateDescription(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    updated_fields: dict[str, Any] = Field(default_factory=dict, alias="updatedFields")
    removed_fields: list[str] = Field(default_factory=list, alias="removedFields")


class ChangeEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    token: ResumeToken = Field(alias="_id")
    operation_type: OperationType = Field(alias="operationType")
    cluster_time: ClusterTime = Field(alias="clusterTime")
    wall_time: datetime | None = Field(default=None, alias="wallTime")
    ns: Namespace
    #: Where a ``rename`` moved the collection (``ns``) to; None for every other change.
    to: Namespace | None = None
    document_key: dict[str, Any] | None = Field(default=None, alias="documentKey")
    full_document: dict[str, Any] | None = Field(default=None, alias="fullDocument")
    full_document_before_change: dict[str, Any] | None = Field(
        default=None, alias="fullDocumentBeforeChange"
    )
    update_description: UpdateDescription | None = Field(default=None, alias="updateDescription")

    @property
    def token_data(self) -> str:
        """The token's ``_data`` string: unique per change, the base of event ids."""
        return str(self.token.get("_data", ""))
