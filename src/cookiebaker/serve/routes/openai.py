"""OpenAI's chat API: POST /v1/chat/completions (server-sent events with "stream": true), GET /v1/models."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from cookiebaker.backends import Usage
from cookiebaker.serve.responders import HTTPProblem
from cookiebaker.serve.routes import request_of
from cookiebaker.serve.schemas import OpenAIChatRequest

router = APIRouter()


@router.get("/v1/models")
async def models(request: Request) -> dict:
    return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "cookiebaker"}
                                       for name in request.app.state.service.responders.backends]}


def _usage(usage: Usage | None) -> dict | None:
    if usage is None:
        return None
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


@router.post("/v1/chat/completions")
async def chat(request: Request) -> Response:
    service = request.app.state.service
    responders = service.responders
    body = await request_of(request, OpenAIChatRequest)
    model = responders.resolve(body.model)
    problems = body.unsupported()
    if problems:
        raise HTTPProblem(400, "unsupported option(s): " + "; ".join(problems))
    messages = body.chat_messages(speakers=service.speakers == "names")
    sampling = responders.sampling(model, body.temperature, body.top_p, body.max_completion_tokens or body.max_tokens,
                                   body.stop, body.seed, body.frequency_penalty, body.presence_penalty)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    if include_usage and not responders.backends[model].counts_tokens():
        raise HTTPProblem(400, f"unsupported option(s): 'stream_options.include_usage' ({model}'s backend counts "
                               "no tokens)")
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if not body.stream:
        completion = await responders.complete(model, messages, sampling)
        usage = completion.usage
        answer = {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                               "finish_reason": completion.finish_reason}]}
        if usage is not None:
            answer["usage"] = _usage(usage)
        return JSONResponse(answer)
    await responders.first_check(model)

    def chunk(delta: dict, finish: str | None) -> bytes:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n".encode()

    async def events() -> AsyncIterator[bytes]:
        yield chunk({"role": "assistant", "content": ""}, None)
        finish, usage = "stop", None
        try:
            async for piece in responders.stream(model, messages, sampling):
                if piece.text:
                    yield chunk({"content": piece.text}, None)
                finish, usage = piece.finish_reason or finish, piece.usage or usage
        except HTTPProblem as exc:
            yield f"data: {json.dumps({'error': {'message': exc.message}})}\n\n".encode()
            return
        yield chunk({}, finish)
        if include_usage:
            final = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [], "usage": _usage(usage)}
            yield f"data: {json.dumps(final)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
