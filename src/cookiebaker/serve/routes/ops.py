"""GET /healthz (no key needed) and GET /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter()


@router.api_route("/healthz", methods=["GET", "HEAD"])
async def healthz(request: Request) -> dict:
    backends = request.app.state.service.responders.backends
    return {"status": "ok", "models": {name: backend.description for name, backend in backends.items()}}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.service.registry), media_type=CONTENT_TYPE_LATEST)
