"""``/healthz``, ``/readyz`` and ``/metrics`` (the publisher has no other HTTP surface)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from change_publisher.publisher import Publisher, Role


def get_publisher(request: Request) -> Publisher:
    publisher: Publisher = request.app.state.publisher
    return publisher


PublisherDep = Annotated[Publisher, Depends(get_publisher)]

router = APIRouter()


@router.get("/healthz")
async def healthz(publisher: PublisherDep) -> JSONResponse:
    """Alive unless the publisher loop has stopped for good (then restart the process)."""
    alive = publisher.role is not Role.STOPPED
    return JSONResponse(
        {"status": "ok" if alive else "stopped", **publisher.status()},
        status_code=200 if alive else 503,
    )


@router.get("/readyz")
async def readyz(publisher: PublisherDep) -> JSONResponse:
    """Ready: the leader is streaming with Kafka healthy, or this is a healthy standby."""
    ready = publisher.ready
    return JSONResponse(
        {"status": "ready" if ready else "unready", **publisher.status()},
        status_code=200 if ready else 503,
    )


@router.get("/metrics")
async def metrics(publisher: PublisherDep) -> Response:
    return Response(generate_latest(publisher.metrics.registry), media_type=CONTENT_TYPE_LATEST)
