"""A GGUF served in this process by llama-cpp-python, the engine Ollama uses."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from cookiebaker.backends.base import Backend, Chunk, Sampling, Usage, by_prompt, iterate_in_thread, with_system
from cookiebaker.quality import Reply


class LlamaCppBackend(Backend):
    """A GGUF in llama.cpp: serving, token counting, batched replies and scoring (a context of its own)."""

    penalties = True

    def __init__(self, gguf: Path, sampling: Sampling, n_ctx: int = 4096) -> None:
        from cookiebaker.chat import supports_system_role
        from cookiebaker.gguf_scoring import chat_template_of, load_gguf

        super().__init__(sampling)
        self.description = f"gguf:{gguf.name}"
        self.gguf = gguf
        self.llm = load_gguf(gguf, n_ctx=n_ctx, n_threads=os.cpu_count() or 2)
        self.lock = threading.Lock()  # one generation at a time per model: llama.cpp contexts are not thread-safe
        self.context_length = self.llm.n_ctx()
        self.template = chat_template_of(self.llm)  # to count a prompt's tokens as llama.cpp renders it
        if self.template is not None:
            self.system_role = supports_system_role(self.template)
        self._scorer = None

    def prompt_tokens(self, messages: list[dict], sampling: Sampling) -> int:
        prepared = self.prepare(messages, sampling)
        if self.template is None:  # the chat handler's markup: a few tokens per message
            return sum(len(self._tokens(m["content"])) + 8 for m in prepared) + 8
        return len(self._tokens(self.template.apply_chat_template(prepared, add_generation_prompt=True)))

    def _tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def text_tokens(self, text: str) -> int:
        return len(self._tokens(text))

    def _request(self, messages: list[dict], sampling: Sampling, stream: bool) -> dict:
        return {"messages": self.prepare(messages, sampling), "temperature": sampling.temperature,
                "top_p": sampling.top_p, "stop": sampling.stop or None, "max_tokens": sampling.max_tokens,
                "seed": sampling.seed, "stream": stream, "frequency_penalty": sampling.frequency_penalty,
                "presence_penalty": sampling.presence_penalty}

    def reply(self, messages: list[dict], sampling: Sampling) -> Reply:
        with self.lock:
            choice = self.llm.create_chat_completion(**self._request(messages, sampling, False))["choices"][0]
        return Reply(choice["message"].get("content") or "", choice.get("finish_reason"))

    def replies(self, conversations: list[list[dict]], sampling: Sampling) -> list[Reply]:
        """Several replies at once: the same engine, template and sampler chain as ``reply``, the conversations
        decoded side by side (``GgufScorer.replies``)."""
        scorer = self._scorer_for(self.context_length or 4096)
        with self.lock:
            answers = scorer.replies([self.prepare(messages, sampling) for messages in conversations], sampling)
        return [Reply(text, finish) for text, finish in answers]

    def score(self, conversations: list[list[dict]], max_length: int) -> list[tuple[float, int]]:
        return [self._scorer_for(max_length).score(with_system(messages, self.default)) for messages in conversations]

    def score_replies(self, prompts: list[list[dict]], requests: list[tuple[int, str]], max_length: int,
                      reply_tokens: int | None = None) -> list[float]:
        scorer = self._scorer_for(max_length)
        scores = [0.0] * len(requests)
        for prompt, members in by_prompt(requests).items():
            values = scorer.score_replies(with_system(prompts[prompt], self.default), [text for _, text in members],
                                          reply_tokens)
            for (index, _), value in zip(members, values):
                scores[index] = value
        return scores

    def _scorer_for(self, max_length: int):  # noqa: ANN202
        from cookiebaker.gguf_scoring import GgufScorer

        if self._scorer is None:  # a context of its own, with several sequences (serving's has one)
            self._scorer = GgufScorer(self.gguf, n_ctx=max_length)
        return self._scorer

    def stream(self, messages: list[dict], sampling: Sampling) -> AsyncIterator[Chunk]:
        def generate(stop: threading.Event) -> Iterator[Chunk]:
            with self.lock:
                if stop.is_set():  # the client left while this waited for the model
                    return
                prompt = self.prompt_tokens(messages, sampling)
                chunks = self.llm.create_chat_completion(**self._request(messages, sampling, True))
                texts = []
                try:
                    for chunk in chunks:
                        choice = chunk["choices"][0]
                        piece = choice["delta"].get("content") or ""
                        texts.append(piece)
                        finish = choice.get("finish_reason")
                        if finish:
                            # The context holds the prompt and every reply token but the last one sampled (which
                            # is evaluated only if generation goes on; an end-of-turn token is not a reply token).
                            completion = max(0, self.llm.n_tokens - prompt + (finish == "length"))
                            yield Chunk(piece, finish, Usage(prompt, completion))
                            return
                        if piece:
                            yield Chunk(piece)
                        if stop.is_set():
                            return
                finally:
                    chunks.close()  # ends llama.cpp's generation loop

        return iterate_in_thread(generate)  # closing it ends the generation

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.close()
        self.llm.close()
