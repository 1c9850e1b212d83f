"""Domain failures. The API maps each kind to one HTTP status and a problem body."""

from typing import Any


class DomainError(Exception):
    """Base of every rule violation; ``detail`` is shown to the caller as is."""

    #: The problem type's last part (``urn:slotstream:problem:<kind>``); default: the
    #: class name in lower case.
    kind: str | None = None

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidRequest(DomainError):
    """The request is well-formed but breaks a rule (422)."""

    # the type of the API's other 422 (a body its schema refuses): one condition, one type
    kind = "invalid-request"


class NotFound(DomainError):
    """The entity does not exist, or is not visible to the caller (404)."""


class Conflict(DomainError):
    """The request collides with the current state (409), e.g. a slot already booked."""


class QuotaExceeded(Conflict):
    """The caller holds as many of something as they may (409, not 429: waiting does not
    help, giving one back does)."""

    kind = "quota-exceeded"


class BookingCancelled(Conflict):
    """A booking request sent again with its ``Idempotency-Key`` finds the booking an
    earlier try made cancelled since (409): it is not made again under that key."""

    kind = "booking-cancelled"


class PreconditionFailed(DomainError):
    """The caller changed an entity from a version that is no longer current (412)."""

    kind = "precondition-failed"


class PreconditionRequired(DomainError):
    """A conditional change came without ``If-Match`` (428)."""

    kind = "precondition-required"


class Forbidden(DomainError):
    """The caller is authenticated but may not do this (403)."""


class StorageUnavailable(DomainError):
    """The store did not answer in time (503): the request may have been carried out in
    part (a claim without its booking, resolved by the service's read-back), so a client
    asks again with the same ``Idempotency-Key`` rather than assume nothing was done."""

    kind = "storage-unavailable"


class ServiceStarting(StorageUnavailable):
    """The store is not open yet, the service is starting (503): the request was refused
    before anything was done. Its own type, so that a client can tell it from the above."""

    kind = "starting"
