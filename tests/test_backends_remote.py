"""cookiebaker in front of a real, independent OpenAI-compatible engine: llama-cpp-python's own server
(``python -m llama_cpp.server``) on the tiny GGUF. The webhook, both chat APIs, streaming, a client hanging up mid-
stream (the engine's request is closed), the engine killed (503) and restarted, the official openai client against
cookiebaker, and eval through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port, serve_in_thread

from cookiebaker.backends import BackendUnavailable, open_backend
from cookiebaker.backends.remote import parse_reference
from cookiebaker.errors import ConfigError
from cookiebaker.serve import ServeConfig, build_app

ALIAS = "cb-tiny"


class Engine:
    """llama-cpp-python's server in a process of its own, started and killed at will."""

    def __init__(self, gguf: Path, log: Path | None = None) -> None:
        self.gguf, self.port, self.process, self.log = gguf, free_port(), None, log

    @property
    def reference(self) -> str:
        return f"openai:http://127.0.0.1:{self.port}/v1#{ALIAS}"

    def start(self) -> None:
        log = self.log.open("ab") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--model_alias", ALIAS,
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "1024", "--verbose", "False"],
            stdout=log, stderr=subprocess.STDOUT)
        if self.log:
            log.close()  # the engine holds its own copy
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/v1/models", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("llama-cpp-python's server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture(scope="module")
def engine(tiny_gguf: Path):  # noqa: ANN201
    running = Engine(next(tiny_gguf.glob("*.gguf")))
    running.start()
    yield running
    running.kill()


def test_references_say_what_they_need() -> None:
    assert parse_reference("openai:http://host:8000/v1#my-model") == ("http://host:8000/v1", "my-model")
    for bad in ("openai:host:8000/v1#m", "openai:http://host/v1", "openai:"):
        with pytest.raises(ConfigError, match="openai:http://HOST:PORT/v1#MODEL"):
            parse_reference(bad)


