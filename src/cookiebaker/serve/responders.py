"""The two models behind the service: a bounded queue and a generation timeout each, errors as HTTP problems."""

from __future__ import annotations

import asyncio
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


class Responders:
    """The models, each with a bounded queue and a generation timeout."""

    def __init__(self, backends: dict[str, Backend], samplings: dict[str, Sampling], queue_size: int,
                 timeout: float, registry: CollectorRegistry) -> None:
        self.backends, self.samplings = backends, samplings
        self.queue_size, self.timeout = queue_size, timeout
        self.pending = dict.fromkeys(backends, 0)
        self.depth = Gauge("cookiebaker_queue_depth", "Requests waiting or generating", ["model"], registry=registry)
        self.seconds = Histogram("cookiebaker_generation_seconds", "Generation time", ["model"], registry=registry)

    def resolve(self, name: str | None) -> str:
        model = (name or "").removesuffix(":latest")
        if model not in self.backends:
            raise HTTPProblem(404, f"model '{name}' not found; available: {', '.join(self.backends)}")
        return model

    def sampling(self, model: str, temperature=None, top_p=None, max_tokens=None, stop=None) -> Sampling:  # noqa: ANN001
        """The model's sampling settings with a request's overrides."""
        if isinstance(stop, str):
            stop = [stop]
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

    async def first_check(self, model: str) -> None:
        """Before a stream starts (and its 200 is sent): is the backend there, is there room in the queue?"""
        if self.pending[model] >= self.queue_size:
            raise HTTPProblem(503, f"{model} is busy ({self.queue_size} requests queued); try again shortly")
        try:
            await self.backends[model].check()
        except BackendUnavailable as exc:
            raise HTTPProblem(503, str(exc)) from None
