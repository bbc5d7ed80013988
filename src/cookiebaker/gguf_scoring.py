"""Log-likelihoods and batches of replies from a GGUF in llama.cpp (llama-cpp-python, Ollama's engine), rendered
with the chat template stored in the GGUF, as serving renders it.

Two questions are asked of a model: the response-only loss of a conversation (its assistant turns' tokens, each
with the end-of-turn markup after it, as ``train`` scores them with transformers; a too-long sample keeps its first
token and its end, as in training), and the log-likelihood of several replies after one prompt. The second is what
eval's 1-of-8 measures ask thousands of times: the prompt is decoded once and every reply continues it as a
sequence of its own in the same batch, sharing the prompt's cache (``llama_memory_seq_cp``), so a prompt with 24
candidate replies costs one decode of the prompt and one of the replies together. Eval's replies are generated the
same way: up to 32 prompts side by side, each with its own llama.cpp sampler chain, the one llama-cpp-python's
chat completion builds (top-k 40, typical 1, top-p, min-p 0.05, temperature, a seeded draw), so a batch costs little
more than one reply.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cookiebaker.chat import normalize, supports_system_role
from cookiebaker.errors import ModelError

#: Sequences decoded side by side in one batch (the prompt is sequence 0).
PARALLEL_SEQUENCES = 32
#: Tokens per decode call.
BATCH_TOKENS = 512
#: The scoring context's cells: the longest prompt with a batch of replies, or several prompts generating together.
CONTEXT_CELLS = 4096
#: llama-cpp-python's chat completion defaults, which serving uses (and so eval's batched replies).
TOP_K, MIN_P, TYPICAL_P = 40, 0.05, 1.0


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


#: What every GGUF file begins with.
GGUF_MAGIC = b"GGUF"


def load_gguf(path: Path, **options):  # noqa: ANN003, ANN201
    """A GGUF in llama-cpp-python; a file that is no GGUF, or one llama.cpp cannot load (truncated, damaged), is a
    ModelError naming the file in one line."""
    from llama_cpp import Llama

    from cookiebaker.errors import shown

    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise ModelError(f"{shown(path)}: cannot read the model: {exc.strerror or exc}") from None
    if head != GGUF_MAGIC:
        raise ModelError(f"{shown(path)}: not a GGUF file (it does not begin with GGUF)")
    try:
        return Llama(model_path=str(path), verbose=False, **options)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelError(f"{shown(path)}: llama.cpp cannot load this GGUF ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                         "it may be truncated or damaged: export it again") from None


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

    def generate(self, prompts: list[list[int]], make_sampler, max_tokens: int, ended,  # noqa: ANN001
                 stopped) -> list[tuple[list[int], str]]:
        """Replies to the token prompts, several side by side (as many as the cells hold): per reply its tokens and
        ``stop`` (``ended(token)``, or ``stopped(tokens)`` saying a stop string appeared) or ``length``."""
        results: list[tuple[list[int], str]] = []
        pending = list(range(len(prompts)))
        while pending:
            group, cells = [], 0
            while pending and len(group) < self.n_seq and cells + len(prompts[pending[0]]) + max_tokens <= CONTEXT_CELLS:
                cells += len(prompts[pending[0]]) + max_tokens
                group.append(pending.pop(0))
            if not group:
                raise ModelError(f"a prompt of {len(prompts[pending[0]])} tokens leaves no room for a reply")
            results += self._generate_group([prompts[i] for i in group], make_sampler, max_tokens, ended, stopped)
        return results

    def _generate_group(self, prompts: list[list[int]], make_sampler, max_tokens: int, ended,  # noqa: ANN001
                        stopped) -> list[tuple[list[int], str]]:
        self.api.llama_memory_clear(self.memory, True)
        states = [_Generation([], make_sampler()) for _ in prompts]
        entries = [(token, position, sequence, position == len(prompt) - 1)
                   for sequence, prompt in enumerate(prompts) for position, token in enumerate(prompt)]
        for start in range(0, len(entries), BATCH_TOKENS):  # the prompts; each samples its first token
            chunk = entries[start:start + BATCH_TOKENS]
            self.decode(chunk)
            for index, (_, _, sequence, last) in enumerate(chunk):
                if last:
                    self._sample(states[sequence], index, max_tokens, ended, stopped)
        while True:
            active = [sequence for sequence, state in enumerate(states) if state.finish is None]
            if not active:
                return [(state.tokens, state.finish) for state in states]
            self.decode([(states[s].tokens[-1], len(prompts[s]) + len(states[s].tokens) - 1, s, True) for s in active])
            for index, sequence in enumerate(active):
                self._sample(states[sequence], index, max_tokens, ended, stopped)

    def _sample(self, state: _Generation, index: int, max_tokens: int, ended, stopped) -> None:  # noqa: ANN001
        token = self.api.llama_sampler_sample(state.sampler.sampler, self.ctx, index)
        if ended(token):
            state.finish = "stop"
            return
        state.tokens.append(token)
        if stopped(state.tokens):
            state.finish = "stop"
        elif len(state.tokens) >= max_tokens:
            state.finish = "length"


@dataclass
class _Generation:
    tokens: list[int]
    sampler: object
    finish: str | None = None


#: Tokens llama-cpp-python's repetition penalties look back over (its ``last_n_tokens_size``).
PENALTY_LAST_N = 64


def sampler_chain(sampling, n_vocab: int):  # noqa: ANN001, ANN201
    """The sampler chain llama-cpp-python's chat completion builds for these settings (``Sampling``)."""
    from llama_cpp import LLAMA_DEFAULT_SEED
    from llama_cpp._internals import LlamaSampler

    temperature, top_p, seed = sampling.temperature, sampling.top_p, sampling.seed
    sampler = LlamaSampler()
    sampler.add_penalties(n_vocab, PENALTY_LAST_N, 1.0, sampling.frequency_penalty, sampling.presence_penalty)
    if temperature == 0:
        sampler.add_greedy()
        return sampler
    sampler.add_top_k(TOP_K)
    sampler.add_typical(TYPICAL_P, 1)
    sampler.add_top_p(top_p, 1)
    sampler.add_min_p(MIN_P, 1)
    sampler.add_temp(temperature)
    sampler.add_dist(LLAMA_DEFAULT_SEED if seed is None else seed)
    return sampler


