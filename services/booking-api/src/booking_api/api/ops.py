"""Operations: liveness, readiness and Prometheus metrics (outside ``/api``)."""

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from booking_api.api.deps import Parts
from booking_api.api.problems import problem
from booking_api.api.responses import OrjsonResponse

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
async def healthz() -> Response:
    return OrjsonResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request, parts: Parts) -> Response:
    runtime = parts.runtime
    if runtime is None:
        return problem(503, "storage is not open yet", instance=request.url.path)
    try:
        reachable = await runtime.storage.ping()
    except Exception as exc:
        reachable = False
        detail = f"storage unreachable: {type(exc).__name__}"
    else:
        detail = "storage unreachable"
    if not reachable:
        return problem(503, detail, instance=request.url.path)
    return OrjsonResponse({"status": "ready", "storage": runtime.settings.storage})


@router.get("/metrics")
async def metrics(parts: Parts) -> Response:
    return Response(generate_latest(parts.metrics.registry), media_type=CONTENT_TYPE_LATEST)
