"""The public API under ``/api``."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from starlette.responses import Response

from booking_api.api.deps import (
    AppParts,
    CurrentUser,
    Parts,
    Service,
    authenticate_header,
    get_service,
)
from booking_api.api.idempotency import KEY_PATTERN, idempotency_header, idempotent
from booking_api.api.problems import problem_responses
from booking_api.api.responses import list_response, model_response
from booking_api.api.schemas import (
    BookingCancel,
    BookingCreate,
    InstructorCreate,
    SlotBatch,
    SlotCreate,
    SlotMove,
)
from booking_api.domain.errors import Conflict
from slotstream_contracts.entities import (
    BookingData,
    InstructorData,
    NotificationData,
    ScheduleSnapshot,
    SlotData,
)
from slotstream_contracts.ids import ID_PATTERN

#: every operation may answer 503 (problem+json, Retry-After): while the service starts
#: (its store not open yet) and when the store fails
router = APIRouter(prefix="/api", responses=problem_responses(503))

InstructorId = Annotated[str, Path(pattern=ID_PATTERN, max_length=64)]
SlotId = Annotated[str, Path(pattern=ID_PATTERN, max_length=64)]
BookingId = Annotated[str, Path(pattern=ID_PATTERN, max_length=64)]
NotificationId = Annotated[str, Path(pattern=ID_PATTERN, max_length=64)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=KEY_PATTERN,
        description="Retry-safe POST: the same key returns the first response again",
    ),
]
Limit = Annotated[int, Query(ge=1, le=500)]

PUBLIC_ERRORS = problem_responses(404, 413, 422)
AUTH_ERRORS = problem_responses(400, 401, 403, 404, 409, 413, 422)
#: POSTs that take an Idempotency-Key: also 429 (key quota) and 503 (request timeout).
IDEMPOTENT_ERRORS = problem_responses(400, 401, 403, 404, 409, 413, 422, 429, 503)


# The booking route is the hot path (see bench/booking.py). It is registered first, so
# routing reaches it first, and it reads the bearer token and the Idempotency-Key itself
# instead of through dependencies/header parameters: FastAPI spends ~20-30 µs per
# dependency or header parameter per request. ``openapi_extra`` documents both, so the
# OpenAPI document is the same as for the other routes.
_BOOKING_OPENAPI: dict[str, Any] = {
    "security": [{"HTTPBearer": []}],
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "Retry-safe POST: the same key returns the first response again",
            "schema": {"type": "string", "pattern": KEY_PATTERN},
        }
    ],
}


@router.post(
    "/bookings",
    status_code=201,
    response_model=BookingData,
    responses=IDEMPOTENT_ERRORS,
    openapi_extra=_BOOKING_OPENAPI,
)
async def create_booking(body: BookingCreate, request: Request) -> Response:
    """Book a free slot. Exactly one of many simultaneous attempts wins; the others get
    409 naming the slot."""
    principal = authenticate_header(request)
    idempotency_key = idempotency_header(request)
    service = await get_service(request)
    parts: AppParts = request.app.state.parts
    metrics = parts.metrics

    async def handler() -> Response:
        try:
            booking = await service.book(
                principal,
                body.slot_id,
                parts.settings.max_active_bookings_per_student,
                idempotency_key,
            )
        except Conflict:
            metrics.booking_conflicts.inc()
            raise
        metrics.bookings_created.inc()
        return model_response(booking.to_data(), 201)

    return await idempotent(request, body, principal, idempotency_key, service, parts, handler)


@router.get(
    "/instructors", response_model=list[InstructorData], responses=problem_responses(413, 422)
)
async def list_instructors(service: Service, limit: Limit = 100) -> Response:
    """Every instructor, by name."""
    instructors = await service.list_instructors(limit)
    return list_response([i.to_data() for i in instructors], InstructorData)


@router.post(
    "/instructors", status_code=201, response_model=InstructorData, responses=IDEMPOTENT_ERRORS
)
async def create_instructor(
    body: InstructorCreate,
    request: Request,
    principal: CurrentUser,
    service: Service,
    parts: Parts,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create an instructor profile. An instructor creates their own (id = their user id);
    an admin may create any, choosing the id or not."""

    async def handler() -> Response:
        created = await service.create_instructor(principal, body.id, body.name, body.timezone)
        return model_response(created.to_data(), 201)

    return await idempotent(request, body, principal, idempotency_key, service, parts, handler)


@router.get(
    "/instructors/{instructor_id}/schedule",
    response_model=ScheduleSnapshot,
    responses=PUBLIC_ERRORS,
)
async def get_schedule(
    instructor_id: InstructorId,
    service: Service,
    start: Annotated[datetime | None, Query(alias="from", description="ISO 8601 with offset")] = (
        None
    ),
    end: Annotated[datetime | None, Query(alias="to", description="ISO 8601 with offset")] = None,
) -> Response:
    """An instructor's live slots in a window (default: now − 1 day to now + 28 days,
    at most 62 days) with each slot's version and the schedule's high-water version."""
    range_start, range_end, found = await service.schedule(instructor_id, start, end)
    snapshot = ScheduleSnapshot.model_validate(
        {
            "instructorId": instructor_id,
            "from": range_start,
            "to": range_end,
            "slots": [s.to_data() for s in found],
            "version": max((s.version for s in found), default=0),
            "generatedAt": service.now(),
        }
    )
    return model_response(snapshot)


