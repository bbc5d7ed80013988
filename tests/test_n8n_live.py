"""The n8n workflow, imported and run in a real n8n against `cookiebaker serve` (Ollama API).

Not part of the default run: n8n's npm package downloads a dependency from outside the npm registry
(cdn.sheetjs.com), which this project's machines cannot reach. Where n8n installs (`npm install -g n8n`):

    N8N_LIVE=1 .venv/bin/python -m pytest tests/test_n8n_live.py -v
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from conftest import REPO
from test_serve import Echo

from cookiebaker.serve import ServeConfig, build_app

pytestmark = pytest.mark.skipif(not os.environ.get("N8N_LIVE"), reason="set N8N_LIVE=1 (needs the n8n CLI)")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_workflow_routes_through_n8n(tmp_path: Path) -> None:
    n8n = shutil.which("n8n")
    assert n8n, "install n8n first: npm install -g n8n"
    serve_port, n8n_port = _port(), _port()
    config = ServeConfig(sfw_model="x", nsfw_model="y", history_db=str(tmp_path / "h.sqlite3"))
    app = build_app(config, backends={"cookiebaker-sfw": Echo(), "cookiebaker-nsfw": Echo()})
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=serve_port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    env = {**os.environ, "N8N_USER_FOLDER": str(tmp_path / "n8n"), "N8N_PORT": str(n8n_port),
           "N8N_LISTEN_ADDRESS": "127.0.0.1", "N8N_DIAGNOSTICS_ENABLED": "false", "N8N_SECURE_COOKIE": "false",
           "N8N_PERSONALIZATION_ENABLED": "false", "N8N_RUNNERS_ENABLED": "false"}
    credentials = [{"id": "cookiebakerOllama", "name": "Ollama (compose)", "type": "ollamaApi",
                    "data": {"baseUrl": f"http://127.0.0.1:{serve_port}"}}]
    (tmp_path / "credentials.json").write_text(json.dumps(credentials))
    workflow = json.loads((REPO / "n8n" / "cookiebaker.json").read_text())
    workflow["id"] = "cookiebakerResponder"
    workflow["active"] = True
    (tmp_path / "workflow.json").write_text(json.dumps(workflow))
    for args in (["import:credentials", f"--input={tmp_path / 'credentials.json'}"],
                 ["import:workflow", f"--input={tmp_path / 'workflow.json'}"],
                 ["update:workflow", "--id=cookiebakerResponder", "--active=true"]):
        subprocess.run([n8n, *args], env=env, check=True, capture_output=True, timeout=300)
    process = subprocess.Popen([n8n, "start"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{n8n_port}"
        for _ in range(240):
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        for sfw, model in ((True, "cookiebaker-sfw"), (False, "cookiebaker-nsfw"), (None, "cookiebaker-sfw")):
            body = {"prompt": "pizza tonight?", "chat_id": 1, "sender_name": "Ann", "client_name": "n8n"}
            if sfw is not None:
                body["sfw"] = sfw
            reply = httpx.post(f"{base}/webhook/response", json=body, timeout=120)
            assert reply.status_code == 200, reply.text
            assert reply.json() == {"response": "[1] pizza tonight?", "command": "", "model": model}
    finally:
        process.terminate()
        process.wait(timeout=60)
        server.should_exit = True
