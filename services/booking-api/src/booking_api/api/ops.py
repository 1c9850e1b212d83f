"""Operations: liveness, readiness and Prometheus metrics (outside ``/api``)."""

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from booking_api.api.deps import Parts
from booking_api.api.problems import domain_problem, problem
from booking_api.api.responses import OrjsonResponse
from booking_api.domain.errors import ServiceStarting

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
async def healthz() -> Response:
    return OrjsonResponse({"status": "ok"})


#: how soon a caller may ask again while the storage does not answer (as every API 503 says)
_RETRY_AFTER = {"Retry-After": "1"}


@router.get("/readyz")
async def readyz(request: Request, parts: Parts) -> Response:
    runtime = parts.runtime
    if runtime is None:
        starting = ServiceStarting(
            "starting: the storage has not answered yet or its indexes are being created "
            f"(attempt {parts.startup.attempts}; the log says why)"
        )
        return domain_problem(starting, request.url.path)
    try:
        reachable = await runtime.storage.ping()
    except Exception as exc:
        reachable = False
        detail = f"storage unreachable: {type(exc).__name__}"
    else:
        detail = "storage unreachable"
    if not reachable:
        return problem(503, detail, instance=request.url.path, headers=_RETRY_AFTER)
    return OrjsonResponse({"status": "ready", "storage": runtime.settings.storage})


@router.get("/metrics")
async def metrics(parts: Parts) -> Response:
    return Response(generate_latest(parts.metrics.registry), media_type=CONTENT_TYPE_LATEST)
