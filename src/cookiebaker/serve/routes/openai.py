"""OpenAI's chat API: POST /v1/chat/completions (server-sent events with "stream": true), GET /v1/models."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from cookiebaker.serve.responders import HTTPProblem
from cookiebaker.serve.routes import request_of
from cookiebaker.serve.schemas import OpenAIChatRequest

router = APIRouter()


@router.get("/v1/models")
async def models(request: Request) -> dict:
    return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "cookiebaker"}
                                       for name in request.app.state.service.responders.backends]}


@router.post("/v1/chat/completions")
async def chat(request: Request) -> Response:
    responders = request.app.state.service.responders
    body = await request_of(request, OpenAIChatRequest)
    model = responders.resolve(body.model)
    messages = body.chat_messages(speakers=request.app.state.service.speakers == "names")
    sampling = responders.sampling(model, body.temperature, body.top_p, body.max_completion_tokens or body.max_tokens,
                                   body.stop, body.seed)
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if not body.stream:
        reply = await responders.complete(model, messages, sampling)
        return JSONResponse({"id": completion_id, "object": "chat.completion", "created": created, "model": model,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                          "finish_reason": "stop"}]})
    await responders.first_check(model)

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
