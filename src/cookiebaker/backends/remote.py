"""Any engine with OpenAI's chat API (vLLM, SGLang, llama.cpp's server, llama-cpp-python's server, ...):
``openai:http://host:8000/v1#model-name``, its key from ``COOKIEBAKER_ENGINE_API_KEY`` (or ``OPENAI_API_KEY``).

Replies stream over server-sent events; closing the stream closes the request, so the engine stops generating. A
prompt is fitted to the context where the engine says how it tokenizes (vLLM's ``/tokenize`` counts a chat's tokens
and gives the context's length); elsewhere the engine fits it (the log says which). Scores (eval's loss and 1-of-8
tests) need the prompt's log-probabilities, which vLLM returns (``prompt_logprobs``); other engines give none.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator

from cookiebaker.backends.base import (
    Backend,
    BackendUnavailable,
    Chunk,
    Completion,
    Sampling,
    Usage,
    by_prompt,
    with_system,
)
from cookiebaker.errors import ConfigError, ModelError
from cookiebaker.quality import Reply

log = logging.getLogger(__name__)

PREFIX = "openai:"
KEY_VARIABLES = ("COOKIEBAKER_ENGINE_API_KEY", "OPENAI_API_KEY")


def parse_reference(reference: str) -> tuple[str, str]:
    """``openai:http://host:8000/v1#model`` → (the API's base URL, the model's name)."""
    url, _, model = reference.removeprefix(PREFIX).partition("#")
    if not url.startswith(("http://", "https://")) or not model:
        raise ConfigError(f"model '{reference}' is no engine reference: write openai:http://HOST:PORT/v1#MODEL")
    return url.rstrip("/"), model


