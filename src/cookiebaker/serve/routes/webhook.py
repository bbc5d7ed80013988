"""The client webhook: POST /webhook/response routes by ``sfw`` and keeps each (client, chat)'s history;
/webhook/turn stores a message without answering it (context for later replies); /webhook/forget deletes a
person's turns."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from sqlalchemy.exc import SQLAlchemyError

from cookiebaker.serve.auth import presented_key
from cookiebaker.serve.responders import NSFW, SFW, HTTPProblem
from cookiebaker.serve.routes import request_of
from cookiebaker.serve.schemas import ForgetRequest, TurnRequest, WebhookRequest

log = logging.getLogger(__name__)
router = APIRouter()


@router.post("/webhook/response")
async def webhook(request: Request) -> dict:
    service = request.app.state.service
    body = await request_of(request, WebhookRequest)
    model = service.responders.resolve(SFW if body.sfw else NSFW)
    client = body.client(presented_key(request) if service.api_key else None)
    history = await _history(service.store.recent, client, body.chat, service.history_turns)
    turn = _turn(body, service.speakers)
    shown = {k: v for k, v in turn.items() if k != "sender_id"}
    reply = (await service.responders.complete(model, [*history, shown], service.responders.sampling(model))).text.strip()
    # One transaction: the turn and its reply are stored together or not at all.
    await _history(service.store.add, client, body.chat, [turn, {"role": "assistant", "content": reply}])
    return {"response": reply, "command": "", "model": model}


@router.post("/webhook/turn")
async def turn(request: Request) -> dict:
    service = request.app.state.service
    body = await request_of(request, TurnRequest)
    client = body.client(presented_key(request) if service.api_key else None)
    await _history(service.store.add, client, body.chat, [_turn(body, service.speakers)])
    return {"stored": 1}


@router.post("/webhook/forget")
async def forget(request: Request) -> dict:
    service = request.app.state.service
    body = await request_of(request, ForgetRequest)
    client = body.client(presented_key(request) if service.api_key else None)
    deleted = await _history(service.store.forget, client, body.chat, str(body.sender_id))
    log.info("forget: %d turns deleted", deleted)
    return {"deleted": deleted}


def _turn(body: WebhookRequest, speakers: str) -> dict:
    """The user turn as stored: its speaker where the model is shown speakers, its sender id where given."""
    turn = {"role": "user", "content": body.prompt}
    if speakers == "names" and body.sender_name and body.sender_name.strip():
        turn["speaker"] = body.sender_name
    if body.sender_id is not None:
        turn["sender_id"] = str(body.sender_id)
    return turn


async def _history(call, *args):  # noqa: ANN001, ANN002, ANN202
    """A history call in a worker thread; a database that is down or restarting is a 503, not a 500."""
    try:
        return await asyncio.to_thread(call, *args)
    except SQLAlchemyError as exc:
        log.warning("history database: %s", type(exc).__name__)
        raise HTTPProblem(503, "the chat history database is not answering; try again shortly") from None
