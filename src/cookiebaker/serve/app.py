"""The responder service, assembled: shared state, the guard (key, body size, request metrics), error handlers
and the routers (client webhook, Ollama API, OpenAI API, health and metrics)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter

from cookiebaker.backends import Backend, Sampling
from cookiebaker.serve.auth import authorized
from cookiebaker.serve.history import HistoryStore
from cookiebaker.serve.responders import NSFW, SFW, ClientGone, HTTPProblem, Responders
from cookiebaker.serve.routes import ollama, openai, ops, webhook

log = logging.getLogger(__name__)


@dataclass
class Service:
    """What every route reads (``request.app.state.service``)."""

    responders: Responders
    store: HistoryStore
    registry: CollectorRegistry
    requests_total: Counter
    history_turns: int
    max_body_bytes: int
    api_key: str | None
    speakers: str = "names"
    """``names``: a webhook's sender_name is shown to the model as ``Name: text``; ``none``: never."""
    body_timeout: float = 30.0
    """Seconds a request's body may take to arrive (408 after)."""


def create_app(*, backends: dict[str, Backend], samplings: dict[str, Sampling], store: HistoryStore,
               history_turns: int = 10, api_key: str | None = None, max_body_bytes: int = 1_000_000,
               queue_size: int = 8, timeout: float = 120.0, max_tokens_limit: int = 4096,
               turn_tokens: int | None = 200, speakers: str = "names", body_timeout: float = 30.0) -> FastAPI:
    registry = CollectorRegistry()
    service = Service(
        responders=Responders(backends, samplings, queue_size, timeout, registry, max_tokens_limit, turn_tokens),
        store=store,
        registry=registry,
        requests_total=Counter("cookiebaker_requests", "HTTP requests", ["path", "status"], registry=registry),
        history_turns=history_turns, max_body_bytes=max_body_bytes, api_key=api_key, speakers=speakers,
        body_timeout=body_timeout)
    app = FastAPI(title="cookiebaker responders", docs_url=None, redoc_url=None)
    app.state.service = service
    app.add_middleware(Guard)
    add_error_handlers(app)
    for router in (webhook.router, ollama.router, openai.router, ops.router):
        app.include_router(router)
    return app


def _route_label(scope: dict) -> str:
    """The route's template for metrics labels, never the raw path (which a caller controls)."""
    return getattr(scope.get("route"), "path", None) or "unmatched"


class Guard:
    """The API key and the body size before any work, every answer counted in /metrics. A plain ASGI middleware
    (not BaseHTTPMiddleware), so that a client that disconnects cancels its streaming response."""

    def __init__(self, app) -> None:  # noqa: ANN001
        self.app = app

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        service: Service = scope["app"].state.service
        started, status = time.perf_counter(), [500]

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        refused = _refused(Request(scope), service)
        try:
            if refused is not None:
                await refused(scope, receive, counting_send)
            else:
                await self.app(scope, receive, counting_send)
        except ClientGone:  # nobody to answer: said in the log, counted as nginx's 499, no traceback
            status[0] = CLIENT_CLOSED
            log.info("%s %s: the client disconnected before its body arrived", scope["method"], _route_label(scope))
        finally:
            service.requests_total.labels(_route_label(scope), str(status[0])).inc()
            log.info("%s %s → %d in %.0f ms", scope["method"], _route_label(scope), status[0],
                     (time.perf_counter() - started) * 1000)


#: The status counted for a client that hung up before its request was read (nginx's "client closed request").
CLIENT_CLOSED = 499


def _refused(request: Request, service: Service) -> Response | None:
    if service.api_key and request.url.path != "/healthz":
        if not authorized(request, service.api_key):
            return JSONResponse({"error": "missing or wrong API key (Authorization: Bearer …)"}, status_code=401)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > service.max_body_bytes:
        return JSONResponse({"error": f"request body over {service.max_body_bytes} bytes"}, status_code=413)
    return None


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, exc: HTTPProblem) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def _failed(request: Request, exc: Exception) -> JSONResponse:  # a bug: still JSON, counted, logged
        log.error("%s %s failed: %s", request.method, _route_label(request.scope), type(exc).__name__, exc_info=exc)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the service's log has the details"},
                            status_code=500)

    @app.exception_handler(404)
    async def _not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"no route {request.method} {request.url.path}"}, status_code=404)

    @app.exception_handler(405)
    async def _not_allowed(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"{request.method} is not allowed on {request.url.path}"}, status_code=405)


__all__ = ["create_app", "SFW", "NSFW"]
