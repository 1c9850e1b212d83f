"""The memory backend's change feed for the change-publisher (docs/architecture.md).

``GET /internal/changes`` is what a change stream is to the Mongo backend: the writes in
commit order, resumable by token. Only mounted when ``BOOKING_API_STORAGE=memory``, and
guarded by ``X-Internal-Token``: it fails closed, so without ``BOOKING_API_INTERNAL_TOKEN``
every request is refused (403).
"""

import hmac
import re
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.responses import Response

from booking_api.adapters.memory import MemoryStorage
from booking_api.api.deps import AppParts, get_parts
from booking_api.api.problems import problem
from booking_api.api.responses import JSON
from slotstream_contracts.changelog import ChangeHistoryLost, InvalidResumeToken
from slotstream_contracts.changes import ChangeEvent, ClusterTime
from slotstream_contracts.documents import BOOKINGS, INSTRUCTORS, NOTIFICATIONS, SLOTS

_TOKEN_RE = re.compile(r"^[0-9A-Fa-f]{1,32}$")
_TIME_RE = re.compile(r"^(\d{1,12})\.(\d{1,12})$")
COLLECTIONS = (INSTRUCTORS, SLOTS, BOOKINGS, NOTIFICATIONS)


class InternalRefused(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


async def require_internal_token(
    request: Request,
    parts: Annotated[AppParts, Depends(get_parts)],
    internal_token: Annotated[str | None, Header(alias="X-Internal-Token")] = None,
) -> None:
    """Fail closed: no configured token refuses everyone, as a wrong token does."""
    expected = parts.settings.internal_token
    if expected is None or not expected.get_secret_value():
        raise InternalRefused(
            problem(
                403,
                "internal routes are closed: BOOKING_API_INTERNAL_TOKEN is not set",
                instance=request.url.path,
            )
        )
    if not hmac.compare_digest(
        (internal_token or "").encode(), expected.get_secret_value().encode()
    ):
        raise InternalRefused(
            problem(403, "missing or wrong X-Internal-Token", instance=request.url.path)
        )


async def _memory(
    request: Request, parts: Annotated[AppParts, Depends(get_parts)]
) -> MemoryStorage:
    runtime = parts.runtime
    if runtime is None or runtime.memory is None:
        raise InternalRefused(
            problem(503, "the memory store is not open", instance=request.url.path)
        )
    return runtime.memory


Memory = Annotated[MemoryStorage, Depends(_memory)]

router = APIRouter(
    prefix="/internal", include_in_schema=False, dependencies=[Depends(require_internal_token)]
)


def _changes_body(events: list[ChangeEvent], token: dict[str, Any]) -> Response:
    body = {
        "changes": [e.model_dump(mode="json", by_alias=True) for e in events],
        "postBatchResumeToken": token,
    }
    return Response(orjson.dumps(body), media_type=JSON)


@router.get("/changes")
async def changes(
    request: Request,
    memory: Memory,
    after: Annotated[str | None, Query(max_length=64)] = None,
    at_operation_time: Annotated[str | None, Query(alias="atOperationTime", max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    wait: Annotated[float, Query(ge=0, le=30)] = 0,
) -> Response:
    """Changes after the resume token ``after`` (its ``_data``), or at or after the cluster
    time ``atOperationTime`` (``t.i``); waits up to ``wait`` seconds for a first one."""
    log = memory.changelog
    path = request.url.path
    if after is not None and at_operation_time is not None:
        return problem(400, "give either after or atOperationTime, not both", instance=path)
    try:
        if at_operation_time is not None:
            match = _TIME_RE.fullmatch(at_operation_time)
            if match is None:
                return problem(400, "atOperationTime is <seconds>.<ordinal>", instance=path)
            at = ClusterTime(t=int(match[1]), i=int(match[2]))
            events = log.read_from_time(at, limit)
            if not events and wait > 0:
                events = await log.wait_after(log.latest_token, limit, wait)
        else:
            if after is not None and _TOKEN_RE.fullmatch(after) is None:
                return problem(
                    400, f"{after!r} is not a resume token of this change log", instance=path
                )
            token = None if after is None else {"_data": after}
            events = await log.wait_after(token, limit, wait)
    except ChangeHistoryLost as exc:
        return problem(410, str(exc), kind="change-history-lost", instance=path)
    except InvalidResumeToken as exc:
        return problem(400, str(exc), kind="invalid-resume-token", instance=path)
    resume = events[-1].token if events else log.latest_token
    return _changes_body(events, resume)


@router.get("/snapshot")
async def snapshot(
    request: Request,
    memory: Memory,
    collection: Annotated[str, Query(max_length=64)],
) -> Response:
    """Every document of a collection, and the cluster time taken just before the copy."""
    if collection not in COLLECTIONS:
        return problem(
            400,
            f"unknown collection {collection!r}; one of {', '.join(COLLECTIONS)}",
            instance=request.url.path,
        )
    at, documents = memory.snapshot(collection)
    body = {"operationTime": at.model_dump(), "documents": documents}
    return Response(orjson.dumps(body), media_type=JSON)
