"""The two models behind the service: a bounded queue and a generation timeout each, errors as HTTP problems."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry, Gauge, Histogram

from cookiebaker.backends import Backend, BackendUnavailable, Sampling

SFW, NSFW = "cookiebaker-sfw", "cookiebaker-nsfw"


class HTTPProblem(Exception):
    """An error answered as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _number_problem(name: str, value: object, low: float, high: float, low_open: bool = False) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"'{name}' must be a number"
    if value < low or value > high or (low_open and value == low):
        return f"'{name}' must be in {'(' if low_open else '['}{low:g}, {high:g}]"
    return None


def _count_problem(name: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"'{name}' must be a whole number of at least 1"
    return None


def _stop_problem(value: object) -> str | None:
    if value is None or isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return None
    return "'stop' must be a string or a list of strings"


def stream_flag(value: object, default: bool) -> bool:
    """A request's ``stream``: true, false or absent."""
    if value is None:
        return default
    if not isinstance(value, bool):
        raise HTTPProblem(422, "'stream' must be true or false")
    return value


class Responders:
    """The models, each with a bounded queue and a generation timeout."""

    def __init__(self, backends: dict[str, Backend], samplings: dict[str, Sampling], queue_size: int,
                 timeout: float, registry: CollectorRegistry, max_tokens_limit: int = 4096) -> None:
        self.backends, self.samplings, self.max_tokens_limit = backends, samplings, max_tokens_limit
        self.queue_size, self.timeout = queue_size, timeout
        self.pending = dict.fromkeys(backends, 0)
        self.depth = Gauge("cookiebaker_queue_depth", "Requests waiting or generating", ["model"], registry=registry)
        self.seconds = Histogram("cookiebaker_generation_seconds", "Generation time", ["model"], registry=registry)

    def resolve(self, name: object) -> str:
        if not isinstance(name, str):
            raise HTTPProblem(400, "'model' must be a string (cookiebaker-sfw or cookiebaker-nsfw)")
        model = name.removesuffix(":latest")
        if model not in self.backends:
            raise HTTPProblem(404, f"model '{name}' not found; available: {', '.join(self.backends)}")
        return model

    def sampling(self, model: str, temperature=None, top_p=None, max_tokens=None, stop=None) -> Sampling:  # noqa: ANN001
        """The model's sampling settings with a request's overrides, each checked (a 422 names the bad one);
        ``max_tokens`` is capped at the service's limit."""
        problems = [problem for problem in (
            _number_problem("temperature", temperature, 0.0, 100.0),
            _number_problem("top_p", top_p, 0.0, 1.0, low_open=True),
            _count_problem("max_tokens", max_tokens),
            _stop_problem(stop)) if problem]
        if problems:
            raise HTTPProblem(422, "; ".join(problems))
        if isinstance(stop, str):
            stop = [stop]
        if max_tokens is not None:
            max_tokens = min(max_tokens, self.max_tokens_limit)
        return self.samplings[model].merged(temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=stop)

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

    async def complete(self, model: str, messages: list[dict], sampling: Sampling) -> str:
        async with self.slot(model):
            try:
                return await asyncio.wait_for(self.backends[model].complete(messages, sampling), self.timeout)
            except asyncio.TimeoutError:
                raise HTTPProblem(504, f"{model} did not answer within {self.timeout:g} s") from None
            except BackendUnavailable as exc:
                raise HTTPProblem(503, str(exc)) from None

    async def stream(self, model: str, messages: list[dict], sampling: Sampling) -> AsyncIterator[str]:
        async with self.slot(model):
            deadline = time.monotonic() + self.timeout
            pieces = self.backends[model].stream(messages, sampling).__aiter__()
            try:
                while True:
                    try:
                        piece = await asyncio.wait_for(pieces.__anext__(), max(0.0, deadline - time.monotonic()))
                    except StopAsyncIteration:
                        return
                    except asyncio.TimeoutError:
                        raise HTTPProblem(504, f"{model} did not answer within {self.timeout:g} s") from None
                    except BackendUnavailable as exc:
                        raise HTTPProblem(503, str(exc)) from None
                    yield piece
            finally:  # a timed-out request or a client gone: the generation stops, not only the answer
                await pieces.aclose()

    async def first_check(self, model: str) -> None:
        """Before a stream starts (and its 200 is sent): is the backend there, is there room in the queue?"""
        if self.pending[model] >= self.queue_size:
            raise HTTPProblem(503, f"{model} is busy ({self.queue_size} requests queued); try again shortly")
        try:
            await self.backends[model].check()
        except BackendUnavailable as exc:
            raise HTTPProblem(503, str(exc)) from None
