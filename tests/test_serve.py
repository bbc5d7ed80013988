from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from cookiebaker.backends import Backend, BackendUnavailable, Sampling, sampling_from_modelfile
from cookiebaker.errors import ConfigError
from cookiebaker.serve import ServeConfig, build_app, run


class Echo(Backend):
    """Deterministic: replies '[n] <last user text>' in two pieces, n = messages it was given."""

    description = "echo"

    def __init__(self, delay: float = 0.0, down: bool = False) -> None:
        self.delay, self.down = delay, down
        self.seen: list[list[dict]] = []
        self.default = Sampling(temperature=0.7, top_p=0.7, stop=["<end_of_turn>"])

    async def stream(self, messages, sampling):  # noqa: ANN001, ANN201
        if self.down:
            raise BackendUnavailable("the echo backend is down")
        self.seen.append(messages)
        await asyncio.sleep(self.delay)
        yield f"[{len(messages)}] "
        yield messages[-1]["content"]

    async def check(self) -> None:
        if self.down:
            raise BackendUnavailable("the echo backend is down")


def make_app(tmp_path: Path, **options):  # noqa: ANN201
    sfw, nsfw = options.pop("sfw", Echo()), options.pop("nsfw", Echo())
    options.setdefault("history_db", str(tmp_path / "h.sqlite3"))
    config = ServeConfig(sfw_model="x", nsfw_model="y", **options)
    return build_app(config, backends={"cookiebaker-sfw": sfw, "cookiebaker-nsfw": nsfw}), sfw, nsfw


def test_webhook_routes_by_sfw_and_keeps_history(tmp_path: Path) -> None:
    app, sfw, nsfw = make_app(tmp_path, history_turns=4)
    client = TestClient(app)
    first = client.post("/webhook/response", json={"prompt": "hi", "chat_id": 1, "sender_name": "Ann",
                                                   "client_name": "bot1"})
    assert first.status_code == 200
    assert first.json() == {"response": "[1] hi", "command": "", "model": "cookiebaker-sfw"}
    second = client.post("/webhook/response", json={"prompt": "again", "chat_id": 1, "client_name": "bot1", "sfw": True})
    assert second.json()["response"] == "[3] again"
    assert sfw.seen[-1][:2] == [{"role": "user", "content": "hi", "speaker": "Ann"},  # kept with its speaker
                                {"role": "assistant", "content": "[1] hi"}]
    crude = client.post("/webhook/response", json={"prompt": "oi", "chat_id": 1, "client_name": "bot1", "sfw": False})
    assert crude.json()["model"] == "cookiebaker-nsfw" and len(nsfw.seen) == 1
    # Another client with the same chat id sees none of it.
    other = client.post("/webhook/response", json={"prompt": "hello", "chat_id": 1, "client_name": "bot2"})
    assert other.json()["response"] == "[1] hello"
    for _ in range(5):
        client.post("/webhook/response", json={"prompt": "more", "chat_id": 1, "client_name": "bot1"})
    assert len(sfw.seen[-1]) == 5  # the last 4 turns + the new prompt


def test_speakers_are_shown_as_training_rendered_them(tmp_path: Path) -> None:
    """A webhook's sender_name and an OpenAI message's name become the speaker; the backend renders it with the same
    function as training (``chat.normalize``), and ``speakers: none`` never shows one."""
    from cookiebaker.chat import normalize

    app, sfw, _ = make_app(tmp_path)
    client = TestClient(app)
    client.post("/webhook/response", json={"prompt": "pizza?", "chat_id": 7, "sender_name": "Marta Quill",
                                           "sender_id": 42})
    client.post("/webhook/response", json={"prompt": "where?", "chat_id": 7, "sender_name": "Leo"})
    assert normalize(sfw.seen[-1], system_role=True) == [
        {"role": "user", "content": "Marta Quill: pizza?"}, {"role": "assistant", "content": "[1] pizza?"},
        {"role": "user", "content": "Leo: where?"}]
    client.post("/v1/chat/completions", json={"model": "cookiebaker-sfw", "messages": [
        {"role": "user", "content": "hi", "name": "Ann"}, {"role": "user", "content": "yo", "name": "Ben"}]})
    assert normalize(sfw.seen[-1], system_role=True) == [{"role": "user", "content": "Ann: hi\nBen: yo"}]
    app, sfw, _ = make_app(tmp_path, speakers="none")
    client = TestClient(app)
    client.post("/webhook/response", json={"prompt": "and you?", "chat_id": 8, "sender_name": "Ann"})
    client.post("/v1/chat/completions", json={"model": "cookiebaker-sfw", "messages": [
        {"role": "user", "content": "hi", "name": "Ann"}]})
    assert all("speaker" not in m for seen in sfw.seen for m in seen)


