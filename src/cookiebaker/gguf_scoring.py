"""Response-only loss of a GGUF in llama.cpp (llama-cpp-python, Ollama's engine), rendered with the chat
template stored in the GGUF, as serving renders it.

The assistant turns' tokens (each with the end-of-turn markup after it) are scored, as ``train`` does with
transformers; a too-long sample keeps its first token and its end, as in training.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cookiebaker.chat import normalize, supports_system_role
from cookiebaker.errors import ModelError


class ChatTemplate:
    """The GGUF's chat template with the ``apply_chat_template`` call that ``chat.supports_system_role`` uses."""

    def __init__(self, template: str, eos: str, bos: str) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.prompt = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos, add_generation_prompt=True)
        self.plain = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos, add_generation_prompt=False)

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False,
                            add_generation_prompt: bool = False) -> str:
        render = self.prompt if add_generation_prompt else self.plain
        return render(messages=messages).prompt


def chat_template_of(llm) -> ChatTemplate | None:  # noqa: ANN001
    """A loaded GGUF's own chat template (None: the GGUF has none)."""
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    text_of = llm._model.token_get_text
    return ChatTemplate(template, eos=text_of(llm.token_eos()), bos=text_of(llm.token_bos()))


class GgufScorer:
    def __init__(self, gguf: Path, n_ctx: int = 1024) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, logits_all=True, n_threads=os.cpu_count() or 2,
                         verbose=False)
        self.template = chat_template_of(self.llm)
        if self.template is None:
            raise ModelError(f"{gguf} has no chat template: cannot render samples to score them")
        self.system_role = supports_system_role(self.template)
        self.n_ctx = n_ctx

    def _tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _labelled(self, messages: list[dict]) -> tuple[list[int], list[bool]]:
        """Token ids of the rendered conversation and, per position, whether it is an answer token."""
        full = self._tokens(self.template.apply_chat_template(messages))
        labelled = [False] * len(full)
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = len(self._tokens(self.template.apply_chat_template(messages[:index], add_generation_prompt=True)))
            upto = self._tokens(self.template.apply_chat_template(messages[: index + 1]))
            if full[: len(upto)] != upto:
                raise ModelError("the GGUF's chat template does not render conversations as growing prefixes; "
                                 "cannot tell the answer's tokens apart")
            for position in range(start, len(upto)):
                labelled[position] = True
        return full, labelled

    def score(self, messages: list[dict]) -> tuple[float, int]:
        """Summed negative log-likelihood of the answer tokens, and their count."""
        ids, labelled = self._labelled(normalize(messages, self.system_role))
        if len(ids) > self.n_ctx:  # as training truncates: the first token and the end
            keep = self.n_ctx - 1
            ids, labelled = ids[:1] + ids[-keep:], [False] + labelled[-keep:]
        self.llm.reset()
        self.llm.eval(ids)
        logits = np.asarray(self.llm.scores[: len(ids)], dtype=np.float64)
        positions = np.array([p for p in range(1, len(ids)) if labelled[p]], dtype=np.int64)
        if positions.size == 0:
            return 0.0, 0
        rows = logits[positions - 1]
        top = rows.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(rows - top).sum(axis=1)) + top[:, 0]
        targets = rows[np.arange(len(positions)), np.asarray(ids)[positions]]
        return float((log_norm - targets).sum()), int(positions.size)
