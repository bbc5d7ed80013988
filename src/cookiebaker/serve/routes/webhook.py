"""POST /webhook/response: the client webhook. Routes by ``sfw`` and keeps each (client, chat)'s history."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from cookiebaker.serve.responders import NSFW, SFW, HTTPProblem
from cookiebaker.serve.routes import body_of

router = APIRouter()


def _webhook_fields(data: dict) -> tuple[str, str, bool, str]:
    prompt, chat_id = data.get("prompt"), data.get("chat_id")
    if not isinstance(prompt, str) or not prompt.strip():
        raise HTTPProblem(422, "'prompt' must be a non-empty string")
    if not isinstance(chat_id, (str, int)) or isinstance(chat_id, bool) or str(chat_id) == "":
        raise HTTPProblem(422, "'chat_id' must be a string or a number")
    sfw = data.get("sfw", True)
    if not isinstance(sfw, bool):
        raise HTTPProblem(422, "'sfw' must be true or false")
    return prompt, str(chat_id), sfw, str(data.get("client_name") or "default")


@router.post("/webhook/response")
async def webhook(request: Request) -> dict:
    service = request.app.state.service
    prompt, chat_id, sfw, client = _webhook_fields(await body_of(request))
    model = service.responders.resolve(SFW if sfw else NSFW)
    history = await asyncio.to_thread(service.store.recent, client, chat_id, service.history_turns)
    messages = [*history, {"role": "user", "content": prompt}]
    reply = (await service.responders.complete(model, messages, service.responders.sampling(model))).strip()
    await asyncio.to_thread(service.store.add, client, chat_id,
                            [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}])
    return {"response": reply, "command": "", "model": model}
