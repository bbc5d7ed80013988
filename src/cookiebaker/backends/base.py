"""What every responder backend is: the abstract :class:`Backend`, the sampling settings it takes, the chunks it
streams (the last with why generation ended), and the shared mechanics (fitting a prompt to the context, running
a blocking generator in a worker thread)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from cookiebaker.chat import MAX_TOKEN_BYTES, cap_turns, largest_fitting
from cookiebaker.errors import ModelError
from cookiebaker.quality import Reply

log = logging.getLogger(__name__)


class BackendUnavailable(Exception):
    """The backend cannot answer now (server down, model missing)."""


class ContextOverflow(Exception):
    """Even the newest message, cut to nothing, does not fit the model's context (its system prompt fills it)."""


class Unsupported(Exception):
    """The backend cannot honour an option a request asked for (said to the client as a 400 naming it)."""


#: Tokens kept free besides the reply's room: the chat handler's rendering may differ from ours by a few.
PROMPT_MARGIN = 16


@dataclass
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.7
    stop: list[str] = field(default_factory=list)
    max_tokens: int = 256
    system: str | None = None
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    def merged(self, **overrides: object) -> Sampling:
        values = {k: v for k, v in overrides.items() if v is not None}
        return Sampling(**{**self.__dict__, **values})

    @property
    def penalized(self) -> bool:
        return bool(self.frequency_penalty or self.presence_penalty)


def sampling_from_modelfile(path: Path) -> Sampling:
    """temperature, top_p, stops and SYSTEM of an exported Modelfile."""
    from cookiebaker.modelfile import parse_modelfile

    spec = parse_modelfile(path.read_text(encoding="utf-8"))
    parameters = spec["parameters"]
    sampling = Sampling(stop=list(parameters.get("stop", [])), system=spec.get("system"))
    for name in ("temperature", "top_p"):
        if name in parameters:
            setattr(sampling, name, float(parameters[name]))
    if "num_predict" in parameters:
        sampling.max_tokens = int(parameters["num_predict"])
    return sampling


@dataclass(frozen=True)
class Usage:
    """Tokens of a request: the prompt as the model read it, and the reply."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Chunk:
    """A piece of a streamed reply. The last one says why generation ended (``stop``: the end-of-turn token or a
    stop string; ``length``: the token limit) and, where the backend knows, the request's usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


def as_chunk(piece: Chunk | str) -> Chunk:
    """A streamed piece as a chunk: a plain string (what a simple backend may yield) is a text chunk."""
    return Chunk(piece) if isinstance(piece, str) else piece


@dataclass(frozen=True)
class Completion:
    """A whole reply, its finish reason and usage (None where the backend cannot count)."""

    text: str
    finish_reason: str
    usage: Usage | None = None


@dataclass
class Fitted:
    """Messages cut to fit a model's context: the oldest left out, the newest cut to its end if it alone is too
    long."""

    messages: list[dict]
    dropped: int = 0
    """Messages left out (the oldest turns, then the client's system messages)."""
    cut: int = 0
    """Messages whose text was cut, keeping its end (earlier turns over the turn limit, and the newest when it
    alone is too long)."""


