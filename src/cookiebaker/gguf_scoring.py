"""Log-likelihoods from a GGUF in llama.cpp (llama-cpp-python, Ollama's engine), rendered with the chat template
stored in the GGUF, as serving renders it.

Two questions are asked of a model: the response-only loss of a conversation (its assistant turns' tokens, each
with the end-of-turn markup after it, as ``train`` scores them with transformers; a too-long sample keeps its first
token and its end, as in training), and the log-likelihood of several replies after one prompt. The second is what
eval's 1-of-8 measures ask thousands of times: the prompt is decoded once and every reply continues it as a
sequence of its own in the same batch, sharing the prompt's cache (``llama_memory_seq_cp``), so a prompt with 24
candidate replies costs one decode of the prompt and one of the replies together.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cookiebaker.chat import normalize, supports_system_role
from cookiebaker.errors import ModelError

#: Sequences decoded side by side in one batch (the prompt is sequence 0).
PARALLEL_SEQUENCES = 32
#: Tokens per decode call.
BATCH_TOKENS = 512


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


def log_probs(logits: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """Per row of ``logits``, the log-probability of that row's target token."""
    top = logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(axis=1, dtype=np.float64)) + top[:, 0]
    return logits[np.arange(len(targets)), np.asarray(targets)] - log_norm


class _Context:
    """A llama.cpp context of its own on the loaded model: several sequences, one cache shared between them."""

    def __init__(self, llm, n_ctx: int) -> None:  # noqa: ANN001
        import llama_cpp

        self.api = llama_cpp
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = BATCH_TOKENS
        params.n_seq_max = min(PARALLEL_SEQUENCES, llama_cpp.llama_max_parallel_sequences())
        params.kv_unified = True  # one cache: a sequence copied from the prompt shares its cells
        params.swa_full = True  # sliding-window models (Gemma-2) keep every cell, so copies see the whole prompt
        params.n_threads = params.n_threads_batch = os.cpu_count() or 2
        params.no_perf = True
        self.n_seq = params.n_seq_max
        self.ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
        if not self.ctx:
            raise ModelError("llama.cpp could not create a scoring context")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(BATCH_TOKENS, 0, self.n_seq)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llm._model.model))

    def close(self) -> None:
        if self.ctx:
            self.api.llama_batch_free(self.batch)
            self.api.llama_free(self.ctx)
            self.ctx = None

    def __del__(self) -> None:
        self.close()

    def decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> np.ndarray:
        """Decode (token, position, sequence, wants logits) entries, at most BATCH_TOKENS. The logits of the entries
        that want them, in order: a view of llama.cpp's buffer, valid until the next decode."""
        batch = self.batch
        batch.n_tokens = len(entries)
        for index, (token, position, sequence, logits) in enumerate(entries):
            batch.token[index] = token
            batch.pos[index] = position
            batch.n_seq_id[index] = 1
            batch.seq_id[index][0] = sequence
            batch.logits[index] = logits
        status = self.api.llama_decode(self.ctx, batch)
        if status != 0:
            raise ModelError(f"llama.cpp could not decode a scoring batch (status {status})")
        wanted = sum(1 for entry in entries if entry[3])
        return np.ctypeslib.as_array(self.api.llama_get_logits(self.ctx), shape=(wanted, self.n_vocab))

    def prompt(self, tokens: list[int], targets: dict[int, int]) -> dict[int, float]:
        """Decode ``tokens`` as sequence 0 from an empty cache: the log-probability of ``targets[p]`` after the
        tokens up to position ``p`` (``p`` at most the last position), for every ``p`` in ``targets``."""
        self.api.llama_memory_clear(self.memory, True)
        found: dict[int, float] = {}
        for start in range(0, len(tokens), BATCH_TOKENS):
            chunk = [(token, start + i, 0, start + i in targets)
                     for i, token in enumerate(tokens[start:start + BATCH_TOKENS])]
            positions = [position for _, position, _, wanted in chunk if wanted]
            if positions or start + BATCH_TOKENS >= len(tokens):
                values = log_probs(self.decode(chunk), [targets[p] for p in positions]) if positions else []
                found.update(zip(positions, map(float, values)))
            else:
                self.decode(chunk)
        return found

    def last_row(self, tokens: list[int]) -> np.ndarray:
        """Decode ``tokens`` as sequence 0 from an empty cache: the log-probabilities of the next token."""
        self.api.llama_memory_clear(self.memory, True)
        rows = None
        for start in range(0, len(tokens), BATCH_TOKENS):
            chunk = tokens[start:start + BATCH_TOKENS]
            last = start + len(chunk) == len(tokens)
            rows = self.decode([(token, start + i, 0, last and i == len(chunk) - 1) for i, token in enumerate(chunk)])
        row = rows[0].astype(np.float64)
        return row - (np.log(np.exp(row - row.max()).sum()) + row.max())

    def continuations(self, length: int, first: np.ndarray, continuations: list[list[int]]) -> list[float]:
        """The summed log-probability of each continuation of the prompt of ``length`` tokens in sequence 0, whose
        next-token log-probabilities are ``first``. The continuations are decoded side by side as sequences of their
        own, each but its last token (whose logits nothing needs)."""
        totals = [float(first[tokens[0]]) for tokens in continuations]
        pending = [which for which, tokens in enumerate(continuations) if len(tokens) > 1]
        while pending:
            group, size = [], 0
            while pending and len(group) < self.n_seq - 1 and size + len(continuations[pending[0]]) - 1 <= BATCH_TOKENS:
                size += len(continuations[pending[0]]) - 1
                group.append(pending.pop(0))
            if not group:
                raise ModelError(f"a reply of over {BATCH_TOKENS} tokens cannot be scored")
            entries, targets = [], []
            for sequence, which in enumerate(group, start=1):
                tokens = continuations[which]
                self.api.llama_memory_seq_rm(self.memory, sequence, -1, -1)
                self.api.llama_memory_seq_cp(self.memory, 0, sequence, 0, length)
                entries += [(token, length + i, sequence, True) for i, token in enumerate(tokens[:-1])]
                targets += tokens[1:]
            values = log_probs(self.decode(entries), targets)
            offset = 0
            for which in group:
                count = len(continuations[which]) - 1
                totals[which] += float(values[offset:offset + count].sum())
                offset += count
        for sequence in range(1, self.n_seq):
            self.api.llama_memory_seq_rm(self.memory, sequence, -1, -1)
        return totals


