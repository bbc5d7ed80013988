"""History in a real PostgreSQL server, started here (skipped, with the reason, where there is none)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port, missing
from fastapi.testclient import TestClient
from test_serve import Echo, turns_and_forgetting

from cookiebaker.serve import ServeConfig, build_app
from cookiebaker.serve.history import HistoryStore


def _server_binary(name: str) -> str | None:
    """On PATH, or where Debian's postgresql package puts it (/usr/lib/postgresql/<version>/bin)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


@pytest.fixture(scope="module")
def postgres_url():  # noqa: ANN201
    initdb, pg_ctl = _server_binary("initdb"), _server_binary("pg_ctl")
    if not (initdb and pg_ctl):
        missing("PostgreSQL's server (initdb, pg_ctl)", "`make test` installs Debian's postgresql")
    as_user: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            missing("runuser", "PostgreSQL refuses to start as root; Debian's util-linux has runuser")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            missing("the 'postgres' user", "running as root, the server starts as it; Debian's postgresql creates it")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="cookiebaker-pg-"))
    data = root / "data"
    if as_user:
        shutil.chown(root, "postgres")
    port = free_port()
    run = lambda *args: subprocess.run([*as_user, *args], check=True, capture_output=True, text=True)  # noqa: E731
    run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres")
    run(pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
    os.environ["COOKIEBAKER_TEST_PG_DATA"] = str(data)  # for the kill -9 test: where the server's files are
    os.environ["COOKIEBAKER_TEST_PG_START"] = json.dumps([*as_user, pg_ctl, "-D", str(data), "-l", str(root / "log"),
                                                          "-w", "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
                                                          "start"])
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_history_in_postgres(postgres_url: str, tmp_path: Path) -> None:
    config = ServeConfig(sfw_model="x", database_url=postgres_url, history_db=str(tmp_path / "unused.sqlite3"),
                         max_stored_turns=4)
    sfw = Echo()
    client = TestClient(build_app(config, backends={"cookiebaker-sfw": sfw}))
    for i in range(3):
        assert client.post("/webhook/response", json={"prompt": f"p{i}", "chat_id": 9, "client_name": "pg"}).status_code == 200
    assert [m["content"] for m in sfw.seen[-1]] == ["p0", "[1] p0", "p1", "[3] p1", "p2"]
    assert not (tmp_path / "unused.sqlite3").exists()
    # A new service process (a restart) reads the same history.
    store = HistoryStore(postgres_url)
    assert [t["content"] for t in store.recent("pg", "9", 10)] == ["p1", "[3] p1", "p2", "[5] p2"]
    store.close()


def test_turns_and_forgetting_in_postgres(postgres_url: str, tmp_path: Path) -> None:
    config = ServeConfig(sfw_model="x", database_url=postgres_url, history_db=str(tmp_path / "unused.sqlite3"))
    sfw = Echo()
    app = build_app(config, backends={"cookiebaker-sfw": sfw})
    turns_and_forgetting(TestClient(app), sfw, app.state.service.store)


def _serve(model: Path, port: int, url: str, cwd: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("cookiebaker")
    process = subprocess.Popen([str(exe), "serve", "--sfw-model", str(model), "--port", str(port), "--max-tokens", "4",
                                "--temperature", "0"], cwd=cwd, env={**os.environ, "COOKIEBAKER_DATABASE_URL": url},
                               stdout=subprocess.DEVNULL, stderr=open(cwd / f"serve{port}.log", "ab"))  # noqa: SIM115
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, (cwd / f"serve{port}.log").read_text()[-2000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    pytest.fail("cookiebaker serve did not start within 60 s")


def _ask(port: int, prompt: str) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}/webhook/response", timeout=30,
                      json={"prompt": prompt, "chat_id": "k9", "client_name": "pg"})


def _kill_postgres(data: Path) -> None:
    """kill -9 of the postmaster and of every server process it started."""
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
    for pid in [postmaster, *map(int, children)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_history_keeps_every_answered_turn_through_kill_9(postgres_url: str, tiny_gguf: Path, tmp_path: Path) -> None:
    """kill -9 of the service (twice, once while a request is in flight) and of PostgreSQL itself: every turn that
    was answered is in the history, every stored turn has its reply, and while the database is down the webhook
    answers 503 with a JSON error."""
    import threading

    port = free_port()
    answered: list[str] = []
    service = _serve(tiny_gguf, port, postgres_url, tmp_path)
    try:
        for round_ in range(2):
            for i in range(4):
                prompt = f"r{round_} q{i}"
                assert _ask(port, prompt).status_code == 200
                answered.append(prompt)
            in_flight = threading.Thread(target=lambda: _try(lambda: _ask(port, f"r{round_} in flight")), daemon=True)
            in_flight.start()
            time.sleep(0.05)
            service.send_signal(signal.SIGKILL)
            service.wait(10)
            in_flight.join(30)
            service = _serve(tiny_gguf, port, postgres_url, tmp_path)
        _kill_postgres(Path(os.environ["COOKIEBAKER_TEST_PG_DATA"]))
        down = _ask(port, "while the database is down")
        assert down.status_code == 503 and "history database" in down.json()["error"]
        _restart_postgres()
        assert _ask(port, "after the database came back").status_code == 200
        answered.append("after the database came back")
    finally:
        service.send_signal(signal.SIGKILL)
        service.wait(10)
    store = HistoryStore(postgres_url)
    turns = store.recent("pg", "k9", 1000)
    store.close()
    users = [t["content"] for t in turns if t["role"] == "user"]
    assert [t["role"] for t in turns] == ["user", "assistant"] * (len(turns) // 2)  # each turn with its reply
    assert [u for u in users if "in flight" not in u] == answered
    assert "while the database is down" not in users


def _restart_postgres() -> None:
    """Start the killed server again: it recovers from its write-ahead log (once the killed processes are gone)."""
    deadline, command = time.monotonic() + 60, json.loads(os.environ["COOKIEBAKER_TEST_PG_START"])
    while True:
        started = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if started.returncode == 0:
            return
        if time.monotonic() > deadline:
            log = Path(command[command.index("-l") + 1])
            pytest.fail(f"PostgreSQL did not restart: {started.stderr} {log.read_text()[-2000:]}")
        time.sleep(0.5)


def _try(call) -> None:  # noqa: ANN001
    try:
        call()
    except httpx.HTTPError:  # the service was killed under it
        pass
