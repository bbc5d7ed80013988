"""POST /webhook/response: the client webhook. Routes by ``sfw`` and keeps each (client, chat)'s history."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from cookiebaker.serve.responders import NSFW, SFW
from cookiebaker.serve.routes import request_of
from cookiebaker.serve.schemas import WebhookRequest

router = APIRouter()


@router.post("/webhook/response")
async def webhook(request: Request) -> dict:
    service = request.app.state.service
    body = await request_of(request, WebhookRequest)
    model = service.responders.resolve(SFW if body.sfw else NSFW)
    history = await asyncio.to_thread(service.store.recent, body.client, body.chat, service.history_turns)
    messages = [*history, {"role": "user", "content": body.prompt}]
    reply = (await service.responders.complete(model, messages, service.responders.sampling(model))).strip()
    await asyncio.to_thread(service.store.add, body.client, body.chat,
                            [{"role": "user", "content": body.prompt}, {"role": "assistant", "content": reply}])
    return {"response": reply, "command": "", "model": model}
