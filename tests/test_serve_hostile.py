"""Hostile input, round two (issue 21): clients that stop mid-body or send headers a byte at a time, clients without
a name, OpenAI options the service cannot honour, broken model files, huge requests, and the smaller things."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import run_cli, serve_in_thread
from fastapi.testclient import TestClient
from test_serve import Echo, make_app

from cookiebaker.serve.schemas import anonymous_client

KEY = "s3cret"


def _raw(port: int, data: bytes, *, close: bool = True, wait: float = 0.0) -> bytes:
    """Send raw bytes; read what comes back (until the server closes or ``wait`` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(data)
        if close:
            connection.shutdown(socket.SHUT_WR)
        connection.settimeout(wait or 5)
        chunks = []
        try:
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def _metrics(port: int) -> str:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text


@pytest.fixture()
def served(tmp_path: Path, monkeypatch):  # noqa: ANN001, ANN201
    monkeypatch.setenv("COOKIEBAKER_API_KEY", KEY)
    app, sfw, _ = make_app(tmp_path, body_timeout_seconds=1)
    port, server = serve_in_thread(app, header_timeout=1.0)
    yield port, sfw
    server.should_exit = True


def test_a_client_that_stops_mid_body_is_logged_as_such(served, caplog) -> None:  # noqa: ANN001
    port, sfw = served
    head = (b"POST /webhook/response HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n")
    with caplog.at_level("INFO", logger="cookiebaker"):
        _raw(port, head + b'{"prompt":"hi"')  # then hangs up
        _raw(port, head.replace(b"Content-Length: 200", b"Transfer-Encoding: chunked") + b"c8\r\n{\"prompt\"")
        time.sleep(0.3)
    metrics = _metrics(port)
    assert 'status="500"' not in metrics and 'path="/webhook/response",status="499"' in metrics
    assert "Traceback" not in caplog.text and "disconnected before its body arrived" in caplog.text
    assert sfw.seen == []


def test_a_body_that_does_not_arrive_in_time_is_a_408(served) -> None:  # noqa: ANN001
    port, _ = served
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
            + b"\r\nContent-Length: 100\r\n\r\n{")
    started = time.monotonic()
    answer = _raw(port, head, close=False, wait=4)
    assert answer.startswith(b"HTTP/1.1 408") and b'"error"' in answer and time.monotonic() - started < 3
    assert 'status="408"' in _metrics(port)


