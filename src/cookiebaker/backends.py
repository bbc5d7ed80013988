"""Responder backends: a GGUF in-process (llama-cpp-python), a merged model (transformers), or Ollama."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cookiebaker.chat import cap_turns, largest_fitting
from cookiebaker.errors import ModelError
from cookiebaker.quality import Reply

log = logging.getLogger(__name__)


class BackendUnavailable(Exception):
    """The backend cannot answer now (server down, model missing)."""


class ContextOverflow(Exception):
    """Even the newest message, cut to nothing, does not fit the model's context (its system prompt fills it)."""


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


class Backend:
    """Generates a reply to chat messages; ``stream`` yields pieces of text."""

    description = "backend"
    context_length: int | None = None
    """Tokens the model reads at once, prompt and reply together (None: the backend fits prompts itself)."""
    system_role: bool = True
    """Whether the chat template renders a system turn (Gemma's does not: its text joins the first user turn)."""

    def prepare(self, messages: list[dict], sampling: Sampling) -> list[dict]:
        """The messages as the model is given them: the Modelfile's system prompt added, roles alternating, the
        first turn the user's (strict templates such as Gemma's refuse anything else)."""
        from cookiebaker.chat import normalize

        prepared = normalize(_with_system(messages, sampling), self.system_role)
        first = next((index for index, m in enumerate(prepared) if m["role"] != "system"), None)
        if first is not None and prepared[first]["role"] == "assistant":
            prepared.insert(first, {"role": "user", "content": ""})
        return prepared

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
        fitted = fit_to_context(capped, lambda candidate: self.prompt_tokens(candidate, sampling), budget)
        fitted.cut += cut
        return fitted

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

    def score_replies(self, prompts: list[list[dict]], requests: list[tuple[int, str]],
                      max_length: int) -> list[float]:
        """Per request (prompt index, reply text): the log-likelihood of the reply (with its end-of-turn) as the
        answer to that prompt. Requests that share a prompt are scored together."""
        raise ModelError(f"{self.description} cannot score text (no access to its logits)")

    async def stream(self, messages: list[dict], sampling: Sampling) -> AsyncIterator[str]:
        raise NotImplementedError
        yield ""  # pragma: no cover

    async def check(self) -> None:
        """Raise BackendUnavailable when the backend cannot answer."""


def fit_to_context(messages: list[dict], count: Callable[[list[dict]], int], budget: int) -> Fitted:
    """The newest messages whose prompt is at most ``budget`` tokens (``count``), the client's leading system
    messages kept while they fit. When the newest message alone is too long, its text is cut, keeping its end."""
    if count(messages) <= budget:
        return Fitted(messages)
    system = list(itertools.takewhile(lambda m: m["role"] == "system", messages[:-1]))
    turns = messages[len(system):]
    keep = largest_fitting(len(turns), lambda k: count(system + turns[-k:]) <= budget)
    if keep:
        kept = turns[-keep:]
        if keep > 1 and kept[0]["role"] == "assistant":  # a conversation starts with the user's turn
            kept = kept[1:]
        return Fitted(system + kept, dropped=len(turns) - len(kept))
    newest, text = turns[-1], turns[-1]["content"]
    for head in (system, []):
        end = largest_fitting(len(text), lambda c: count([*head, {**newest, "content": text[-c:]}]) <= budget)
        if end or count([*head, {**newest, "content": ""}]) <= budget:
            content = text[-end:] if end else ""
            return Fitted([*head, {**newest, "content": content}], dropped=len(messages) - 1 - len(head), cut=1)
    raise ContextOverflow(f"the system prompt alone is over the {budget} tokens the context leaves for a prompt")


def _with_system(messages: list[dict], sampling: Sampling) -> list[dict]:
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


class LlamaCppBackend(Backend):
    """A GGUF served in this process by llama-cpp-python, the engine Ollama uses."""

    def __init__(self, gguf: Path, sampling: Sampling, n_ctx: int = 4096) -> None:
        from llama_cpp import Llama

        from cookiebaker.chat import supports_system_role
        from cookiebaker.gguf_scoring import chat_template_of

        self.description = f"gguf:{gguf.name}"
        self.gguf = gguf
        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=os.cpu_count() or 2, verbose=False)
        self.lock = threading.Lock()  # one generation at a time per model: llama.cpp contexts are not thread-safe
        self.default = sampling
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
                "seed": sampling.seed, "stream": stream}

    def reply(self, messages: list[dict], sampling: Sampling) -> Reply:
        with self.lock:
            choice = self.llm.create_chat_completion(**self._request(messages, sampling, False))["choices"][0]
        return Reply(choice["message"].get("content") or "", choice.get("finish_reason"))

    def score(self, conversations: list[list[dict]], max_length: int) -> list[tuple[float, int]]:
        return [self._scorer_for(max_length).score(_with_system(messages, self.default)) for messages in conversations]

    def score_replies(self, prompts: list[list[dict]], requests: list[tuple[int, str]],
                      max_length: int) -> list[float]:
        scorer = self._scorer_for(max_length)
        scores = [0.0] * len(requests)
        for prompt, members in _by_prompt(requests).items():
            values = scorer.score_replies(_with_system(prompts[prompt], self.default), [text for _, text in members])
            for (index, _), value in zip(members, values):
                scores[index] = value
        return scores

    def _scorer_for(self, max_length: int):  # noqa: ANN202
        from cookiebaker.gguf_scoring import GgufScorer

        if self._scorer is None:  # a context of its own, with several sequences (serving's has one)
            self._scorer = GgufScorer(self.gguf, n_ctx=max_length)
        return self._scorer

    def stream(self, messages: list[dict], sampling: Sampling) -> AsyncIterator[str]:
        def generate(stop: threading.Event) -> Iterator[str]:
            with self.lock:
                if stop.is_set():  # the client left while this waited for the model
                    return
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

        return iterate_in_thread(generate)  # closing it ends the generation


