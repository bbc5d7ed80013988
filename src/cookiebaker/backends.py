"""Responder backends: a GGUF in-process (llama-cpp-python), a merged model (transformers), or Ollama."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cookiebaker.errors import ModelError
from cookiebaker.quality import Reply

log = logging.getLogger(__name__)


class BackendUnavailable(Exception):
    """The backend cannot answer now (server down, model missing)."""


@dataclass
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.7
    stop: list[str] = field(default_factory=list)
    max_tokens: int = 256
    system: str | None = None
    seed: int | None = None

    def merged(self, **overrides: object) -> Sampling:
        values = {k: v for k, v in overrides.items() if v is not None}
        return Sampling(**{**self.__dict__, **values})


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


class Backend:
    """Generates a reply to chat messages; ``stream`` yields pieces of text."""

    description = "backend"

    async def complete(self, messages: list[dict], sampling: Sampling) -> str:
        async with contextlib.aclosing(self.stream(messages, sampling)) as pieces:  # cancelled: the generation stops
            return "".join([piece async for piece in pieces])

    def reply(self, messages: list[dict], sampling: Sampling) -> Reply:
        """One whole reply, blocking, with why generation ended (``stop`` or ``length``)."""
        raise NotImplementedError

    def score(self, conversations: list[list[dict]], max_length: int) -> list[tuple[float, int]]:
        """Per conversation: the summed negative log-likelihood of its assistant turns (each with its end-of-turn)
        and how many tokens that is, the prompt rendered as ``reply`` renders it."""
        raise ModelError(f"{self.description} cannot score text (no access to its logits)")

    async def stream(self, messages: list[dict], sampling: Sampling) -> AsyncIterator[str]:
        raise NotImplementedError
        yield ""  # pragma: no cover

    async def check(self) -> None:
        """Raise BackendUnavailable when the backend cannot answer."""


def _with_system(messages: list[dict], sampling: Sampling) -> list[dict]:
    if sampling.system and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": sampling.system}, *messages]
    return messages


def _hand_over(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, item: object) -> None:
    try:
        loop.call_soon_threadsafe(queue.put_nowait, item)
    except RuntimeError:  # the event loop is gone (the service stopped): nobody is waiting
        pass


async def _iterate_in_thread(make_iterator) -> AsyncIterator[str]:  # noqa: ANN001
    """Run a blocking generator in a worker thread, handing its items to the event loop.

    ``make_iterator(stop)`` gets a ``threading.Event`` that is set as soon as the consumer goes away (a client
    that disconnected, a request that timed out): the thread then stops after the piece it is producing and
    closes the generator, which ends the model's generation and frees the model for the next request."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done, stop = object(), threading.Event()

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

    threading.Thread(target=produce, daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class LlamaCppBackend(Backend):
    """A GGUF served in this process by llama-cpp-python, the engine Ollama uses."""

    def __init__(self, gguf: Path, sampling: Sampling, n_ctx: int = 4096) -> None:
        from llama_cpp import Llama

        self.description = f"gguf:{gguf.name}"
        self.gguf = gguf
        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=os.cpu_count() or 2, verbose=False)
        self.lock = threading.Lock()  # one generation at a time per model: llama.cpp contexts are not thread-safe
        self.default = sampling
        self._scorer = None

    def _request(self, messages: list[dict], sampling: Sampling, stream: bool) -> dict:
        return {"messages": _with_system(messages, sampling), "temperature": sampling.temperature,
                "top_p": sampling.top_p, "stop": sampling.stop or None, "max_tokens": sampling.max_tokens,
                "seed": sampling.seed, "stream": stream}

    def reply(self, messages: list[dict], sampling: Sampling) -> Reply:
        with self.lock:
            choice = self.llm.create_chat_completion(**self._request(messages, sampling, False))["choices"][0]
        return Reply(choice["message"].get("content") or "", choice.get("finish_reason"))

    def score(self, conversations: list[list[dict]], max_length: int) -> list[tuple[float, int]]:
        from cookiebaker.gguf_scoring import GgufScorer

        if self._scorer is None:  # a second context that keeps every position's logits (serving needs none)
            self._scorer = GgufScorer(self.gguf, n_ctx=max_length)
        return [self._scorer.score(_with_system(messages, self.default)) for messages in conversations]

    async def stream(self, messages: list[dict], sampling: Sampling) -> AsyncIterator[str]:
        def generate(stop: threading.Event) -> Iterator[str]:
            with self.lock:
                chunks = self.llm.create_chat_completion(**self._request(messages, sampling, True))
                try:
                    for chunk in chunks:
                        piece = chunk["choices"][0]["delta"].get("content")
                        if piece:
                            yield piece
                        if stop.is_set():
                            return
                finally:
                    chunks.close()  # ends llama.cpp's generation loop

        async for piece in _iterate_in_thread(generate):
            yield piece