def test_slowloris_connections_are_closed_with_a_408(served) -> None:  # noqa: ANN001
    port, _ = served
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    results: list[tuple[bytes, float]] = []

    def slow() -> None:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            answer = b""
            try:
                for byte in request:
                    connection.sendall(bytes([byte]))
                    time.sleep(0.25)
            except (BrokenPipeError, ConnectionResetError):
                pass
            connection.settimeout(3)
            try:
                answer = connection.recv(4096)
            except (TimeoutError, ConnectionResetError):
                pass
        results.append((answer, time.monotonic() - started))

    threads = [threading.Thread(target=slow) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(results) == 10
    for answer, seconds in results:
        assert answer.startswith(b"HTTP/1.1 408") and seconds < 4  # the header deadline (1 s), not the client
    assert 'path="(connection)",status="408"' in _metrics(port)


def test_malformed_framing_is_a_json_400(served) -> None:  # noqa: ANN001
    port, _ = served
    answer = _raw(port, b"POST /webhook/response HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nxx")
    assert answer.startswith(b"HTTP/1.1 400") and b'{"error": "malformed HTTP request' in answer
    assert 'status="500"' not in _metrics(port)


def test_clients_without_a_name_never_share_another_clients_history(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COOKIEBAKER_API_KEY", KEY)
    app, sfw, _ = make_app(tmp_path)
    client = TestClient(app, headers={"Authorization": f"Bearer {KEY}"})
    for body in ({"prompt": "omitted", "chat_id": 1}, {"prompt": "null", "chat_id": 1, "client_name": None}):
        assert client.post("/webhook/response", json=body).status_code == 200
    client.post("/webhook/response", json={"prompt": "I am default", "chat_id": 1, "client_name": "default"})
    store = app.state.service.store
    assert [t["content"] for t in store.recent(anonymous_client(KEY), "1", 10) if t["role"] == "user"] == [
        "omitted", "null"]  # the key's own history
    assert [t["content"] for t in store.recent("default", "1", 10) if t["role"] == "user"] == ["I am default"]
    assert store.recent("default", "1", 10) != store.recent(anonymous_client(KEY), "1", 10)
    for name in ("", "\x1fkey:" + anonymous_client(KEY)[5:], "tab\there"):
        answer = client.post("/webhook/response", json={"prompt": "x", "chat_id": 1, "client_name": name})
        assert answer.status_code == 422 and "client_name" in answer.json()["error"]
    assert anonymous_client("another key") != anonymous_client(KEY) and KEY not in anonymous_client(KEY)


UNSUPPORTED = {
    "n": ({"n": 2}, "'n'"),
    "logprobs": ({"logprobs": True, "top_logprobs": 3}, "'logprobs'"),
    "json": ({"response_format": {"type": "json_object"}}, "'response_format'"),
    "tools": ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"}, "'tools'"),
    "logit_bias": ({"logit_bias": {"123": 5}}, "'logit_bias'"),
    "audio": ({"modalities": ["text", "audio"]}, "'audio'"),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_openai_options_are_honoured_or_refused_by_name(tmp_path: Path, case: str) -> None:
    app, sfw, _ = make_app(tmp_path)
    client = TestClient(app)
    extra, named = UNSUPPORTED[case]
    body = {"model": "cookiebaker-sfw", "messages": [{"role": "user", "content": "hi"}], **extra}
    for stream in (False, True):
        answer = client.post("/v1/chat/completions", json={**body, "stream": stream})
        assert answer.status_code == 400 and named in answer.json()["error"]
    assert sfw.seen == []


class Penalized(Echo):
    penalties = True

    def prompt_tokens(self, messages, sampling):  # noqa: ANN001, ANN201
        return 3 * len(messages)

    def text_tokens(self, text):  # noqa: ANN001, ANN201
        return len(text.split())


def test_penalties_and_usage(tmp_path: Path) -> None:
    app, sfw, _ = make_app(tmp_path)
    client = TestClient(app)
    body = {"model": "cookiebaker-sfw", "messages": [{"role": "user", "content": "hi"}], "frequency_penalty": 0.5}
    answer = client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 400 and "frequency_penalty" in answer.json()["error"]  # Echo takes none
    assert client.post("/v1/chat/completions", json={**body, "frequency_penalty": 0, "stream_options":
                       {"include_usage": True}, "stream": True}).status_code == 400  # Echo counts no tokens
    app, sfw, _ = make_app(tmp_path, sfw=Penalized())
    client = TestClient(app)
    seen = []
    original = sfw.stream

    def recording(messages, sampling):  # noqa: ANN001, ANN202
        seen.append(sampling)
        return original(messages, sampling)

    sfw.stream = recording
    answer = client.post("/v1/chat/completions", json={**body, "presence_penalty": -1.5})
    assert answer.status_code == 200 and (seen[-1].frequency_penalty, seen[-1].presence_penalty) == (0.5, -1.5)
    assert answer.json()["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True,
                                                             "stream_options": {"include_usage": True}}) as stream:
        events = [line for line in stream.iter_lines() if line.startswith("data: {")]
    import json

    last = json.loads(events[-1].removeprefix("data: "))
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 5
    assert json.loads(events[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == "stop"
    ollama = client.post("/api/chat", json={"model": "cookiebaker-sfw", "stream": False, "format": "json",
                                            "messages": [{"role": "user", "content": "hi"}]})
    assert ollama.status_code == 400 and "'format'" in ollama.json()["error"]


def test_finish_reasons_are_honest_on_every_api(tiny_gguf: Path, tmp_path: Path) -> None:
    from cookiebaker.serve import ServeConfig, build_app

    app = build_app(ServeConfig(sfw_model=str(tiny_gguf), history_db=str(tmp_path / "h.sqlite3"), temperature=0))
    client = TestClient(app)
    messages = [{"role": "user", "content": "pizza tonight?"}]
    openai = client.post("/v1/chat/completions", json={"model": "cookiebaker-sfw", "messages": messages,
                                                       "max_tokens": 2})
    assert openai.json()["choices"][0]["finish_reason"] == "length"
    assert openai.json()["usage"]["completion_tokens"] == 2
    ollama = client.post("/api/chat", json={"model": "cookiebaker-sfw", "messages": messages, "stream": False,
                                            "options": {"num_predict": 2}})
    assert ollama.json()["done_reason"] == "length" and ollama.json()["eval_count"] == 2
    with client.stream("POST", "/v1/chat/completions", json={"model": "cookiebaker-sfw", "messages": messages,
                                                             "max_tokens": 2, "stream": True}) as stream:
        finishes = [line for line in stream.iter_lines() if '"finish_reason": "' in line]
    assert finishes and '"finish_reason": "length"' in finishes[-1]


def test_fitting_a_megabyte_takes_well_under_a_second(tiny_gguf: Path) -> None:
    from cookiebaker.backends import open_backend

    backend = open_backend(str(tiny_gguf), 512)
    sampling = backend.default.merged(max_tokens=16)
    for messages in ([{"role": "user", "content": "apple " * 170_000}],  # one message of a megabyte
                     [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " * 10}
                      for i in range(10_001)]):  # ten thousand messages
        started = time.perf_counter()
        fitted = backend.fit(messages, sampling, turn_tokens=200)
        seconds = time.perf_counter() - started
        assert backend.prompt_tokens(fitted.messages, sampling) <= 512 - 16 - 16
        assert seconds < 1.0, seconds


def test_a_broken_gguf_is_one_line_and_serve_says_where_it_serves_only_once_it_does(tiny_gguf: Path,
                                                                                     tmp_path: Path) -> None:
    gguf = next(tiny_gguf.glob("*.gguf"))
    broken = tmp_path / "trunc.gguf"
    broken.write_bytes(gguf.read_bytes()[:100_000])
    result = run_cli("serve", "--sfw-model", str(broken), "--port", "0", "--history-db", str(tmp_path / "h.db"))
    assert result.returncode == 1 and "Traceback" not in result.stderr and "serving on" not in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith(f"cookiebaker serve: error: {broken}: llama.cpp cannot")
    (tmp_path / "text.gguf").write_text("not a model")
    result = run_cli("eval", "--model", str(tmp_path / "text.gguf"), "--data", str(tmp_path / "x.parquet"),
                     "--split", str(tmp_path / "none.json"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    served = subprocess.Popen([str(Path(sys.executable).with_name("cookiebaker")), "serve", "--sfw-model", str(gguf),
                               "--port", "0", "--history-db", str(tmp_path / "h2.db")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        line = served.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:")
    finally:
        served.terminate()
        served.wait(10)


def test_the_smaller_things(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COOKIEBAKER_API_KEY", KEY)
    app, _, _ = make_app(tmp_path)
    client = TestClient(app)
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert client.get("/v1/models", headers={"Authorization": f"{scheme} {KEY}"}).status_code == 200
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}x"}).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    assert client.head("/healthz").status_code == 200
    bad = tmp_path / "bad\nname.json"
    bad.write_text("<html></html>")
    result = run_cli("ingest", str(bad), "-o", str(tmp_path / "m.parquet"))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1 and "bad\\nname.json" in result.stderr
