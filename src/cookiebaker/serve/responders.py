"""The two models behind the service: a bounded queue and a generation timeout each, errors as HTTP problems."""

from __future__ import annotations

import asyncio
import time
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cookiebaker.backends import (
    Backend,
    BackendUnavailable,
    Chunk,
    Completion,
    ContextOverflow,
    Sampling,
    Unsupported,
    Usage,
)
from cookiebaker.backends.base import as_chunk

log = logging.getLogger(__name__)

SFW, NSFW = "cookiebaker-sfw", "cookiebaker-nsfw"


class ClientGone(Exception):
    """The client disconnected before its request was read: there is nobody to answer."""


class HTTPProblem(Exception):
    """An error answered as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Responders:
    """The models, each with a bounded queue and a generation timeout."""

    def __init__(self, backends: dict[str, Backend], samplings: dict[str, Sampling], queue_size: int,
                 timeout: float, registry: CollectorRegistry, max_tokens_limit: int = 4096,
                 turn_tokens: int | None = None) -> None:
        self.backends, self.samplings, self.max_tokens_limit = backends, samplings, max_tokens_limit
        self.turn_tokens = turn_tokens
        self.queue_size, self.timeout = queue_size, timeout
        self.pending = dict.fromkeys(backends, 0)
        self.depth = Gauge("cookiebaker_queue_depth", "Requests waiting or generating", ["model"], registry=registry)
        self.seconds = Histogram("cookiebaker_generation_seconds", "Generation time", ["model"], registry=registry)
        self.cuts = Counter("cookiebaker_context_cut", "Messages left out (part=turns) or cut to their end "
                            "(part=text) to fit the model's context", ["model", "part"], registry=registry)

    def resolve(self, name: str) -> str:
        model = name.removesuffix(":latest")
        if model not in self.backends:
            raise HTTPProblem(404, f"model '{name}' not found; available: {', '.join(self.backends)}")
        return model

    def sampling(self, model: str, temperature: float | None = None, top_p: float | None = None,
                 max_tokens: int | None = None, stop: str | list[str] | None = None, seed: int | None = None,
                 frequency_penalty: float | None = None, presence_penalty: float | None = None) -> Sampling:
        """The model's sampling settings with a request's overrides (checked by the request's schema);
        ``max_tokens`` is capped at the service's limit; an option the model's backend cannot honour is a 400."""
        if isinstance(stop, str):
            stop = [stop]
        if max_tokens is not None:
            max_tokens = min(max_tokens, self.max_tokens_limit)
        sampling = self.samplings[model].merged(temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                                stop=stop, seed=seed, frequency_penalty=frequency_penalty,
                                                presence_penalty=presence_penalty)
        try:
            self.backends[model].check_options(sampling)
        except Unsupported as exc:
            raise HTTPProblem(400, str(exc)) from None
        return sampling

    @asynccontextmanager
    async def slot(self, model: str):  # noqa: ANN201
        if self.pending[model] >= self.queue_size:
            raise HTTPProblem(503, f"{model} is busy ({self.queue_size} requests queued); try again shortly")
        self.pending[model] += 1
        self.depth.labels(model).set(self.pending[model])
        started = time.perf_counter()
        try:
            yield
        finally:
            self.pending[model] -= 1
            self.depth.labels(model).set(self.pending[model])
            self.seconds.labels(model).observe(time.perf_counter() - started)

    async def fitted(self, model: str, messages: list[dict], sampling: Sampling) -> list[dict]:
        """The messages cut to fit the model's context, keeping the newest turns; what was cut is counted."""
        try:
            fit = await asyncio.to_thread(self.backends[model].fit, messages, sampling, self.turn_tokens)
        except ContextOverflow as exc:
            raise HTTPProblem(413, str(exc)) from None
        if fit.dropped or fit.cut:
            self.cuts.labels(model, "turns").inc(fit.dropped)
            self.cuts.labels(model, "text").inc(fit.cut)
            log.info("%s: %d of %d messages left out, %d cut, to fit the context", model, fit.dropped,
                     len(messages), fit.cut)
        return fit.messages

    async def complete(self, model: str, messages: list[dict], sampling: Sampling) -> Completion:
        """The whole reply, its finish reason and usage (counted here where the backend counts tokens but did not
        say)."""
        async with self.slot(model):
            messages = await self.fitted(model, messages, sampling)
            try:
                completion = await asyncio.wait_for(self.backends[model].complete(messages, sampling), self.timeout)
                if completion.usage is None:
                    completion = replace(completion, usage=await self._usage(model, messages, sampling,
                                                                           completion.text))
                return completion
            except asyncio.TimeoutError:
                raise HTTPProblem(504, f"{model} did not answer within {self.timeout:g} s") from None
            except BackendUnavailable as exc:
                raise HTTPProblem(503, str(exc)) from None
            except Exception as exc:  # noqa: BLE001 (a failure of the model, answered as a JSON 500)
                raise _failed(model, exc) from None

    async def stream(self, model: str, messages: list[dict], sampling: Sampling) -> AsyncIterator[Chunk]:
        """The reply in chunks; the last (always there) says why it ended, and the usage where it can be known.
        The backend's stream is iterated in this task (no task of its own): a client that hangs up or a deadline
        that passes cancels it where it waits, and closing it ends the generation (a thread's, an engine's request)."""
        async with self.slot(model):
            messages = await self.fitted(model, messages, sampling)
            pieces = self.backends[model].stream(messages, sampling)
            final, texts = Chunk("", "stop"), []
            try:
                async with asyncio.timeout(self.timeout):
                    async for piece in pieces:
                        piece = as_chunk(piece)
                        texts.append(piece.text)
                        if piece.finish_reason:  # held back: the last chunk goes out last, with the usage
                            final = piece
                        elif piece.text:
                            yield piece
            except TimeoutError:
                raise HTTPProblem(504, f"{model} did not answer within {self.timeout:g} s") from None
            except BackendUnavailable as exc:
                raise HTTPProblem(503, str(exc)) from None
            except HTTPProblem:
                raise
            except Exception as exc:  # noqa: BLE001 (ends the stream with an error event)
                raise _failed(model, exc) from None
            finally:  # a timed-out request or a client gone: the generation stops, not only the answer
                with anyio.CancelScope(shield=True):  # even while this task is being cancelled
                    await pieces.aclose()
            if final.usage is None:
                final = replace(final, usage=await self._usage(model, messages, sampling, "".join(texts)))
            yield final

    async def _usage(self, model: str, messages: list[dict], sampling: Sampling, text: str) -> Usage | None:
        backend = self.backends[model]
        if not backend.counts_tokens():
            return None
        prompt = await asyncio.to_thread(backend.prompt_tokens, messages, sampling)
        return Usage(prompt, await asyncio.to_thread(backend.text_tokens, text))

    async def first_check(self, model: str) -> None:
        """Before a stream starts (and its 200 is sent): is the backend there, is there room in the queue?"""
        if self.pending[model] >= self.queue_size:
            raise HTTPProblem(503, f"{model} is busy ({self.queue_size} requests queued); try again shortly")
        try:
            await self.backends[model].check()
        except BackendUnavailable as exc:
            raise HTTPProblem(503, str(exc)) from None


def _failed(model: str, exc: Exception) -> HTTPProblem:
    log.error("%s failed: %s", model, type(exc).__name__, exc_info=exc)
    return HTTPProblem(500, f"{model} failed ({type(exc).__name__}); the service's log has the details")
