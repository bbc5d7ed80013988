"""The n8n workflow in a real n8n (`make n8n` installs it under .n8n/), against `cookiebaker serve` on a real GGUF.

The workflow and its credential are imported with the README's command (n8n/import.sh); the webhook is then
called through n8n for both routes, and cookiebaker's side of every call is recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from conftest import REPO, free_port, missing, serve_in_thread

from cookiebaker.serve import ServeConfig, build_app

N8N = REPO / ".n8n" / "n8n"
KEY = "n8n-test-key"


class Recorder:
    """ASGI wrapper: keeps (path, JSON body) of every request cookiebaker receives, and its Authorization."""

    def __init__(self, app) -> None:  # noqa: ANN001
        self.app, self.calls, self.authorizations = app, [], []

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        self.calls.append((scope["path"], json.loads(body) if body else None))
        self.authorizations.append(dict(scope["headers"]).get(b"authorization", b"").decode())
        replayed = False

        async def replay():  # noqa: ANN202
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


@pytest.fixture()
def n8n_command() -> Path:
    if not N8N.is_file():
        missing("n8n", "`make test` runs `make n8n` first (Node 24 and n8n under .n8n/)")
    return N8N


def _start_cookiebaker(model: Path, tmp_path: Path, monkeypatch) -> tuple[Recorder, int, uvicorn.Server]:  # noqa: ANN001
    monkeypatch.setenv("COOKIEBAKER_API_KEY", KEY)
    config = ServeConfig(sfw_model=str(model), nsfw_model=str(model), history_db=str(tmp_path / "history.sqlite3"),
                         max_tokens=12)
    recorder = Recorder(build_app(config))
    port, server = serve_in_thread(recorder)
    return recorder, port, server


def _wait_for_the_webhook(base: str, process: subprocess.Popen, log: Path) -> None:
    """Until the published workflow's webhook is registered: n8n answers a GET to a POST-only webhook with a
    hint, and an unknown path with a plain 404."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, f"n8n stopped: {log.read_text()[-3000:]}"
        try:
            if "POST" in httpx.get(f"{base}/webhook/response", timeout=2).text:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the workflow's webhook was not registered within 180 s: {log.read_text()[-3000:]}")


def _chat_calls(recorder: Recorder) -> list[dict]:
    return [body for path, body in recorder.calls if path == "/api/chat"]


def test_workflow_answers_both_routes_with_chat_memory(n8n_command: Path, tiny_gguf: Path, tmp_path: Path,
                                                       monkeypatch) -> None:
    recorder, serve_port, server = _start_cookiebaker(tiny_gguf, tmp_path, monkeypatch)
    n8n_port, broker_port = free_port(), free_port()
    env = {**os.environ, "N8N_USER_FOLDER": str(tmp_path / "n8n"), "N8N_PORT": str(n8n_port),
           "N8N_LISTEN_ADDRESS": "127.0.0.1", "N8N_DIAGNOSTICS_ENABLED": "false",
           "N8N_RUNNERS_BROKER_PORT": str(broker_port), "N8N_PERSONALIZATION_ENABLED": "false",
           "N8N": str(n8n_command), "COOKIEBAKER_URL": f"http://127.0.0.1:{serve_port}", "COOKIEBAKER_API_KEY": KEY}
    # The README's command, as a user runs it (before n8n starts: published workflows load at start).
    imported = subprocess.run(["sh", str(REPO / "n8n" / "import.sh")], env=env, capture_output=True, text=True,
                              timeout=300)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    log = tmp_path / "n8n.log"
    with log.open("w") as output:
        process = subprocess.Popen([str(n8n_command), "start"], env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{n8n_port}"
        _wait_for_the_webhook(base, process, log)

        def ask(prompt: str, chat_id: str, sfw: bool | None) -> dict:
            body = {"prompt": prompt, "chat_id": chat_id, "sender_name": "Ann", "client_name": "n8n-test"}
            if sfw is not None:
                body["sfw"] = sfw
            before = len(_chat_calls(recorder))
            reply = httpx.post(f"{base}/webhook/response", json=body, timeout=180)
            assert reply.status_code == 200, reply.text
            answer = reply.json()
            assert set(answer) == {"response", "command", "model"} and answer["command"] == ""
            assert isinstance(answer["response"], str)
            calls = _chat_calls(recorder)
            assert len(calls) == before + 1, "cookiebaker did not receive the call"
            assert calls[-1]["model"] == answer["model"]  # the responder that answered is the one named
            return {"answer": answer, "messages": calls[-1]["messages"]}

        sfw = ask("pizza tonight?", "chat-1", True)
        assert sfw["answer"]["model"] == "cookiebaker-sfw"
        assert sfw["messages"][-1] == {"role": "user", "content": "pizza tonight?"}
        nsfw = ask("who drank my beer", "chat-2", False)
        assert nsfw["answer"]["model"] == "cookiebaker-nsfw"
        assert ask("board games?", "chat-3", None)["answer"]["model"] == "cookiebaker-sfw"  # no flag: SFW

        # The same chat again: the first exchange is in the context; another chat's is not.
        again = ask("and after that?", "chat-1", True)
        contents = [(m["role"], m["content"]) for m in again["messages"]]
        assert ("user", "pizza tonight?") in contents
        assert ("assistant", sfw["answer"]["response"]) in contents
        assert contents[-1] == ("user", "and after that?")
        assert all(content != "who drank my beer" for _, content in contents)
        # The credential's API key travelled with every call (cookiebaker refuses calls without it).
        assert {auth for (path, _), auth in zip(recorder.calls, recorder.authorizations)
                if path == "/api/chat"} == {f"Bearer {KEY}"}
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        server.should_exit = True