class TransformersBackend(Backend):
    """A merged Hugging Face model folder served by transformers."""

    def __init__(self, folder: Path, sampling: Sampling) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.description = f"transformers:{folder.name}"
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.lock = threading.Lock()
        self.default = sampling

    def _generate_arguments(self, messages: list[dict], sampling: Sampling) -> dict:
        ids = self.tokenizer.apply_chat_template(_with_system(messages, sampling), add_generation_prompt=True,
                                                 return_tensors="pt", return_dict=True)
        kwargs = {**ids, "max_new_tokens": sampling.max_tokens, "do_sample": sampling.temperature > 0,
                  "pad_token_id": self.tokenizer.eos_token_id}
        if sampling.temperature > 0:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
        if sampling.stop:
            kwargs.update(stop_strings=sampling.stop, tokenizer=self.tokenizer)
        return kwargs

    def reply(self, messages: list[dict], sampling: Sampling) -> Reply:
        import torch

        with self.lock:
            kwargs = self._generate_arguments(messages, sampling)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            with torch.no_grad():
                output = self.model.generate(**kwargs)
        new = output[0, kwargs["input_ids"].shape[1]:].tolist()
        raw = self.tokenizer.decode(new, skip_special_tokens=False)
        ended = bool(new) and new[-1] in self._end_ids()
        stopped = ended or any(stop in raw for stop in sampling.stop)
        text = self.tokenizer.decode(new[:-1] if ended else new,
                                     skip_special_tokens=True)
        for stop in sampling.stop:
            text = text.split(stop)[0]
        return Reply(text, "stop" if stopped else "length")

    def _end_ids(self) -> set[int]:
        configured = self.model.generation_config.eos_token_id
        ids = configured if isinstance(configured, list) else [configured, self.tokenizer.eos_token_id]
        return {i for i in ids if i is not None}

    def score(self, conversations: list[list[dict]], max_length: int) -> list[tuple[float, int]]:
        import torch

        from cookiebaker.chat import IGNORE, encode, normalize, supports_system_role

        system_role = supports_system_role(self.tokenizer)
        results = []
        with self.lock, torch.no_grad():
            for messages in conversations:
                sample = encode(self.tokenizer, normalize(messages, system_role), max_length)
                logits = self.model(torch.tensor([sample.input_ids])).logits[0, :-1].float()
                labels = torch.tensor(sample.labels[1:])
                total = torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
                results.append((float(total), int((labels != IGNORE).sum())))
        return results

    async def stream(self, messages: list[dict], sampling: Sampling) -> AsyncIterator[str]:
        from transformers import TextIteratorStreamer

        def generate(stop: threading.Event) -> Iterator[str]:
            from transformers import StoppingCriteria

            class Stop(StoppingCriteria):
                def __call__(self, input_ids, scores, **kwargs) -> bool:  # noqa: ANN001
                    return stop.is_set()

            with self.lock:
                streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
                kwargs = {**self._generate_arguments(messages, sampling), "streamer": streamer,
                          "stopping_criteria": [Stop()]}
                worker = threading.Thread(target=self.model.generate, kwargs=kwargs, daemon=True)
                worker.start()
                try:
                    yield from streamer
                finally:
                    stop.set()
                    worker.join()

        async for piece in _iterate_in_thread(generate):
            yield piece


class OllamaBackend(Backend):
    """A model in an Ollama server (OLLAMA_HOST)."""

    def __init__(self, name: str, sampling: Sampling, host: str | None = None, timeout: float = 300) -> None:
        import httpx

        host = host or os.environ.get("OLLAMA_HOST") or "http://127.0.0.1:11434"
        self.host = host if host.startswith("http") else f"http://{host}"
        self.name = name
        self.description = f"ollama:{name}"
        self.client = httpx.AsyncClient(base_url=self.host, timeout=timeout)
        self.default = sampling

    @staticmethod
    def _options(sampling: Sampling) -> dict:
        options = {"temperature": sampling.temperature, "top_p": sampling.top_p, "num_predict": sampling.max_tokens}
        if sampling.stop:
            options["stop"] = sampling.stop
        if sampling.seed is not None:
            options["seed"] = sampling.seed
        return options

    async def stream(self, messages: list[dict], sampling: Sampling) -> AsyncIterator[str]:
        import httpx

        body = {"model": self.name, "messages": messages, "stream": True, "options": self._options(sampling)}
        try:
            async with self.client.stream("POST", "/api/chat", json=body) as response:
                if response.status_code == 404:
                    raise BackendUnavailable(f"Ollama at {self.host} has no model {self.name}")
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if line.strip():
                        piece = json.loads(line).get("message", {}).get("content")
                        if piece:
                            yield piece
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"Ollama at {self.host} is not answering ({type(exc).__name__})") from None

    def reply(self, messages: list[dict], sampling: Sampling) -> Reply:
        import httpx

        body = {"model": self.name, "messages": _with_system(messages, sampling), "stream": False,
                "options": self._options(sampling)}
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


def open_backend(reference: str) -> Backend:
    """``ollama:NAME``, a GGUF file, an export folder (GGUF + Modelfile) or a merged model folder."""
    if reference.startswith("ollama:"):
        return OllamaBackend(reference.removeprefix("ollama:"), Sampling())
    path = Path(reference).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        modelfile = path.parent / "Modelfile"
        return LlamaCppBackend(path, sampling_from_modelfile(modelfile) if modelfile.is_file() else Sampling())
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            modelfile = path / "Modelfile"
            chosen = ggufs[0]
            if modelfile.is_file():
                from cookiebaker.modelfile import parse_modelfile

                source = parse_modelfile(modelfile.read_text(encoding="utf-8"))["from"] or ""
                chosen = path / source.removeprefix("./") if source.endswith(".gguf") else chosen
            return LlamaCppBackend(chosen, sampling_from_modelfile(modelfile) if modelfile.is_file() else Sampling())
        if (path / "config.json").is_file():
            return TransformersBackend(path, Sampling())
    raise ModelError(f"model '{reference}' is neither ollama:NAME, a .gguf file, an export folder nor a merged "
                     "model folder")