class GgufScorer:
    def __init__(self, gguf: Path, n_ctx: int = 1024) -> None:
        # The Llama object loads the weights (memory-mapped) and holds the tokenizer and template; scoring runs on a
        # context of its own, room for the longest prompt and a batch of replies.
        self.llm = load_gguf(gguf, n_ctx=256, n_threads=os.cpu_count() or 2)
        self.template = chat_template_of(self.llm)
        if self.template is None:
            raise ModelError(f"{gguf} has no chat template: cannot render samples to score them")
        self.system_role = supports_system_role(self.template)
        self.n_ctx = n_ctx
        self.context = _Context(self.llm, max(n_ctx + BATCH_TOKENS, CONTEXT_CELLS))

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

    def score_replies(self, messages: list[dict], replies: Sequence[str], reply_tokens: int | None = None) -> list[float]:
        """The log-likelihood of each reply (its tokens and the end-of-turn markup; its first ``reply_tokens`` where
        given) as the assistant's answer to ``messages``: the prompt decoded once, the replies side by side after
        it."""
        prepared = normalize(messages, self.system_role)
        prompt = self._tokens(self.template.apply_chat_template(prepared, add_generation_prompt=True))
        continuations = []
        for reply in replies:
            full = self._tokens(self.template.apply_chat_template([*prepared, {"role": "assistant", "content": reply}]))
            if full[: len(prompt)] != prompt:
                raise ModelError("the GGUF's chat template does not render a reply as a continuation of its prompt")
            continuations.append(full[len(prompt):][:reply_tokens])
        room = self.n_ctx - max((len(c) for c in continuations), default=0)
        if len(prompt) > room:  # as training truncates: the first token and the end
            prompt = prompt[:1] + prompt[-(room - 1):]
        return self.context.continuations(len(prompt), self.context.last_row(prompt), continuations)

    def replies(self, conversations: list[list[dict]], sampling) -> list[tuple[str, str]]:  # noqa: ANN001
        """Replies to several conversations at once, sampled as llama-cpp-python's chat completion samples one (the
        GGUF's template, its sampler chain, the end-of-generation tokens and the stop strings), with ``sampling``'s
        settings (a ``backends.Sampling``): (text, finish)."""
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self.llm._model.model)
        stops = [*sampling.stop, self.llm._model.token_get_text(self.llm.token_eos())]
        # As llama-cpp-python's chat handler tokenizes a rendered template (which holds its own BOS).
        prompts = [self._tokens(self.template.apply_chat_template(messages, add_generation_prompt=True))
                   for messages in conversations]

        def text_of(tokens: list[int]) -> str:
            return self.llm.detokenize(tokens).decode("utf-8", errors="ignore")

        def stopped(tokens: list[int]) -> bool:
            text = text_of(tokens)
            return any(stop and stop in text for stop in stops)

        generated = self.context.generate(prompts, lambda: sampler_chain(sampling, self.context.n_vocab),
                                          sampling.max_tokens,
                                          lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token)), stopped)
        out = []
        for tokens, finish in generated:
            text = text_of(tokens)
            cut = min((text.index(stop) for stop in stops if stop and stop in text), default=len(text))
            out.append((text[:cut], finish))
        return out

    def close(self) -> None:
        self.context.close()
        self.llm.close()