class TransformersBackend(Backend):
    """A merged Hugging Face model folder served by transformers."""

    def __init__(self, folder: Path, sampling: Sampling) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cookiebaker.chat import supports_system_role

        self.description = f"transformers:{folder.name}"
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.lock = threading.Lock()
        self.default = sampling
        self.context_length = getattr(self.model.config, "max_position_embeddings", None)
        self.system_role = supports_system_role(self.tokenizer)

    def text_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_tokens(self, messages: list[dict], sampling: Sampling) -> int:
        ids = self.tokenizer.apply_chat_template(self.prepare(messages, sampling), add_generation_prompt=True,
                                                 return_dict=True)["input_ids"]
        return len(ids)

    def _generate_arguments(self, messages: list[dict], sampling: Sampling) -> dict:
        ids = self.tokenizer.apply_chat_template(self.prepare(messages, sampling), add_generation_prompt=True,
                                                 return_tensors="pt", return_dict=True)
        room = sampling.max_tokens
        if self.context_length:
            room = max(1, min(room, self.context_length - ids["input_ids"].shape[1]))
        kwargs = {**ids, "max_new_tokens": room, "do_sample": sampling.temperature > 0,
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

    def score_replies(self, prompts: list[list[dict]], requests: list[tuple[int, str]],
                      max_length: int) -> list[float]:
        """The replies to one prompt in one padded forward."""
        import torch

        from cookiebaker.chat import IGNORE, encode, normalize

        scores = [0.0] * len(requests)
        with self.lock, torch.no_grad():
            for prompt, members in _by_prompt(requests).items():
                messages = normalize(prompts[prompt], self.system_role)
                samples = [encode(self.tokenizer, [*messages, {"role": "assistant", "content": text}], max_length,
                                  last_only=True) for _, text in members]
                width = max(len(sample.input_ids) for sample in samples)
                ids = torch.tensor([s.input_ids + [0] * (width - len(s.input_ids)) for s in samples])
                mask = torch.tensor([[1] * len(s.input_ids) + [0] * (width - len(s.input_ids)) for s in samples])
                labels = torch.tensor([s.labels + [IGNORE] * (width - len(s.labels)) for s in samples])[:, 1:]
                logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE,
                                                        reduction="none").sum(dim=1)
                for (index, _), value in zip(members, nll.tolist()):
                    scores[index] = -value
        return scores

    def stream(self, messages: list[dict], sampling: Sampling) -> AsyncIterator[str]:
        from transformers import TextIteratorStreamer

        def generate(stop: threading.Event) -> Iterator[str]:
            from transformers import StoppingCriteria

            class Stop(StoppingCriteria):
                def __call__(self, input_ids, scores, **kwargs) -> bool:  # noqa: ANN001
                    return stop.is_set()

            with self.lock:
                if stop.is_set():  # the client left while this waited for the model
                    return
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

        return iterate_in_thread(generate)  # closing it ends the generation


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

    def prepare(self, messages: list[dict], sampling: Sampling) -> list[dict]:
        return messages  # Ollama renders with the model's own template and Modelfile (and fits its context)

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


def _by_prompt(requests: list[tuple[int, str]]) -> dict[int, list[tuple[int, str]]]:
    """Requests (prompt index, reply) grouped by prompt, each kept with its position in ``requests``."""
    groups: dict[int, list[tuple[int, str]]] = {}
    for index, (prompt, text) in enumerate(requests):
        groups.setdefault(prompt, []).append((index, text))
    return groups


def open_backend(reference: str, n_ctx: int = 4096) -> Backend:
    """``ollama:NAME``, a GGUF file, an export folder (GGUF + Modelfile) or a merged model folder; a GGUF gets a
    context of ``n_ctx`` tokens."""
    if reference.startswith("ollama:"):
        return OllamaBackend(reference.removeprefix("ollama:"), Sampling())
    path = Path(reference).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        modelfile = path.parent / "Modelfile"
        return LlamaCppBackend(path, sampling_from_modelfile(modelfile) if modelfile.is_file() else Sampling(), n_ctx)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            modelfile = path / "Modelfile"
            chosen = ggufs[0]
            if modelfile.is_file():
                from cookiebaker.modelfile import parse_modelfile

                source = parse_modelfile(modelfile.read_text(encoding="utf-8"))["from"] or ""
                chosen = path / source.removeprefix("./") if source.endswith(".gguf") else chosen
            return LlamaCppBackend(chosen, sampling_from_modelfile(modelfile) if modelfile.is_file() else Sampling(),
                                   n_ctx)
        if (path / "config.json").is_file():
            return TransformersBackend(path, Sampling())
    raise ModelError(f"model '{reference}' is neither ollama:NAME, a .gguf file, an export folder nor a merged "
                     "model folder")
