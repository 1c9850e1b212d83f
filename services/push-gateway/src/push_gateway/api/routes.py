"""The non-streaming routes: health, readiness, metrics, presence."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from push_gateway.adapters.kafka import KafkaIngest
from push_gateway.gateway import Gateway
from push_gateway.readiness import readiness_checks
from slotstream_contracts.channels import Channel, ChannelError

router = APIRouter()


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def get_ingest(request: Request) -> KafkaIngest:
    ingest: KafkaIngest = request.app.state.ingest
    return ingest


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
IngestDep = Annotated[KafkaIngest, Depends(get_ingest)]


def problem(status: int, title: str, detail: str, instance: str) -> JSONResponse:
    return JSONResponse(
        {
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": detail,
            "instance": instance,
        },
        status_code=status,
        media_type="application/problem+json",
    )


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(gateway: GatewayDep, ingest: IngestDep) -> JSONResponse:
    checks = readiness_checks(gateway, ingest)
    ready = all(checks.values())
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(request: Request, ingest: IngestDep) -> Response:
    registry: CollectorRegistry = request.app.state.registry
    await ingest.refresh_lag()
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/channels/{channel:path}/presence", response_model=None)
async def presence(channel: str, gateway: GatewayDep, request: Request) -> JSONResponse:
    try:
        parsed = Channel.parse(channel)
    except ChannelError as exc:
        return problem(400, "Bad Request", str(exc), request.url.path)
    if parsed.is_private:
        return problem(
            400, "Bad Request", "presence is only kept for public channels", request.url.path
        )
    return JSONResponse({"channel": parsed.name, "count": gateway.presence.count(parsed)})