class OpenAIBackend(Backend):
    """A model behind an engine's OpenAI-compatible chat API."""

    penalties = True

    def __init__(self, reference: str, sampling: Sampling | None = None, timeout: float = 300) -> None:
        import httpx

        super().__init__(sampling)
        self.base, self.model = parse_reference(reference)
        self.description = f"openai:{self.model}@{self.base}"
        key = next((os.environ[name] for name in KEY_VARIABLES if os.environ.get(name)), None)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = httpx.Timeout(timeout, connect=10.0)
        self.client = httpx.AsyncClient(timeout=self.timeout, headers=self.headers)
        self.root = self.base.removesuffix("/v1")
        self.tokenizes: str | None = None  # "chat" (vLLM), "text" (llama.cpp's), or None: the engine fits
        self._probe()

    def _probe(self) -> None:
        """What the engine offers: vLLM's /tokenize (a chat's tokens and the context's length), llama.cpp's
        /extras/tokenize (a text's), or neither."""
        import httpx

        probe = [{"role": "user", "content": "x"}]
        try:
            answer = httpx.post(f"{self.root}/tokenize", json={"model": self.model, "messages": probe},
                                headers=self.headers, timeout=10)
            if answer.status_code == 200 and "count" in answer.json():
                self.tokenizes = "chat"
                self.context_length = answer.json().get("max_model_len")
            else:
                answer = httpx.post(f"{self.root}/extras/tokenize", json={"input": "x"}, headers=self.headers,
                                    timeout=10)
                if answer.status_code == 200 and "tokens" in answer.json():
                    self.tokenizes = "text"
        except (httpx.HTTPError, ValueError):
            pass
        if self.tokenizes == "chat" and self.context_length:
            log.info("%s: prompts are fitted to its context of %d tokens (its /tokenize)", self.description,
                     self.context_length)
        else:
            log.info("%s: the engine says no context length, so it fits prompts itself", self.description)

    def prompt_tokens(self, messages: list[dict], sampling: Sampling) -> int:
        import httpx

        answer = httpx.post(f"{self.root}/tokenize", headers=self.headers, timeout=self.timeout,
                            json={"model": self.model, "messages": self.prepare(messages, sampling),
                                  "add_generation_prompt": True})
        answer.raise_for_status()
        return int(answer.json()["count"])

    def counts_tokens(self) -> bool:
        return self.tokenizes == "chat"

    def text_tokens(self, text: str) -> int:
        import httpx

        if self.tokenizes is None:
            raise NotImplementedError
        if self.tokenizes == "chat":
            answer = httpx.post(f"{self.root}/tokenize", json={"model": self.model, "prompt": text,
                                                               "add_special_tokens": False},
                                headers=self.headers, timeout=self.timeout)
            answer.raise_for_status()
            return int(answer.json()["count"])
        answer = httpx.post(f"{self.root}/extras/tokenize", json={"input": text}, headers=self.headers,
                            timeout=self.timeout)
        answer.raise_for_status()
        return len(answer.json()["tokens"])

    def prepare(self, messages: list[dict], sampling: Sampling) -> list[dict]:
        """Speakers rendered and turns of one role merged, as in training; the export's system prompt added (the
        engine knows no Modelfile)."""
        from cookiebaker.chat import normalize

        return normalize(with_system(messages, sampling), system_role=True)

    def _body(self, messages: list[dict], sampling: Sampling, stream: bool) -> dict:
        body = {"model": self.model, "messages": self.prepare(messages, sampling), "stream": stream,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}
        if sampling.stop:
            body["stop"] = sampling.stop
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.penalized:
            body.update(frequency_penalty=sampling.frequency_penalty, presence_penalty=sampling.presence_penalty)
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    async def stream(self, messages: list[dict], sampling: Sampling) -> AsyncIterator[Chunk]:
        import httpx

        finish, usage = None, None
        try:
            async with self.client.stream("POST", f"{self.base}/chat/completions",
                                          json=self._body(messages, sampling, True)) as response:
                await _raise_for(response, self.description)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line.removeprefix("data:").strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if event.get("usage"):
                        usage = Usage(event["usage"]["prompt_tokens"], event["usage"]["completion_tokens"])
                    for choice in event.get("choices") or []:
                        finish = choice.get("finish_reason") or finish
                        piece = (choice.get("delta") or {}).get("content") or ""
                        if piece:
                            yield Chunk(piece)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"{self.description} is not answering ({type(exc).__name__})") from None
        yield Chunk("", finish or "stop", usage)

    async def complete(self, messages: list[dict], sampling: Sampling) -> Completion:
        """The engine's own non-streamed answer: its finish reason and usage."""
        import httpx

        try:
            answer = await self.client.post(f"{self.base}/chat/completions", json=self._body(messages, sampling, False))
            await _raise_for(answer, self.description)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"{self.description} is not answering ({type(exc).__name__})") from None
        body = answer.json()
        choice, usage = body["choices"][0], body.get("usage")
        return Completion(choice["message"].get("content") or "", choice.get("finish_reason") or "stop",
                          Usage(usage["prompt_tokens"], usage["completion_tokens"]) if usage else None)

    def reply(self, messages: list[dict], sampling: Sampling) -> Reply:
        import httpx

        try:
            answer = httpx.post(f"{self.base}/chat/completions", json=self._body(messages, sampling, False),
                                headers=self.headers, timeout=self.timeout)
            answer.raise_for_status()
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"{self.description} did not answer ({type(exc).__name__})") from None
        choice = answer.json()["choices"][0]
        return Reply(choice["message"].get("content") or "", choice.get("finish_reason"))

    async def check(self) -> None:
        import httpx

        try:
            (await self.client.get(f"{self.base}/models")).raise_for_status()
        except httpx.HTTPError:
            raise BackendUnavailable(f"{self.description} is not answering") from None

    # ---- Scores: vLLM's prompt log-probabilities of token prompts ----

    def _tokens(self, messages: list[dict], generation_prompt: bool) -> list[int]:
        import httpx

        answer = httpx.post(f"{self.root}/tokenize", headers=self.headers, timeout=self.timeout,
                            json={"model": self.model, "messages": messages, "add_generation_prompt": generation_prompt,
                                  "continue_final_message": False})
        answer.raise_for_status()
        return answer.json()["tokens"]

    def _prompt_logprobs(self, tokens: list[int]) -> list[float]:
        import httpx

        answer = httpx.post(f"{self.base}/completions", headers=self.headers, timeout=self.timeout,
                            json={"model": self.model, "prompt": tokens, "max_tokens": 1, "prompt_logprobs": 0})
        answer.raise_for_status()
        rows = answer.json()["choices"][0].get("prompt_logprobs")
        if not rows:
            raise ModelError("no loss from this engine: it returns no prompt log-probabilities")
        return [0.0 if row is None else float(row[str(token)]["logprob"]) for row, token in zip(rows, tokens)]

    def _require_scores(self) -> None:
        if self.tokenizes != "chat":
            raise ModelError(f"no loss from {self.description}: scores need the prompt's log-probabilities, which "
                             "this engine does not return (vLLM does)")

    def score(self, conversations: list[list[dict]], max_length: int) -> list[tuple[float, int]]:
        self._require_scores()
        results = []
        for messages in conversations:
            prepared = self.prepare(messages, self.default)
            full = self._tokens(prepared, False)
            logprobs = self._prompt_logprobs(full)
            total, count = 0.0, 0
            for index, message in enumerate(prepared):
                if message["role"] != "assistant":
                    continue
                start = len(self._tokens(prepared[:index], True))
                end = len(self._tokens(prepared[: index + 1], False))
                total -= sum(logprobs[start:end])
                count += end - start
            results.append((total, count))
        return results

    def score_replies(self, prompts: list[list[dict]], requests: list[tuple[int, str]], max_length: int,
                      reply_tokens: int | None = None) -> list[float]:
        self._require_scores()
        scores = [0.0] * len(requests)
        for prompt, members in by_prompt(requests).items():
            prepared = self.prepare(prompts[prompt], self.default)
            start = len(self._tokens(prepared, True))
            for index, text in members:
                full = self._tokens([*prepared, {"role": "assistant", "content": text}], False)
                end = len(full) if reply_tokens is None else min(len(full), start + reply_tokens)
                scores[index] = sum(self._prompt_logprobs(full)[start:end])
        return scores

    def close(self) -> None:
        try:
            asyncio.get_running_loop().create_task(self.client.aclose())
        except RuntimeError:
            pass


async def _raise_for(response, description: str) -> None:  # noqa: ANN001
    """An engine's refusal as the service says it: a missing model or an engine in trouble is unavailable."""
    if response.status_code < 400:
        return
    body = (await response.aread())[:300].decode("utf-8", errors="replace")
    if response.status_code in (404, 502, 503, 504) or response.status_code >= 500:
        raise BackendUnavailable(f"{description} answered {response.status_code}: {body}")
    raise ModelError(f"{description} refused the request ({response.status_code}): {body}")