def test_the_service_in_front_of_the_engine(engine: Engine, tmp_path: Path) -> None:
    app = build_app(ServeConfig(sfw_model=engine.reference, history_db=str(tmp_path / "h.sqlite3"), max_tokens=8))
    port, server = serve_in_thread(app)
    base = f"http://127.0.0.1:{port}"
    try:
        reply = httpx.post(f"{base}/webhook/response", json={"prompt": "pizza tonight?", "chat_id": 1,
                                                             "sender_name": "Ann"}, timeout=60)
        assert reply.status_code == 200 and reply.json()["model"] == "cookiebaker-sfw"
        history = app.state.service.store.recent("\x1fanonymous", "1", 10)
        assert history[0]["speaker"] == "Ann" and history[1]["content"] == reply.json()["response"]
        openai = httpx.post(f"{base}/v1/chat/completions", timeout=60, json={
            "model": "cookiebaker-sfw", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert openai.json()["choices"][0]["finish_reason"] == "length"  # the engine's own finish reason
        assert openai.json()["usage"]["completion_tokens"] == 3
        ollama = httpx.post(f"{base}/api/chat", timeout=60, json={
            "model": "cookiebaker-sfw", "stream": False, "messages": [{"role": "user", "content": "hi"}]})
        assert ollama.status_code == 200 and ollama.json()["done"]
        with httpx.stream("POST", f"{base}/v1/chat/completions", timeout=60, json={
                "model": "cookiebaker-sfw", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as s:
            lines = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]" and len(lines) > 3
        # The official client, against cookiebaker.
        from openai import OpenAI

        client = OpenAI(base_url=f"{base}/v1", api_key="unused")
        answer = client.chat.completions.create(model="cookiebaker-sfw", max_tokens=4,
                                                messages=[{"role": "user", "content": "snacks?"}])
        assert answer.choices[0].finish_reason in ("stop", "length") and answer.usage.total_tokens > 0
        pieces = list(client.chat.completions.create(model="cookiebaker-sfw", max_tokens=4, stream=True,
                                                     messages=[{"role": "user", "content": "snacks?"}]))
        assert pieces[-1].choices[0].finish_reason in ("stop", "length")
    finally:
        server.should_exit = True


@pytest.fixture(scope="module")
def talking_engine(tmp_path_factory):  # noqa: ANN201
    """The engine on the embedded SmolLM2, whose long replies stream a token at a time (the tiny random model's
    greedy text can hold back partial characters for hundreds of tokens inside one step, where nothing can stop
    it), with its log kept."""
    from cookiebaker.models import embedded_gguf

    running = Engine(embedded_gguf("smollm2-135m"), log=tmp_path_factory.mktemp("engine") / "engine.log")
    running.start()
    yield running
    running.kill()


def test_a_client_hanging_up_closes_the_engines_request(talking_engine: Engine, tmp_path: Path) -> None:
    """The engine generates one request at a time: had the abandoned stream gone on (a story of some 600 tokens),
    the engine would not log the hang-up, and the next request would wait for it."""
    app = build_app(ServeConfig(sfw_model=talking_engine.reference, history_db=str(tmp_path / "h.sqlite3"),
                                max_tokens_limit=4096))
    port, server = serve_in_thread(app)
    base = f"http://127.0.0.1:{port}"
    quick_body = {"model": "cookiebaker-sfw", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    try:
        started = time.perf_counter()
        quick = httpx.post(f"{base}/v1/chat/completions", timeout=120, json=quick_body)
        alone = time.perf_counter() - started
        endless = {"model": "cookiebaker-sfw", "stream": True, "max_tokens": 2000, "temperature": 0, "messages": [
            {"role": "user", "content": "Write a very long story about a dragon, at least 3000 words."}]}
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=endless, timeout=60) as stream:
            for line in stream.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    break  # one piece, then hang up
        deadline = time.monotonic() + 30
        while b"Disconnected from client" not in talking_engine.log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert b"Disconnected from client" in talking_engine.log.read_bytes()  # the engine saw its request end
        started = time.perf_counter()
        after = httpx.post(f"{base}/v1/chat/completions", timeout=120, json=quick_body)
        assert quick.status_code == after.status_code == 200
        assert time.perf_counter() - started < alone + 5  # not the rest of the abandoned story
    finally:
        server.should_exit = True


def test_the_engine_down_is_a_503_and_back_up_it_answers(tiny_gguf: Path, tmp_path: Path) -> None:
    engine = Engine(next(tiny_gguf.glob("*.gguf")))
    engine.start()
    app = build_app(ServeConfig(sfw_model=engine.reference, history_db=str(tmp_path / "h.sqlite3"), max_tokens=4))
    port, server = serve_in_thread(app)
    base = f"http://127.0.0.1:{port}"
    body = {"model": "cookiebaker-sfw", "messages": [{"role": "user", "content": "hi"}]}
    try:
        assert httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60).status_code == 200
        engine.kill()
        down = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
        assert down.status_code == 503 and "not answering" in down.json()["error"]
        streamed = httpx.post(f"{base}/v1/chat/completions", json={**body, "stream": True}, timeout=60)
        assert streamed.status_code == 503
        webhook = httpx.post(f"{base}/webhook/response", json={"prompt": "hi", "chat_id": 2}, timeout=60)
        assert webhook.status_code == 503
        engine.start()
        assert httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60).status_code == 200
    finally:
        server.should_exit = True
        engine.kill()


def test_eval_through_the_engine(engine: Engine, tiny_merged: Path, demo_pairs: Path, tmp_path: Path) -> None:
    """Generation measures always; the loss only where the engine gives prompt log-probabilities (this one does
    not): said once, not a failure."""
    from cookiebaker import eval as evaluation

    split = tiny_merged.parent / "adapter" / "heldout.json"
    report = evaluation.run(evaluation.EvalConfig(model=engine.reference, data=str(demo_pairs), split=str(split),
                                                  output=str(tmp_path / "e.json"), base_model="none", max_samples=4,
                                                  max_new_tokens=6))
    assert report["generated"] == 4 and report["tuned"]["loss"] is None and report["tuned"]["context_hit"] is None
    assert report["tuned"]["stop_rate"] is not None and report["tuned"]["backend"].startswith("openai:cb-tiny")
    assert json.loads((tmp_path / "e.json").read_text())["tuned"]["echo_rate"] is not None


def test_an_engine_that_is_not_there(tmp_path: Path) -> None:
    backend = open_backend(f"openai:http://127.0.0.1:{free_port()}/v1#nothing")
    import asyncio

    with pytest.raises(BackendUnavailable):
        asyncio.run(backend.check())
    assert os.environ.get("COOKIEBAKER_ENGINE_API_KEY") is None or backend.headers
