"""Ollama's chat API: POST /api/chat (NDJSON stream by default), GET /api/tags, GET /api/version."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from cookiebaker.serve.responders import HTTPProblem
from cookiebaker.serve.routes import now, request_of
from cookiebaker.serve.schemas import OllamaChatRequest, OllamaOptions

router = APIRouter()


@router.get("/api/tags")
async def tags(request: Request) -> dict:
    backends = request.app.state.service.responders.backends
    return {"models": [{"name": name, "model": name, "modified_at": now(), "size": 0,
                        "digest": uuid.uuid5(uuid.NAMESPACE_URL, backend.description).hex,
                        "details": {"format": "gguf" if backend.description.startswith("gguf") else "",
                                    "family": "cookiebaker"}} for name, backend in backends.items()]}


@router.get("/api/version")
async def version() -> dict:
    from cookiebaker import __version__

    return {"version": f"cookiebaker-{__version__}"}


def _line(body: dict) -> bytes:
    return (json.dumps(body) + "\n").encode()


def _done(model: str, finish: str, usage) -> dict:  # noqa: ANN001
    body = {"model": model, "created_at": now(), "message": {"role": "assistant", "content": ""}, "done": True,
            "done_reason": finish}
    if usage is not None:
        body.update(prompt_eval_count=usage.prompt_tokens, eval_count=usage.completion_tokens)
    return body


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    service = request.app.state.service
    responders = service.responders
    body = await request_of(request, OllamaChatRequest)
    model = responders.resolve(body.model)
    problems = body.unsupported()
    if problems:
        raise HTTPProblem(400, "unsupported option(s): " + "; ".join(problems))
    messages = body.chat_messages(speakers=service.speakers == "names")
    options = body.options or OllamaOptions()
    num_predict = responders.max_tokens_limit if options.num_predict in (-1, -2) else options.num_predict
    sampling = responders.sampling(model, options.temperature, options.top_p, num_predict, options.stop, options.seed,
                                   options.frequency_penalty, options.presence_penalty)
    if not body.stream:
        completion = await responders.complete(model, messages, sampling)
        usage = completion.usage
        return JSONResponse({**_done(model, completion.finish_reason, usage),
                             "message": {"role": "assistant", "content": completion.text}})
    await responders.first_check(model)

    async def lines() -> AsyncIterator[bytes]:
        finish, usage = "stop", None
        try:
            async for piece in responders.stream(model, messages, sampling):
                if piece.text:
                    yield _line({"model": model, "created_at": now(),
                                 "message": {"role": "assistant", "content": piece.text}, "done": False})
                finish, usage = piece.finish_reason or finish, piece.usage or usage
        except HTTPProblem as exc:
            yield _line({"error": exc.message})
            return
        yield _line(_done(model, finish, usage))

    return StreamingResponse(lines(), media_type="application/x-ndjson")
