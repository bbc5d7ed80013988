"""The bot's side of the responder service's webhook: a reply, a turn stored as context, a person forgotten."""

from __future__ import annotations

import logging
import os

import httpx

from cookiebaker.bot.policy import Incoming

log = logging.getLogger(__name__)

CLIENT_NAME = "telegram"


class ServiceDown(Exception):
    """The service did not answer, or answered with an error: no reply this time."""


class ServiceClient:
    """``cookiebaker serve``'s webhook, as the client ``telegram`` (its key from COOKIEBAKER_API_KEY)."""

    def __init__(self, url: str, timeout: float) -> None:
        key = os.environ.get("COOKIEBAKER_API_KEY")
        self.client = httpx.AsyncClient(base_url=url.rstrip("/"), timeout=httpx.Timeout(timeout, connect=10.0),
                                        headers={"Authorization": f"Bearer {key}"} if key else {})

    @staticmethod
    def _body(message: Incoming) -> dict:
        return {"prompt": message.text, "chat_id": str(message.chat_id), "client_name": CLIENT_NAME,
                "sender_name": message.sender_name, "sender_id": message.sender_id}

    async def _post(self, path: str, body: dict) -> dict:
        try:
            answer = await self.client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ServiceDown(f"the service is not answering ({type(exc).__name__})") from None
        if answer.status_code != 200:
            try:
                said = answer.json().get("error", "")
            except ValueError:
                said = ""
            raise ServiceDown(f"the service answered {answer.status_code}{f': {said}' if said else ''}")
        return answer.json()

    async def reply(self, message: Incoming, sfw: bool) -> str:
        """The responder's reply to the message (stored in the chat's history with it)."""
        return (await self._post("/webhook/response", {**self._body(message), "sfw": sfw}))["response"]

    async def store(self, message: Incoming) -> None:
        """The message in the chat's history, as context for later replies; nothing is generated."""
        await self._post("/webhook/turn", self._body(message))

    async def forget(self, chat_id: int, sender_id: str) -> int:
        """Delete the person's turns in the chat (and the replies to them); how many turns went."""
        body = {"chat_id": str(chat_id), "client_name": CLIENT_NAME, "sender_id": sender_id}
        return int((await self._post("/webhook/forget", body))["deleted"])

    async def close(self) -> None:
        await self.client.aclose()