class Backend(ABC):
    """A responder: generates replies to chat messages, streamed in chunks whose last says why it ended."""

    description: str = "backend"
    """Where the model is, for logs and /healthz (``gguf:name``, ``ollama:name``, ...)."""
    default: Sampling
    """The model's own sampling settings (a Modelfile's), which requests override."""
    context_length: int | None = None
    """Tokens the model reads at once, prompt and reply together (None: the backend fits prompts itself)."""
    system_role: bool = True
    """Whether the chat template renders a system turn (Gemma's does not: its text joins the first user turn)."""
    penalties: bool = False
    """Whether it honours frequency and presence penalties."""

    def __init__(self, sampling: Sampling | None = None) -> None:
        self.default = sampling or Sampling()

    def prepare(self, messages: list[dict], sampling: Sampling) -> list[dict]:
        """The messages as the model is given them: the Modelfile's system prompt added, roles alternating, the
        first turn the user's (strict templates such as Gemma's refuse anything else)."""
        from cookiebaker.chat import normalize

        prepared = normalize(with_system(messages, sampling), self.system_role)
        first = next((index for index, m in enumerate(prepared) if m["role"] != "system"), None)
        if first is not None and prepared[first]["role"] == "assistant":
            prepared.insert(first, {"role": "user", "content": ""})
        return prepared

    def counts_tokens(self) -> bool:
        """Whether the backend can count tokens (and so fit prompts itself and report usage)."""
        return type(self).prompt_tokens is not Backend.prompt_tokens

    def prompt_tokens(self, messages: list[dict], sampling: Sampling) -> int:
        """How many tokens the prompt for ``messages`` is, as the model is given it."""
        raise NotImplementedError

    def text_tokens(self, text: str) -> int:
        """How many tokens a text is on its own."""
        raise NotImplementedError

    def fit(self, messages: list[dict], sampling: Sampling, turn_tokens: int | None = None) -> Fitted:
        """``messages`` cut to leave the reply room in the context (``max_tokens``, at most half of it), each
        earlier turn first cut to its last ``turn_tokens`` tokens (one huge message must not crowd out the chat:
        a small model answers in fragments after one)."""
        if self.context_length is None:
            return Fitted(messages)
        capped, cut = (messages, 0) if turn_tokens is None else cap_turns(messages, self.text_tokens, turn_tokens)
        budget = self.context_length - min(sampling.max_tokens, self.context_length // 2) - PROMPT_MARGIN
        fitted = fit_to_context(capped, lambda candidate: self.prompt_tokens(candidate, sampling), budget,
                                self.text_tokens)
        fitted.cut += cut
        return fitted

    def check_options(self, sampling: Sampling) -> None:
        """Raise Unsupported for what this backend cannot do as asked."""
        if sampling.penalized and not self.penalties:
            raise Unsupported(f"{self.description} does not take frequency_penalty or presence_penalty")

    @abstractmethod
    def stream(self, messages: list[dict], sampling: Sampling) -> AsyncIterator[Chunk]:
        """The reply in chunks; the last carries the finish reason (and usage where known; a backend that yields
        plain strings ends with ``stop``). Closing the iterator stops the generation."""

    async def complete(self, messages: list[dict], sampling: Sampling) -> Completion:
        """The whole reply, from the stream (cancelled: the generation stops)."""
        texts, finish, usage = [], None, None
        async with contextlib.aclosing(self.stream(messages, sampling)) as chunks:
            async for piece in chunks:
                chunk = as_chunk(piece)
                texts.append(chunk.text)
                finish, usage = chunk.finish_reason or finish, chunk.usage or usage
        return Completion("".join(texts), finish or "stop", usage)

    def reply(self, messages: list[dict], sampling: Sampling) -> Reply:
        """One whole reply, blocking (eval), with why generation ended."""
        completion = asyncio.run(self.complete(messages, sampling))
        return Reply(completion.text, completion.finish_reason)

    def replies(self, conversations: list[list[dict]], sampling: Sampling) -> list[Reply]:
        """Whole replies to several conversations (eval), one at a time unless the backend batches them."""
        return [self.reply(messages, sampling) for messages in conversations]

    def score(self, conversations: list[list[dict]], max_length: int) -> list[tuple[float, int]]:
        """Per conversation: the summed negative log-likelihood of its assistant turns (each with its end-of-turn)
        and how many tokens that is, the prompt rendered as ``reply`` renders it."""
        raise ModelError(f"{self.description} cannot score text (no access to its logits)")

    def score_replies(self, prompts: list[list[dict]], requests: list[tuple[int, str]], max_length: int,
                      reply_tokens: int | None = None) -> list[float]:
        """Per request (prompt index, reply text): the log-likelihood of the reply (with its end-of-turn) as the
        answer to that prompt, of its first ``reply_tokens`` tokens where given. Requests that share a prompt are
        scored together."""
        raise ModelError(f"{self.description} cannot score text (no access to its logits)")

    async def check(self) -> None:
        """Raise BackendUnavailable when the backend cannot answer."""

    def close(self) -> None:
        """Let go of what the backend holds (models, connections)."""


def by_prompt(requests: list[tuple[int, str]]) -> dict[int, list[tuple[int, str]]]:
    """Requests (prompt index, reply) grouped by prompt, each kept with its position in ``requests``."""
    groups: dict[int, list[tuple[int, str]]] = {}
    for index, (prompt, text) in enumerate(requests):
        groups.setdefault(prompt, []).append((index, text))
    return groups


def fit_to_context(messages: list[dict], count: Callable[[list[dict]], int], budget: int,
                   text_count: Callable[[str], int] | None = None) -> Fitted:
    """The newest messages whose prompt is at most ``budget`` tokens (``count``), the client's leading system
    messages kept while they fit. When the newest message alone is too long, its text is cut, keeping its end.

    The work is bounded whatever the request (10,000 messages, a megabyte of text): each message is counted on its
    own once (``text_count``), which says how many of the newest can fit; the whole prompt is rendered and counted
    only to confirm that (a few times at most); a text is first cut to what could fit at the most bytes a token
    stands for."""
    # A lower bound that needs no rendering: a message costs a token of markup at least, and a token stands for at
    # most MAX_TOKEN_BYTES bytes. Only a request that might fit is rendered whole.
    at_least = sum(1 + len(m["content"]) // MAX_TOKEN_BYTES for m in messages)
    if at_least <= budget and count(messages) <= budget:
        return Fitted(messages)
    system = list(itertools.takewhile(lambda m: m["role"] == "system", messages[:-1]))
    turns = messages[len(system):]
    keep = _turns_that_fit(system, turns, count, budget, text_count)
    if keep:
        kept = turns[-keep:]
        if keep > 1 and kept[0]["role"] == "assistant":  # a conversation starts with the user's turn
            kept = kept[1:]
        return Fitted(system + kept, dropped=len(turns) - len(kept))
    newest = turns[-1]
    text = newest["content"][-budget * MAX_TOKEN_BYTES:]
    for head in (system, []):
        empty = count([*head, {**newest, "content": ""}])
        if empty > budget:
            continue
        end = _tail_that_fits(text, lambda tail: count([*head, {**newest, "content": tail}]) <= budget, text_count,
                              budget - empty)
        return Fitted([*head, {**newest, "content": text[-end:] if end else ""}], dropped=len(messages) - 1 - len(head),
                      cut=1)
    raise ContextOverflow(f"the system prompt alone is over the {budget} tokens the context leaves for a prompt")


def _tail_that_fits(text: str, fits: Callable[[str], bool], text_count: Callable[[str], int] | None,
                    room: int) -> int:
    """The length of the longest end of ``text`` that fits: found by counting the text alone (``room`` tokens are
    left for it), confirmed by counting the whole prompt."""
    if text_count is None:
        return largest_fitting(len(text), lambda c: fits(text[-c:]))
    end = largest_fitting(len(text), lambda c: text_count(text[-c:]) <= room)
    for _ in range(8):  # tokens may merge across the text's edges in the whole prompt: step back a little
        if end == 0 or fits(text[-end:]):
            return end
        end = max(0, end - max(1, end // 100))
    return largest_fitting(end, lambda c: fits(text[-c:]))


def _turns_that_fit(system: list[dict], turns: list[dict], count: Callable[[list[dict]], int], budget: int,
                    text_count: Callable[[str], int] | None) -> int:
    """How many of the newest turns fit (the most that do): estimated from each turn counted on its own and the
    template's markup per turn, then found exactly by counting whole prompts near the estimate."""
    fits = lambda k: count(system + turns[-k:]) <= budget  # noqa: E731
    if text_count is None:
        return largest_fitting(len(turns), fits)
    probe = {"role": "user", "content": "x"}
    one = count([probe]) - text_count("x")
    per_turn = max(1, count([probe, {**probe, "role": "assistant"}]) - 2 * text_count("x") - one)
    newest = turns[-1]["content"][-budget * MAX_TOKEN_BYTES:]
    total = count(system + [{**turns[-1], "content": newest}]) - per_turn  # the fixed part: system, BOS, prompt
    estimate = 0
    for turn in reversed(turns[-min(len(turns), budget):]):  # a turn costs a token at least
        total += text_count(turn["content"][-budget * MAX_TOKEN_BYTES:]) + per_turn
        if total > budget:
            break
        estimate += 1
    if estimate == 0 or not fits(estimate):
        return largest_fitting(max(estimate - 1, 0), fits)
    low, step = estimate, 1  # it fits: climb while more do (the estimate is close, so this takes a few counts)
    while low + step <= len(turns) and fits(low + step):
        low, step = low + step, step * 2
    high = min(len(turns), low + step) - 1
    return low + largest_fitting(high - low, lambda extra: fits(low + extra))


def with_system(messages: list[dict], sampling: Sampling) -> list[dict]:
    if sampling.system and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": sampling.system}, *messages]
    return messages


def _hand_over(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, item: object) -> None:
    try:
        loop.call_soon_threadsafe(queue.put_nowait, item)
    except RuntimeError:  # the event loop is gone (the service stopped): nobody is waiting
        pass


async def iterate_in_thread(make_iterator) -> AsyncIterator[str]:  # noqa: ANN001
    """Run a blocking generator in a worker thread, handing its items to the event loop.

    ``make_iterator(stop)`` gets a ``threading.Event`` that is set as soon as the consumer goes away (a client
    that disconnected, a request that timed out): the thread then stops after the piece it is producing and
    closes the generator, which ends the model's generation and frees the model for the next request."""
    import anyio

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done, stop, finished = object(), threading.Event(), asyncio.Event()

    def produce() -> None:
        iterator = make_iterator(stop)
        try:
            for item in iterator:
                if stop.is_set():
                    break
                _hand_over(loop, queue, item)
        except BaseException as exc:  # noqa: BLE001 (handed over to the consumer)
            _hand_over(loop, queue, exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            _hand_over(loop, queue, done)
            with contextlib.suppress(RuntimeError):  # the event loop is gone
                loop.call_soon_threadsafe(finished.set)

    threading.Thread(target=produce, daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # the generation counts (against the queue, for the model's lock) until it has really ended
        stop.set()
        with anyio.CancelScope(shield=True):
            await finished.wait()


