"""History in a real PostgreSQL server, started here (skipped, with the reason, where there is none)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_serve import Echo

from cookiebaker.serve import ServeConfig, build_app
from cookiebaker.serve.history import HistoryStore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():  # noqa: ANN201
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    as_user: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: PostgreSQL refuses to start as root")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to start the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="cookiebaker-pg-"))
    data = root / "data"
    if as_user:
        shutil.chown(root, "postgres")
    port = _free_port()
    run = lambda *args: subprocess.run([*as_user, *args], check=True, capture_output=True, text=True)  # noqa: E731
    run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres")
    run(pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
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