@router.post(
    "/instructors/{instructor_id}/slots",
    status_code=201,
    response_model=SlotData,
    responses=IDEMPOTENT_ERRORS,
)
async def create_slot(
    instructor_id: InstructorId,
    body: SlotCreate,
    request: Request,
    principal: CurrentUser,
    service: Service,
    parts: Parts,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Add a slot (5 minutes to 8 hours, starting within 180 days) to the instructor's
    schedule. 409 when it overlaps one of their live slots."""

    async def handler() -> Response:
        slot = await service.create_slot(principal, instructor_id, body.start, body.end)
        return model_response(slot.to_data(), 201)

    return await idempotent(request, body, principal, idempotency_key, service, parts, handler)


@router.post(
    "/instructors/{instructor_id}/slots:batch",
    status_code=201,
    response_model=list[SlotData],
    responses=IDEMPOTENT_ERRORS,
)
async def create_slots(
    instructor_id: InstructorId,
    body: SlotBatch,
    request: Request,
    principal: CurrentUser,
    service: Service,
    parts: Parts,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Add up to 200 slots at once, all or nothing: 422 when two of them overlap or one
    breaks a slot rule, 409 when one overlaps a live slot of the instructor (nothing is
    stored). Each new slot is a ``slot.created`` event for every viewer."""

    async def handler() -> Response:
        created = await service.create_slots(
            principal, instructor_id, [(s.start, s.end) for s in body.slots]
        )
        response = list_response([s.to_data() for s in created], SlotData)
        response.status_code = 201
        return response

    return await idempotent(request, body, principal, idempotency_key, service, parts, handler)


def slot_etag(version: int) -> str:
    return f'"{version}"'


@router.patch(
    "/slots/{slot_id}",
    response_model=SlotData,
    responses=problem_responses(400, 401, 403, 404, 409, 412, 413, 422, 428),
)
async def move_slot(
    slot_id: SlotId,
    body: SlotMove,
    principal: CurrentUser,
    service: Service,
    if_match: Annotated[
        str | None,
        Header(
            alias="If-Match",
            max_length=80,
            description='the slot\'s ETag ("<version>"); required (428 without it)',
        ),
    ] = None,
) -> Response:
    """Move a free slot (a new ``start`` keeps its length) or change its length (a new
    ``end``), under the rules and overlap checks of creating one. 412 when the slot is no
    longer at the version ``If-Match`` names, 428 without ``If-Match``, 409 when it is
    booked or the new time overlaps another slot. Viewers get a ``slot.updated``."""
    slot = await service.move_slot(principal, slot_id, if_match, body.start, body.end)
    return model_response(slot.to_data(), headers={"ETag": slot_etag(slot.version)})


@router.delete("/slots/{slot_id}", response_model=SlotData, responses=AUTH_ERRORS)
async def delete_slot(slot_id: SlotId, principal: CurrentUser, service: Service) -> Response:
    """Withdraw a free slot: it becomes a tombstone (``status: deleted``, version + 1).
    A booked slot is refused with 409: cancel its booking first. Repeating is harmless."""
    slot = await service.delete_slot(principal, slot_id)
    return model_response(slot.to_data())


@router.delete("/bookings/{booking_id}", response_model=BookingData, responses=AUTH_ERRORS)
async def cancel_booking(
    booking_id: BookingId,
    principal: CurrentUser,
    service: Service,
    parts: Parts,
    body: BookingCancel | None = None,
) -> Response:
    """Cancel a booking (its student, the instructor or an admin) and free the slot.
    An optional body ``{"reason": …}`` reaches the student's notification. Cancelling
    again returns the cancelled booking."""
    booking = await service.cancel(principal, booking_id, None if body is None else body.reason)
    parts.metrics.bookings_cancelled.inc()
    return model_response(booking.to_data())


@router.get(
    "/instructors/{instructor_id}/bookings",
    response_model=list[BookingData],
    responses=problem_responses(401, 403, 404, 413, 422),
)
async def instructor_bookings(
    instructor_id: InstructorId, principal: CurrentUser, service: Service, limit: Limit = 100
) -> Response:
    """Bookings of the instructor's slots (with the student's name), newest first: for
    that instructor or an admin."""
    found = await service.bookings_for_instructor(principal, instructor_id, limit)
    return list_response([b.to_data() for b in found], BookingData)


@router.get(
    "/users/me/bookings",
    response_model=list[BookingData],
    responses=problem_responses(401, 413, 422),
)
async def my_bookings(principal: CurrentUser, service: Service, limit: Limit = 100) -> Response:
    """The caller's bookings (as student, or of their slots as instructor), newest first."""
    found = await service.bookings_of(principal, limit)
    return list_response([b.to_data() for b in found], BookingData)


@router.get(
    "/users/me/notifications",
    response_model=list[NotificationData],
    responses=problem_responses(401, 413, 422),
)
async def my_notifications(
    principal: CurrentUser,
    service: Service,
    limit: Limit = 50,
    unread: Annotated[bool, Query(description="only unread ones")] = False,
) -> Response:
    """The caller's notifications, newest first: those of the retention period
    (`BOOKING_API_NOTIFICATION_RETENTION_DAYS`, 90 days unless set); older ones are deleted."""
    found = await service.notifications_of(principal, limit, unread)
    return list_response([n.to_data() for n in found], NotificationData)


@router.post(
    "/users/me/notifications/{notification_id}/read",
    response_model=NotificationData,
    responses=problem_responses(401, 404, 413, 422),
)
async def mark_notification_read(
    notification_id: NotificationId, principal: CurrentUser, service: Service
) -> Response:
    """Mark one of the caller's notifications as read (repeating is harmless)."""
    note = await service.mark_read(principal, notification_id)
    return model_response(note.to_data())
