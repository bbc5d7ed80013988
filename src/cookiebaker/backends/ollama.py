"""A model in an Ollama server (``OLLAMA_HOST``), through its chat API."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

from cookiebaker.backends.base import Backend, BackendUnavailable, Chunk, Sampling, Usage, with_system
from cookiebaker.quality import Reply


class OllamaBackend(Backend):
    """Ollama renders with the model's own template and Modelfile (and fits its context itself)."""

    penalties = True

    def __init__(self, name: str, sampling: Sampling, host: str | None = None, timeout: float = 300) -> None:
        import httpx

        super().__init__(sampling)
        host = host or os.environ.get("OLLAMA_HOST") or "http://127.0.0.1:11434"
        self.host = host if host.startswith("http") else f"http://{host}"
        self.name = name
        self.description = f"ollama:{name}"
        self.client = httpx.AsyncClient(base_url=self.host, timeout=timeout)

    def prepare(self, messages: list[dict], sampling: Sampling) -> list[dict]:
        """Speakers rendered and turns of one role merged, as training rendered them; the system prompt is the
        Modelfile's (Ollama adds it)."""
        from cookiebaker.chat import normalize

        return normalize(messages, system_role=True)

    @staticmethod
    def _options(sampling: Sampling) -> dict:
        options = {"temperature": sampling.temperature, "top_p": sampling.top_p, "num_predict": sampling.max_tokens}
        if sampling.stop:
            options["stop"] = sampling.stop
        if sampling.seed is not None:
            options["seed"] = sampling.seed
        if sampling.penalized:
            options.update(frequency_penalty=sampling.frequency_penalty, presence_penalty=sampling.presence_penalty)
        return options

    async def stream(self, messages: list[dict], sampling: Sampling) -> AsyncIterator[Chunk]:
        import httpx

        body = {"model": self.name, "messages": self.prepare(messages, sampling), "stream": True,
                "options": self._options(sampling)}
        try:
            async with self.client.stream("POST", "/api/chat", json=body) as response:
                if response.status_code == 404:
                    raise BackendUnavailable(f"Ollama at {self.host} has no model {self.name}")
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    piece = event.get("message", {}).get("content") or ""
                    if event.get("done"):
                        yield Chunk(piece, event.get("done_reason") or "stop", _usage(event))
                        return
                    if piece:
                        yield Chunk(piece)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"Ollama at {self.host} is not answering ({type(exc).__name__})") from None

    def reply(self, messages: list[dict], sampling: Sampling) -> Reply:
        import httpx

        body = {"model": self.name, "messages": self.prepare(with_system(messages, sampling), sampling),
                "stream": False, "options": self._options(sampling)}
        try:
            response = httpx.post(f"{self.host}/api/chat", json=body, timeout=self.client.timeout)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"Ollama at {self.host} did not answer ({type(exc).__name__})") from None
        answer = response.json()
        return Reply(answer.get("message", {}).get("content", ""), answer.get("done_reason"))

    async def check(self) -> None:
        import httpx

        try:
            (await self.client.get("/api/version")).raise_for_status()
        except httpx.HTTPError:
            raise BackendUnavailable(f"Ollama at {self.host} is not answering") from None


def _usage(event: dict) -> Usage | None:
    prompt, completion = event.get("prompt_eval_count"), event.get("eval_count")
    return Usage(int(prompt), int(completion)) if isinstance(prompt, int) and isinstance(completion, int) else None
