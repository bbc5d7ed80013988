"""The responder service: client webhook with SFW/NSFW routing, Ollama- and OpenAI-compatible chat APIs."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from cookiebaker.backends import Backend, BackendUnavailable, Sampling
from cookiebaker.serve.history import HistoryStore

log = logging.getLogger(__name__)

SFW, NSFW = "cookiebaker-sfw", "cookiebaker-nsfw"


class HTTPProblem(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Responders:
    """The two models, each with a bounded queue and a generation timeout."""

    def __init__(self, backends: dict[str, Backend], samplings: dict[str, Sampling], queue_size: int,
                 timeout: float, registry: CollectorRegistry) -> None:
        self.backends, self.samplings = backends, samplings
        self.queue_size, self.timeout = queue_size, timeout
        self.pending = dict.fromkeys(backends, 0)
        self.depth = Gauge("cookiebaker_queue_depth", "Requests waiting or generating", ["model"], registry=registry)
        self.seconds = Histogram("cookiebaker_generation_seconds", "Generation time", ["model"], registry=registry)

    def resolve(self, name: str | None) -> str:
        model = (name or "").removesuffix(":latest")
        if model not in self.backends:
            raise HTTPProblem(404, f"model '{name}' not found; available: {', '.join(self.backends)}")
        return model

    @asynccontextmanager
    async def slot(self, model: str):  # noqa: ANN201
        if self.pending[model] >= self.queue_size:
            raise HTTPProblem(503, f"{model} is busy ({self.queue_size} requests queued); try again shortly")
        self.pending[model] += 1
        self.depth.labels(model).set(self.pending[model])
        started = time.perf_counter()
        try:
            yield
        finally:
            self.pending[model] -= 1
            self.depth.labels(model).set(self.pending[model])
            self.seconds.labels(model).observe(time.perf_counter() - started)

    async def complete(self, model: str, messages: list[dict], sampling: Sampling) -> str:
        async with self.slot(model):
            try:
                return await asyncio.wait_for(self.backends[model].complete(messages, sampling), self.timeout)
            except asyncio.TimeoutError:
                raise HTTPProblem(504, f"{model} did not answer within {self.timeout:g} s") from None
            except BackendUnavailable as exc:
                raise HTTPProblem(503, str(exc)) from None

    async def stream(self, model: str, messages: list[dict], sampling: Sampling) -> AsyncIterator[str]:
        async with self.slot(model):
            deadline = time.monotonic() + self.timeout
            pieces = self.backends[model].stream(messages, sampling).__aiter__()
            while True:
                try:
                    piece = await asyncio.wait_for(pieces.__anext__(), max(0.0, deadline - time.monotonic()))
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:
                    raise HTTPProblem(504, f"{model} did not answer within {self.timeout:g} s") from None
                except BackendUnavailable as exc:
                    raise HTTPProblem(503, str(exc)) from None
                yield piece


def _messages(value: object) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise HTTPProblem(400, "'messages' must be a non-empty list of {role, content}")
    out = []
    for item in value:
        if not (isinstance(item, dict) and item.get("role") in ("system", "user", "assistant")
                and isinstance(item.get("content"), str)):
            raise HTTPProblem(400, "each message needs a role (system, user or assistant) and a string content")
        out.append({"role": item["role"], "content": item["content"]})
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def create_app(*, backends: dict[str, Backend], samplings: dict[str, Sampling], store: HistoryStore,
               history_turns: int = 10, api_key: str | None = None, max_body_bytes: int = 1_000_000,
               queue_size: int = 8, timeout: float = 120.0) -> FastAPI:
    registry = CollectorRegistry()
    requests_total = Counter("cookiebaker_requests", "HTTP requests", ["path", "status"], registry=registry)
    responders = Responders(backends, samplings, queue_size, timeout, registry)
    app = FastAPI(title="cookiebaker responders", docs_url=None, redoc_url=None)
    app.state.responders, app.state.store = responders, store

    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, exc: HTTPProblem) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.middleware("http")
    async def _guard(request: Request, call_next):  # noqa: ANN001, ANN202
        started = time.perf_counter()
        if api_key and request.url.path != "/healthz":
            if request.headers.get("authorization", "") != f"Bearer {api_key}":
                response: Response = JSONResponse({"error": "missing or wrong API key (Authorization: Bearer …)"},
                                                  status_code=401)
                requests_total.labels(request.url.path, "401").inc()
                return response
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            requests_total.labels(request.url.path, "413").inc()
            return JSONResponse({"error": f"request body over {max_body_bytes} bytes"}, status_code=413)
        try:
            response = await call_next(request)
        except HTTPProblem as exc:
            response = JSONResponse({"error": exc.message}, status_code=exc.status)
        requests_total.labels(request.url.path, str(response.status_code)).inc()
        log.info("%s %s → %d in %.0f ms", request.method, request.url.path, response.status_code,
                 (time.perf_counter() - started) * 1000)
        return response

    async def body_of(request: Request) -> dict:
        raw = await request.body()
        if len(raw) > max_body_bytes:
            raise HTTPProblem(413, f"request body over {max_body_bytes} bytes")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HTTPProblem(400, "the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HTTPProblem(400, "the body must be a JSON object")
        return data

    def sampling_for(model: str, temperature=None, top_p=None, max_tokens=None, stop=None) -> Sampling:  # noqa: ANN001
        if isinstance(stop, str):
            stop = [stop]
        return samplings[model].merged(temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=stop)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "models": {name: backend.description for name, backend in backends.items()}}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/webhook/response")
    async def webhook(request: Request) -> dict:
        data = await body_of(request)
        prompt, chat_id = data.get("prompt"), data.get("chat_id")
        if not isinstance(prompt, str) or not prompt.strip():
            raise HTTPProblem(422, "'prompt' must be a non-empty string")
        if not isinstance(chat_id, (str, int)) or isinstance(chat_id, bool) or str(chat_id) == "":
            raise HTTPProblem(422, "'chat_id' must be a string or a number")
        sfw = data.get("sfw", True)
        if not isinstance(sfw, bool):
            raise HTTPProblem(422, "'sfw' must be true or false")
        client = str(data.get("client_name") or "default")
        model = SFW if sfw else NSFW
        responders.resolve(model)
        history = await asyncio.to_thread(store.recent, client, str(chat_id), history_turns)
        messages = [*history, {"role": "user", "content": prompt}]
        reply = (await responders.complete(model, messages, sampling_for(model))).strip()
        await asyncio.to_thread(store.add, client, str(chat_id),
                                [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}])
        return {"response": reply, "command": "", "model": model}

    @app.get("/api/tags")
    async def tags() -> dict:
        return {"models": [{"name": name, "model": name, "modified_at": _now(), "size": 0,
                            "digest": uuid.uuid5(uuid.NAMESPACE_URL, backend.description).hex,
                            "details": {"format": "gguf" if backend.description.startswith("gguf") else "",
                                        "family": "cookiebaker"}} for name, backend in backends.items()]}

    @app.get("/api/version")
    async def version() -> dict:
        from cookiebaker import __version__

        return {"version": f"cookiebaker-{__version__}"}

    @app.post("/api/chat")
    async def ollama_chat(request: Request) -> Response:
        data = await body_of(request)
        model = responders.resolve(data.get("model"))
        messages = _messages(data.get("messages"))
        options = data.get("options") or {}
        sampling = sampling_for(model, options.get("temperature"), options.get("top_p"), options.get("num_predict"),
                                options.get("stop"))
        if data.get("stream", True) is False:
            reply = await responders.complete(model, messages, sampling)
            return JSONResponse({"model": model, "created_at": _now(), "message": {"role": "assistant", "content": reply},
                                 "done": True, "done_reason": "stop"})
        await _first_check(responders, model)

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for piece in responders.stream(model, messages, sampling):
                    yield (json.dumps({"model": model, "created_at": _now(),
                                       "message": {"role": "assistant", "content": piece}, "done": False}) + "\n").encode()
            except HTTPProblem as exc:
                yield (json.dumps({"error": exc.message}) + "\n").encode()
                return
            yield (json.dumps({"model": model, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                               "done": True, "done_reason": "stop"}) + "\n").encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.get("/v1/models")
    async def openai_models() -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "cookiebaker"}
                                           for name in backends]}

    @app.post("/v1/chat/completions")
    async def openai_chat(request: Request) -> Response:
        data = await body_of(request)
        model = responders.resolve(data.get("model"))
        messages = _messages(data.get("messages"))
        sampling = sampling_for(model, data.get("temperature"), data.get("top_p"),
                                data.get("max_completion_tokens") or data.get("max_tokens"), data.get("stop"))
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if not data.get("stream"):
            reply = await responders.complete(model, messages, sampling)
            return JSONResponse({"id": completion_id, "object": "chat.completion", "created": created, "model": model,
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                              "finish_reason": "stop"}]})
        await _first_check(responders, model)

        def chunk(delta: dict, finish: str | None) -> bytes:
            body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(body)}\n\n".encode()

        async def events() -> AsyncIterator[bytes]:
            yield chunk({"role": "assistant", "content": ""}, None)
            try:
                async for piece in responders.stream(model, messages, sampling):
                    yield chunk({"content": piece}, None)
            except HTTPProblem as exc:
                yield f"data: {json.dumps({'error': {'message': exc.message}})}\n\n".encode()
                return
            yield chunk({}, "stop")
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.exception_handler(404)
    async def _not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"no route {request.method} {request.url.path}"}, status_code=404)

    @app.exception_handler(405)
    async def _not_allowed(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"{request.method} is not allowed on {request.url.path}"}, status_code=405)

    return app


async def _first_check(responders: Responders, model: str) -> None:
    """Before a stream starts (and its 200 is sent): is the backend there, is there room in the queue?"""
    if responders.pending[model] >= responders.queue_size:
        raise HTTPProblem(503, f"{model} is busy ({responders.queue_size} requests queued); try again shortly")
    try:
        await responders.backends[model].check()
    except BackendUnavailable as exc:
        raise HTTPProblem(503, str(exc)) from None


__all__ = ["create_app", "SFW", "NSFW"]