def test_a_history_database_of_an_earlier_version_gets_the_new_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # the table as cookiebaker 0.1 wrote it
        db.execute("CREATE TABLE cookiebaker_turns (id INTEGER PRIMARY KEY, client_name VARCHAR(200), "
                   "chat_id VARCHAR(200), role VARCHAR(16), content TEXT, created_at DATETIME)")
        db.execute("INSERT INTO cookiebaker_turns (client_name, chat_id, role, content) VALUES ('k', 'c', 'user', 'hi')")
    app, sfw, _ = make_app(tmp_path, history_db=str(path))
    reply = TestClient(app).post("/webhook/response", json={"prompt": "again", "chat_id": "c", "client_name": "k",
                                                           "sender_name": "Ann"})
    assert reply.status_code == 200
    assert sfw.seen[-1] == [{"role": "user", "content": "hi"}, {"role": "user", "content": "again", "speaker": "Ann"}]
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(cookiebaker_turns)")}
    assert {"speaker", "sender_id", "reply_to"} <= columns


def test_history_survives_a_restart(tmp_path: Path) -> None:
    app, _, _ = make_app(tmp_path)
    TestClient(app).post("/webhook/response", json={"prompt": "remember me", "chat_id": "c", "client_name": "k"})
    app, sfw, _ = make_app(tmp_path)
    TestClient(app).post("/webhook/response", json={"prompt": "well?", "chat_id": "c", "client_name": "k"})
    assert sfw.seen[0][0] == {"role": "user", "content": "remember me"}


def test_history_is_bounded(tmp_path: Path) -> None:
    app, _, _ = make_app(tmp_path, max_stored_turns=4)
    client = TestClient(app)
    for i in range(6):
        client.post("/webhook/response", json={"prompt": f"p{i}", "chat_id": "c", "client_name": "k"})
    assert len(app.state.service.store.recent("k", "c", 100)) == 4