class GgufScorer:
    def __init__(self, gguf: Path, n_ctx: int = 1024) -> None:
        from llama_cpp import Llama

        # The Llama object loads the weights (memory-mapped) and holds the tokenizer and template; scoring runs on a
        # context of its own, room for the longest prompt and a batch of replies.
        self.llm = Llama(model_path=str(gguf), n_ctx=256, n_threads=os.cpu_count() or 2, verbose=False)
        self.template = chat_template_of(self.llm)
        if self.template is None:
            raise ModelError(f"{gguf} has no chat template: cannot render samples to score them")
        self.system_role = supports_system_role(self.template)
        self.n_ctx = n_ctx
        self.context = _Context(self.llm, n_ctx + BATCH_TOKENS)

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
        positions = [p for p in range(1, len(ids)) if labelled[p]]
        if not positions:
            return 0.0, 0
        found = self.context.prompt(ids, {p - 1: ids[p] for p in positions})
        return -sum(found.values()), len(positions)

    def score_replies(self, messages: list[dict], replies: Sequence[str]) -> list[float]:
        """The log-likelihood of each reply (its tokens and the end-of-turn markup) as the assistant's answer to
        ``messages``: the prompt decoded once, the replies side by side after it."""
        prepared = normalize(messages, self.system_role)
        prompt = self._tokens(self.template.apply_chat_template(prepared, add_generation_prompt=True))
        continuations = []
        for reply in replies:
            full = self._tokens(self.template.apply_chat_template([*prepared, {"role": "assistant", "content": reply}]))
            if full[: len(prompt)] != prompt:
                raise ModelError("the GGUF's chat template does not render a reply as a continuation of its prompt")
            continuations.append(full[len(prompt):])
        room = self.n_ctx - max((len(c) for c in continuations), default=0)
        if len(prompt) > room:  # as training truncates: the first token and the end
            prompt = prompt[:1] + prompt[-(room - 1):]
        return self.context.continuations(len(prompt), self.context.last_row(prompt), continuations)

    def close(self) -> None:
        self.context.close()
        self.llm.close()