@pytest.mark.parametrize(("body", "status"), [
    (b"{not json", 400), (b"[1, 2]", 400), (json.dumps({"chat_id": 1}).encode(), 422),
    (json.dumps({"prompt": "x"}).encode(), 422), (json.dumps({"prompt": "x", "chat_id": 1, "sfw": "yes"}).encode(), 422),
])
def test_webhook_rejects_bad_bodies(tmp_path: Path, body: bytes, status: int) -> None:
    app, _, _ = make_app(tmp_path)
    response = TestClient(app).post("/webhook/response", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status and "error" in response.json()


def test_body_limit_auth_and_health(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COOKIEBAKER_API_KEY", "s3cret")
    app, _, _ = make_app(tmp_path, max_body_bytes=2048)
    client = TestClient(app)
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/tags").status_code == 401
    assert client.post("/webhook/response", json={"prompt": "x", "chat_id": 1}).status_code == 401
    auth = {"Authorization": "Bearer s3cret"}
    assert client.post("/webhook/response", json={"prompt": "x", "chat_id": 1}, headers=auth).status_code == 200
    big = client.post("/webhook/response", json={"prompt": "x" * 5000, "chat_id": 1}, headers=auth)
    assert big.status_code == 413
    metrics = client.get("/metrics", headers=auth)
    assert metrics.status_code == 200 and "cookiebaker_requests_total" in metrics.text


def test_non_loopback_needs_a_key(monkeypatch) -> None:
    monkeypatch.delenv("COOKIEBAKER_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="COOKIEBAKER_API_KEY"):
        run(ServeConfig(sfw_model="x", host="0.0.0.0"))


def test_ollama_api(tmp_path: Path) -> None:
    app, _, _ = make_app(tmp_path)
    client = TestClient(app)
    names = [m["name"] for m in client.get("/api/tags").json()["models"]]
    assert names == ["cookiebaker-sfw", "cookiebaker-nsfw"]
    body = {"model": "cookiebaker-nsfw", "messages": [{"role": "user", "content": "yo"}], "stream": False}
    reply = client.post("/api/chat", json=body).json()
    assert reply["message"] == {"role": "assistant", "content": "[1] yo"} and reply["done"] is True
    with client.stream("POST", "/api/chat", json={**body, "stream": True}) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert "".join(line["message"]["content"] for line in lines) == "[1] yo" and lines[-1]["done"] is True
    assert client.post("/api/chat", json={**body, "model": "llama3"}).status_code == 404
    assert client.post("/api/chat", json={**body, "messages": []}).status_code == 422


def test_openai_api(tmp_path: Path) -> None:
    app, _, _ = make_app(tmp_path)
    client = TestClient(app)
    body = {"model": "cookiebaker-sfw", "messages": [{"role": "user", "content": "hey"}]}
    reply = client.post("/v1/chat/completions", json=body).json()
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["content"] == "[1] hey"
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "[1] hey"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["cookiebaker-sfw", "cookiebaker-nsfw"]


def test_openai_client_library(tmp_path: Path) -> None:
    """The official OpenAI client talks to the service unchanged."""
    import openai

    app, _, _ = make_app(tmp_path)
    client = openai.OpenAI(api_key="unused", base_url="http://testserver/v1", http_client=TestClient(app))
    reply = client.chat.completions.create(model="cookiebaker-sfw", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "[1] hi"


def test_backend_down_and_timeout(tmp_path: Path) -> None:
    app, _, _ = make_app(tmp_path, sfw=Echo(down=True), nsfw=Echo(delay=2.0), timeout_seconds=0.3)
    client = TestClient(app)
    down = client.post("/webhook/response", json={"prompt": "x", "chat_id": 1})
    assert down.status_code == 503 and "down" in down.json()["error"]
    stream = client.post("/api/chat", json={"model": "cookiebaker-sfw", "messages": [{"role": "user", "content": "x"}]})
    assert stream.status_code == 503
    slow = client.post("/webhook/response", json={"prompt": "x", "chat_id": 1, "sfw": False})
    assert slow.status_code == 504


async def _many_clients(app, n: int) -> list[httpx.Response]:  # noqa: ANN001
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        async def one(i: int) -> httpx.Response:
            await client.post("/webhook/response", json={"prompt": f"first {i}", "chat_id": "shared",
                                                         "client_name": f"client{i}"})
            return await client.post("/webhook/response", json={"prompt": f"second {i}", "chat_id": "shared",
                                                                "client_name": f"client{i}"})
        return await asyncio.gather(*(one(i) for i in range(n)))


def test_concurrent_clients_never_share_history(tmp_path: Path) -> None:
    app, sfw, _ = make_app(tmp_path, sfw=Echo(delay=0.01), queue_size=64)
    responses = asyncio.run(_many_clients(app, 20))
    assert all(r.status_code == 200 for r in responses)
    assert sorted(r.json()["response"] for r in responses) == sorted(f"[3] second {i}" for i in range(20))
    for messages in sfw.seen:
        numbers = {m["content"].split()[-1] for m in messages}
        assert len(numbers) == 1  # one client's turns only


def test_queue_is_bounded(tmp_path: Path) -> None:
    app, _, _ = make_app(tmp_path, sfw=Echo(delay=0.3), queue_size=2)

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            responses = await asyncio.gather(*(client.post("/webhook/response", json={"prompt": "x", "chat_id": i})
                                               for i in range(5)))
        return [r.status_code for r in responses]

    codes = asyncio.run(burst())
    assert codes.count(200) == 2 and codes.count(503) == 3


def test_modelfile_sampling(tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text('FROM ./m.gguf\nSYSTEM """Be kind."""\nPARAMETER temperature 0.5\n'
                                        'PARAMETER top_p 0.9\nPARAMETER stop "<end_of_turn>"\nPARAMETER stop "<eos>"\n')
    sampling = sampling_from_modelfile(tmp_path / "Modelfile")
    assert (sampling.temperature, sampling.top_p, sampling.stop, sampling.system) == (0.5, 0.9, ["<end_of_turn>", "<eos>"],
                                                                                     "Be kind.")


def test_a_real_gguf_end_to_end(tiny_merged: Path, tmp_path: Path) -> None:
    from cookiebaker import export

    export.run(export.ExportConfig(model=str(tiny_merged), output_dir=str(tmp_path / "gguf"), name="t", check=False))
    config = ServeConfig(sfw_model=str(tmp_path / "gguf"), nsfw_model=str(tmp_path / "gguf" / "t.f16.gguf"),
                         history_db=str(tmp_path / "h.sqlite3"), max_tokens=8, temperature=0)
    client = TestClient(build_app(config))
    health = client.get("/healthz").json()
    assert health["models"] == {"cookiebaker-sfw": "gguf:t.f16.gguf", "cookiebaker-nsfw": "gguf:t.f16.gguf"}
    reply = client.post("/webhook/response", json={"prompt": "pizza tonight?", "chat_id": 7})
    assert reply.status_code == 200 and reply.json()["model"] == "cookiebaker-sfw"
    # Greedy: the service answers exactly what llama.cpp generates for that chat on its own.
    from cookiebaker.backends import open_backend

    direct = open_backend(str(tmp_path / "gguf"))
    expected = direct.reply([{"role": "user", "content": "pizza tonight?"}], direct.default.merged(max_tokens=8,
                                                                                                    temperature=0))
    assert reply.json()["response"] == expected.text
    body = {"model": "cookiebaker-nsfw", "messages": [{"role": "user", "content": "bring snacks"}], "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert [line for line in response.iter_lines() if line.startswith("data: ")][-1] == "data: [DONE]"


def test_ollama_backend_against_a_fake_ollama(tmp_path: Path, monkeypatch) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[dict] = []

    class FakeOllama(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"version": "0.9.0"}')

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            if body["model"] != "cookiebaker-sfw":
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.end_headers()
            for piece in ("Hel", "lo"):
                self.wfile.write((json.dumps({"message": {"role": "assistant", "content": piece}, "done": False})
                                  + "\n").encode())
            self.wfile.write(b'{"done": true}\n')

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOllama)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{server.server_port}")
    try:
        config = ServeConfig(sfw_model="ollama:cookiebaker-sfw", nsfw_model="ollama:missing",
                             history_db=str(tmp_path / "h.sqlite3"), timeout_seconds=10)
        client = TestClient(build_app(config))
        reply = client.post("/webhook/response", json={"prompt": "hi", "chat_id": 1})
        assert reply.status_code == 200 and reply.json()["response"] == "Hello"
        assert seen[0]["messages"] == [{"role": "user", "content": "hi"}] and seen[0]["options"]["temperature"] == 0.7
        missing = client.post("/webhook/response", json={"prompt": "hi", "chat_id": 1, "sfw": False})
        assert missing.status_code == 503 and "no model missing" in missing.json()["error"]
    finally:
        server.shutdown()
        server.server_close()
    down = TestClient(build_app(config)).post("/webhook/response", json={"prompt": "hi", "chat_id": 2})
    assert down.status_code == 503 and "not answering" in down.json()["error"]


def test_the_same_model_for_both_routes_is_loaded_once(tmp_path: Path, monkeypatch) -> None:
    import cookiebaker.backends

    opened = []
    monkeypatch.setattr(cookiebaker.backends, "open_backend", lambda reference, n_ctx=4096: opened.append(reference) or Echo())
    config = ServeConfig(sfw_model="one.gguf", nsfw_model="one.gguf", history_db=str(tmp_path / "h.sqlite3"))
    build_app(config)
    assert opened == ["one.gguf"]
    opened.clear()
    build_app(config.model_copy(update={"nsfw_model": "two.gguf"}))
    assert opened == ["one.gguf", "two.gguf"]


def test_metrics_are_labelled_by_route_template_not_raw_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COOKIEBAKER_API_KEY", "k")
    app, _, _ = make_app(tmp_path)
    client = TestClient(app)
    for i in range(50):  # keyless callers probing random paths
        assert client.get(f"/x{i}-probe").status_code == 401
    assert client.get("/nope", headers={"Authorization": "Bearer k"}).status_code == 404
    assert client.post("/webhook/response", json={"prompt": "hi", "chat_id": 1},
                       headers={"Authorization": "Bearer k"}).status_code == 200
    metrics = client.get("/metrics", headers={"Authorization": "Bearer k"}).text
    assert "probe" not in metrics and "/nope" not in metrics
    assert 'cookiebaker_requests_total{path="unmatched",status="401"} 50.0' in metrics
    assert 'cookiebaker_requests_total{path="/webhook/response",status="200"} 1.0' in metrics


def test_a_chunked_body_is_refused_while_it_is_read(tmp_path: Path) -> None:
    """No content-length: the 1 MB limit still applies as the chunks arrive, not after the whole body."""
    import socket

    from conftest import serve_in_thread

    app, _, _ = make_app(tmp_path, max_body_bytes=1_000_000)
    port, server = serve_in_thread(app)
    sent, chunk = 0, b"x" * 65536
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(b"POST /webhook/response HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n")
            connection.settimeout(0.01)
            answer = b""
            while sent < 50_000_000 and b"\r\n\r\n" not in answer:
                try:
                    connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
                except OSError:
                    break
                try:
                    answer += connection.recv(65536)
                except (TimeoutError, socket.timeout, BlockingIOError):
                    pass
            connection.settimeout(10)
            while b"\r\n\r\n" not in answer:
                answer += connection.recv(65536)
    finally:
        server.should_exit = True
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 5_000_000, sent  # answered after about a megabyte, not after the 50 MB the client had


HOSTILE = {
    "deep nesting": ("/webhook/response", '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + ', "chat_id": 1}'),
    "huge chat_id": ("/webhook/response", '{"prompt": "hi", "chat_id": ' + "9" * 5000 + "}"),
    "huge max_tokens": ("/v1/chat/completions", '{"model": "cookiebaker-sfw", "max_tokens": ' + "9" * 5000 +
                        ', "messages": [{"role": "user", "content": "hi"}]}'),
    "lone surrogate in prompt": ("/webhook/response", '{"prompt": "a\\ud800b", "chat_id": 1}'),
    "lone surrogate in client_name": ("/webhook/response", '{"prompt": "hi", "chat_id": 1, "client_name": "\\udfff"}'),
    "lone surrogate in content": ("/api/chat", '{"model": "cookiebaker-sfw", "stream": false, '
                                  '"messages": [{"role": "user", "content": "\\ud800"}]}'),
    "model as a number": ("/v1/chat/completions", '{"model": 5, "messages": [{"role": "user", "content": "hi"}]}'),
    "model as a list": ("/api/chat", '{"model": ["x"], "messages": [{"role": "user", "content": "hi"}]}'),
    "model as an object": ("/api/chat", '{"model": {}, "messages": [{"role": "user", "content": "hi"}]}'),
    "max_tokens as text": ("/v1/chat/completions", '{"model": "cookiebaker-sfw", "max_tokens": "10", '
                           '"messages": [{"role": "user", "content": "hi"}]}'),
    "max_tokens as a list": ("/v1/chat/completions", '{"model": "cookiebaker-sfw", "max_tokens": [1], '
                             '"messages": [{"role": "user", "content": "hi"}]}'),
    "temperature NaN": ("/v1/chat/completions", '{"model": "cookiebaker-sfw", "temperature": "NaN", '
                        '"messages": [{"role": "user", "content": "hi"}]}'),
    "temperature text": ("/v1/chat/completions", '{"model": "cookiebaker-sfw", "temperature": "abc", '
                         '"messages": [{"role": "user", "content": "hi"}]}'),
    "top_p text": ("/v1/chat/completions", '{"model": "cookiebaker-sfw", "top_p": "x", '
                   '"messages": [{"role": "user", "content": "hi"}]}'),
    "stop as a number": ("/v1/chat/completions", '{"model": "cookiebaker-sfw", "stop": 5, '
                         '"messages": [{"role": "user", "content": "hi"}]}'),
    "stop as numbers": ("/v1/chat/completions", '{"model": "cookiebaker-sfw", "stop": [1, 2], '
                        '"messages": [{"role": "user", "content": "hi"}]}'),
    "stop as an object": ("/v1/chat/completions", '{"model": "cookiebaker-sfw", "stop": {}, '
                          '"messages": [{"role": "user", "content": "hi"}]}'),
    "options as a list": ("/api/chat", '{"model": "cookiebaker-sfw", "options": [], '
                          '"messages": [{"role": "user", "content": "hi"}]}'),
    "options as text": ("/api/chat", '{"model": "cookiebaker-sfw", "options": "x", '
                        '"messages": [{"role": "user", "content": "hi"}]}'),
    "options as a number": ("/api/chat", '{"model": "cookiebaker-sfw", "options": 3, '
                            '"messages": [{"role": "user", "content": "hi"}]}'),
    "num_predict as text": ("/api/chat", '{"model": "cookiebaker-sfw", "options": {"num_predict": "5"}, '
                            '"messages": [{"role": "user", "content": "hi"}]}'),
    "stream as text": ("/v1/chat/completions", '{"model": "cookiebaker-sfw", "stream": "no", '
                       '"messages": [{"role": "user", "content": "hi"}]}'),
    "stream as text, Ollama": ("/api/chat", '{"model": "cookiebaker-sfw", "stream": "no", '
                               '"messages": [{"role": "user", "content": "hi"}]}'),
    "chat_id longer than a history key": ("/webhook/response", '{"prompt": "hi", "chat_id": "' + "c" * 201 + '"}'),
    "chat_id of 300 digits": ("/webhook/response", '{"prompt": "hi", "chat_id": ' + "9" * 300 + "}"),
    "chat_id true": ("/webhook/response", '{"prompt": "hi", "chat_id": true}'),
    "role tool": ("/api/chat", '{"model": "cookiebaker-sfw", "messages": [{"role": "tool", "content": "hi"}]}'),
    "image part": ("/v1/chat/completions", '{"model": "cookiebaker-sfw", "messages": [{"role": "user", '
                   '"content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}'),
    "NaN literal": ("/v1/chat/completions", '{"model": "cookiebaker-sfw", "temperature": NaN, '
                    '"messages": [{"role": "user", "content": "hi"}]}'),
    "num_predict 0": ("/api/chat", '{"model": "cookiebaker-sfw", "options": {"num_predict": 0}, '
                      '"messages": [{"role": "user", "content": "hi"}]}'),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_bodies_get_a_4xx_with_a_json_error_and_are_counted(tmp_path: Path, case: str) -> None:
    app, sfw, _ = make_app(tmp_path)
    client = TestClient(app, raise_server_exceptions=False)
    path, body = HOSTILE[case]
    response = client.post(path, content=body.encode(), headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text[:200])
    assert "error" in response.json()
    assert not sfw.seen  # nothing reached the model
    metrics = client.get("/metrics").text
    assert f'status="{response.status_code}"' in metrics


def test_a_bad_body_is_one_line_naming_every_bad_field(tmp_path: Path) -> None:
    app, _, _ = make_app(tmp_path)
    body = {"model": 5, "temperature": "hot", "stop": [1], "messages": [{"role": "user", "content": "hi"},
                                                                          {"role": "robot", "content": 3}]}
    response = TestClient(app).post("/v1/chat/completions", json=body)
    assert response.status_code == 422
    assert response.json()["error"] == (
        "'model' must be a string (cookiebaker-sfw or cookiebaker-nsfw); 'messages[1].role' must be system, user or "
        "assistant; 'messages[1].content' must be a string (or a list of text parts); 'temperature' must be a number "
        "in [0, 100]; 'stop' must be a string or a list of strings")


def test_text_parts_and_ollamas_unlimited_num_predict(tmp_path: Path) -> None:
    app, sfw, _ = make_app(tmp_path, max_tokens_limit=77)
    seen = []

    async def recording(messages, sampling):  # noqa: ANN001, ANN202
        seen.append((messages, sampling.max_tokens))
        yield "ok"

    sfw.stream = recording
    client = TestClient(app)
    parts = [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]
    assert client.post("/v1/chat/completions", json={"model": "cookiebaker-sfw", "messages": [
        {"role": "user", "content": parts}]}).status_code == 200
    assert client.post("/api/chat", json={"model": "cookiebaker-sfw", "stream": False, "options": {"num_predict": -1},
                                          "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    assert seen[0][0] == [{"role": "user", "content": "hello there"}] and seen[1][1] == 77


def test_max_tokens_is_capped_by_the_service(tmp_path: Path) -> None:
    app, sfw, _ = make_app(tmp_path, max_tokens_limit=100)
    seen = []

    async def recording(messages, sampling):  # noqa: ANN001, ANN202
        seen.append(sampling.max_tokens)
        yield "ok"

    sfw.stream = recording
    client = TestClient(app)
    body = {"model": "cookiebaker-sfw", "max_tokens": 4000, "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert seen == [100]


class Endless(Backend):
    """Generates in a worker thread, one piece every 10 ms, until told to stop (as the llama.cpp backend does)."""

    description = "endless"

    def __init__(self) -> None:
        import threading

        self.produced, self.running, self.lock = 0, 0, threading.Lock()
        self.default = Sampling()

    def stream(self, messages, sampling):  # noqa: ANN001, ANN201
        import time

        from cookiebaker.backends import iterate_in_thread

        def generate(stop):  # noqa: ANN001, ANN202
            with self.lock:
                self.running += 1
                try:
                    for _ in range(sampling.max_tokens):
                        time.sleep(0.01)
                        self.produced += 1
                        yield "x"
                        if stop.is_set():
                            return
                finally:
                    self.running -= 1

        return iterate_in_thread(generate)  # closing it ends the generation


def _settled(backend: Endless, seconds: float = 5.0) -> bool:
    """Within ``seconds``, no generation running and none produced for 0.3 s (the thread may start late)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        before = backend.produced
        time.sleep(0.3)
        if backend.running == 0 and backend.produced == before:
            return True
    return False


def test_a_dropped_stream_stops_its_generation_and_frees_the_model(tmp_path: Path) -> None:
    import socket

    from conftest import serve_in_thread

    backend = Endless()
    app, _, _ = make_app(tmp_path, sfw=backend, max_tokens_limit=100_000)
    port, server = serve_in_thread(app)
    body = json.dumps({"model": "cookiebaker-sfw", "stream": True, "max_tokens": 100_000,
                       "messages": [{"role": "user", "content": "".join(map(chr, range(1, 32)))}]}).encode()
    try:
        for _ in range(4):  # clients that read the first chunk and hang up
            with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
                connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                                   b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                received = b""
                while b"data: " not in received:
                    received += connection.recv(4096)
            assert _settled(backend), ("the generation went on after the client left", backend.running, backend.produced)
            assert backend.produced < 2_000
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=10, json={
            "model": "cookiebaker-sfw", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == "x" * 8
    finally:
        server.should_exit = True


def test_a_timed_out_request_stops_its_generation(tmp_path: Path) -> None:
    backend = Endless()
    app, _, _ = make_app(tmp_path, sfw=backend, timeout_seconds=0.3, max_tokens=100_000, max_tokens_limit=100_000)
    client = TestClient(app)
    assert client.post("/webhook/response", json={"prompt": "hi", "chat_id": 1}).status_code == 504
    assert _settled(backend)
    assert client.get("/metrics").text.count('cookiebaker_queue_depth{model="cookiebaker-sfw"} 0.0') == 1


# ---- Fitting the context (issue 13, item 2): the newest turns are kept, a poisoned chat heals by itself ----

def _words(messages: list[dict]) -> int:
    """A stand-in tokenizer: one token per word, four per message of markup."""
    return sum(len(m["content"].split()) + 4 for m in messages)


def _conversation(sizes: list[int]) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": " ".join([f"w{i}"] * size)}
            for i, size in enumerate(sizes)]


@pytest.mark.parametrize("seed", range(30))
def test_fit_keeps_the_longest_newest_run_that_fits(seed: int) -> None:
    """Oracle: the kept turns are the longest suffix that fits (less a leading assistant turn), found by trying
    every suffix."""
    import random

    from cookiebaker.backends import fit_to_context

    rng = random.Random(seed)
    messages = _conversation([rng.randint(0, 40) for _ in range(rng.randint(1, 25))])
    budget = rng.randint(10, 300)
    fitted = fit_to_context(messages, _words, budget)
    assert _words(fitted.messages) <= budget
    suffixes = [k for k in range(len(messages), 0, -1) if _words(messages[-k:]) <= budget]
    if suffixes:
        expected = messages[-suffixes[0]:]
        if len(expected) > 1 and expected[0]["role"] == "assistant":
            expected = expected[1:]
        assert fitted.messages == expected and fitted.cut == 0
        assert fitted.dropped == len(messages) - len(expected)
    else:  # the newest alone is too long: its end is kept, as much of it as fits
        newest = messages[-1]["content"]
        assert len(fitted.messages) == 1 and fitted.cut == 1 and newest.endswith(fitted.messages[0]["content"])
        longer = newest[-(len(fitted.messages[0]["content"]) + 1):]
        assert _words([{"role": "user", "content": longer}]) > budget or longer == newest


def test_fit_keeps_the_clients_system_message_while_it_fits() -> None:
    from cookiebaker.backends import ContextOverflow, fit_to_context

    system = {"role": "system", "content": "be brief " * 5}
    messages = [system, *_conversation([30, 30, 5])]
    fitted = fit_to_context(messages, _words, 30)
    assert fitted.messages[0] == system and fitted.messages[1:] == messages[-1:] and fitted.dropped == 2
    alone = fit_to_context([system, *_conversation([100])], _words, 12)  # no room for the system text: left out
    assert alone.messages[0]["role"] == "user" and alone.dropped == 1 and alone.cut == 1
    with pytest.raises(ContextOverflow):
        fit_to_context(_conversation([1]), _words, 3)


def test_earlier_turns_are_cut_to_their_end_the_newest_is_not() -> None:
    from cookiebaker.backends import cap_turns

    def count(text: str) -> int:
        return len(text.split())

    messages = [{"role": "system", "content": "s " * 50}, *_conversation([3, 40, 12, 60])]
    capped, cut = cap_turns(messages, count, 10)
    assert cut == 2 and capped[0] == messages[0] and capped[-1] == messages[-1]
    for before, after in zip(messages[1:-1], capped[1:-1]):
        assert before["content"].endswith(after["content"]) and count(after["content"]) <= 10
        longer = before["content"][-(len(after["content"]) + 1):]
        assert count(longer) > 10 or longer == before["content"]


class Counting(Echo):
    """Echo with a context: one token per word, four per message."""

    context_length = 1000

    def prompt_tokens(self, messages, sampling):  # noqa: ANN001, ANN201
        return _words(self.prepare(messages, sampling))

    def text_tokens(self, text):  # noqa: ANN001, ANN201
        return len(text.split())


def test_a_poisoned_chat_heals_one_huge_message_is_cut_in_history(tmp_path: Path) -> None:
    app, sfw, _ = make_app(tmp_path, sfw=Counting(), max_tokens=100, turn_tokens=20)
    client = TestClient(app)
    poison = {"prompt": "apple " * 2500 + "?", "chat_id": "poison", "client_name": "pz"}
    assert client.post("/webhook/response", json=poison).status_code == 200
    assert sfw.seen[-1][-1]["content"].endswith("apple ?") and len(sfw.seen[-1][-1]["content"].split()) < 900
    assert client.post("/webhook/response", json={**poison, "prompt": "pizza tonight?"}).status_code == 200
    sent = sfw.seen[-1]
    assert sent[-1]["content"] == "pizza tonight?" and all(len(m["content"].split()) <= 20 for m in sent[:-1])
    metrics = client.get("/metrics").text
    assert 'cookiebaker_context_cut_total{model="cookiebaker-sfw",part="text"} 3.0' in metrics


def test_llama_prompt_count_equals_what_llama_cpp_reads(tiny_gguf: Path) -> None:
    """Oracle: the backend's count of a prompt equals the prompt tokens llama.cpp reports for it."""
    from cookiebaker.backends import open_backend

    backend = open_backend(str(tiny_gguf))
    sampling = backend.default.merged(max_tokens=1, temperature=0)
    for messages in ([{"role": "user", "content": "pizza tonight?"}],
                     [{"role": "system", "content": "be short"}, {"role": "user", "content": "a"},
                      {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"},
                      {"role": "user", "content": "apple " * 50}]):
        usage = backend.llm.create_chat_completion(**backend._request(messages, sampling, False))["usage"]
        assert backend.prompt_tokens(messages, sampling) == usage["prompt_tokens"]


def test_prompts_and_histories_longer_than_the_context_are_cut_and_counted(tiny_gguf: Path, tmp_path: Path) -> None:
    config = ServeConfig(sfw_model=str(tiny_gguf), history_db=str(tmp_path / "h.sqlite3"), max_tokens=4,
                         temperature=0, context_tokens=512)
    client = TestClient(build_app(config))
    poison = {"prompt": "apple " * 2500 + "?", "chat_id": "poison", "client_name": "pz"}
    for _ in range(3):  # the poisoned chat keeps answering: its history is cut, newest turns first
        assert client.post("/webhook/response", json=poison).status_code == 200
    assert client.post("/webhook/response", json={**poison, "prompt": "and now?"}).status_code == 200
    many = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"} for i in range(10_001)]
    big = [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}, {"role": "user", "content": "z"},
           {"role": "user", "content": "word " * 20_000}]  # 100 KB, and two user turns in a row (Gemma's template)
    for messages in (many, big):
        for stream in (False, True):
            body = {"model": "cookiebaker-sfw", "messages": messages, "stream": stream}
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text[:300]
            if stream:
                assert response.text.rstrip().endswith("data: [DONE]")
    metrics = client.get("/metrics").text
    turns = [line for line in metrics.splitlines() if line.startswith('cookiebaker_context_cut_total{model="cookiebaker-sfw",part="turns"}')]
    text = [line for line in metrics.splitlines() if line.startswith('cookiebaker_context_cut_total{model="cookiebaker-sfw",part="text"}')]
    assert float(turns[0].split()[-1]) >= 2 * 9_900 and float(text[0].split()[-1]) >= 3
    assert 'status="500"' not in metrics


class SlowToStop(Endless):
    """Sees the stop request only 0.3 s after it is made (a long piece, a prompt being read)."""

    def stream(self, messages, sampling):  # noqa: ANN001, ANN201
        import time

        from cookiebaker.backends import iterate_in_thread

        def generate(stop):  # noqa: ANN001, ANN202
            self.running += 1
            try:
                while True:
                    yield "x"
                    if stop.is_set():
                        time.sleep(0.3)
                        return
            finally:
                self.running -= 1

        return iterate_in_thread(generate)  # closing it ends the generation


def test_a_generation_counts_against_the_queue_until_it_has_ended(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from cookiebaker.serve.responders import Responders

    backend = SlowToStop()
    responders = Responders({"m": backend}, {"m": Sampling()}, queue_size=1, timeout=10, registry=CollectorRegistry())

    async def leave_early() -> None:
        pieces = responders.stream("m", [{"role": "user", "content": "hi"}], Sampling()).__aiter__()
        await pieces.__anext__()
        await pieces.aclose()
        assert backend.running == 0 and responders.pending["m"] == 0

    asyncio.run(leave_early())


def turns_and_forgetting(client: TestClient, sfw: Echo, store) -> None:  # noqa: ANN001
    """/webhook/turn stores context with its speaker and answers nothing; /webhook/forget deletes one person's
    turns in one chat (and the replies to them), nobody else's. Shared by the SQLite and PostgreSQL tests."""
    said = lambda body: client.post("/webhook/turn", json={"chat_id": 5, "client_name": "bot", **body})  # noqa: E731
    assert said({"prompt": "pizza?", "sender_name": "Ann", "sender_id": "user1"}).json() == {"stored": 1}
    assert said({"prompt": "yes!", "sender_name": "Bob", "sender_id": "user2"}).json() == {"stored": 1}
    assert sfw.seen == []  # nothing generated
    answered = client.post("/webhook/response", json={"prompt": "where?", "chat_id": 5, "client_name": "bot",
                                                      "sender_name": "Ann", "sender_id": "user1"})
    assert answered.status_code == 200
    assert sfw.seen[-1] == [{"role": "user", "content": "pizza?", "speaker": "Ann"},
                            {"role": "user", "content": "yes!", "speaker": "Bob"},
                            {"role": "user", "content": "where?", "speaker": "Ann"}]  # no sender ids shown
    assert said({"prompt": "in town", "sender_name": "Bob", "sender_id": "user2"}).status_code == 200
    client.post("/webhook/turn", json={"chat_id": 6, "client_name": "bot", "prompt": "other chat", "sender_id": "user1"})
    gone = client.post("/webhook/forget", json={"chat_id": 5, "client_name": "bot", "sender_id": "user1"})
    assert gone.json() == {"deleted": 3}  # Ann's two turns and the reply to her question
    assert store.recent("bot", "5", 10) == [{"role": "user", "content": "yes!", "speaker": "Bob"},
                                            {"role": "user", "content": "in town", "speaker": "Bob"}]
    assert [t["content"] for t in store.recent("bot", "6", 10)] == ["other chat"]  # another chat: kept
    assert client.post("/webhook/forget", json={"chat_id": 5, "client_name": "bot", "sender_id": "user1"}).json() == \
        {"deleted": 0}
    refused = client.post("/webhook/forget", json={"chat_id": 5, "client_name": "bot"})
    assert refused.status_code == 422 and "sender_id" in refused.json()["error"]


def test_turns_without_replies_and_forgetting(tmp_path: Path) -> None:
    app, sfw, _ = make_app(tmp_path)
    turns_and_forgetting(TestClient(app), sfw, app.state.service.store)
