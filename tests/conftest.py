from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TELEGRAM = SHARED / "data" / "telegram"
SYNTH_TOOL = SHARED / "tools" / "synth_telegram_export.py"

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("COOKIEBAKER_PROGRESS", "off")


def whole_suite() -> bool:
    """Whether this run must be the whole suite (``make test`` and CI): then what a test needs and lacks is a
    failure, never a skip."""
    return bool(os.environ.get("CI") or os.environ.get("COOKIEBAKER_WHOLE_SUITE"))


def missing(what: str, how: str) -> None:
    """A test's prerequisite is not here: a failure in the whole suite, a skip in a partial run."""
    if whole_suite():
        pytest.fail(f"{what} is missing: {how}")
    pytest.skip(f"{what} is missing ({how})")


def _require(path: Path) -> Path:
    if not path.exists():
        missing(str(path), "the shared data lies beside the checkout (../shared)")
    return path


@pytest.fixture(scope="session")
def telegram_dir() -> Path:
    return _require(TELEGRAM)


@pytest.fixture(scope="session")
def synth_tool() -> Path:
    return _require(SYNTH_TOOL)


def synth_export(tool: Path, out: Path, messages: int, *, chats: int = 1, seed: int = 0) -> tuple[Path, dict]:
    args = [sys.executable, str(tool), "--messages", str(messages), "--seed", str(seed), "--out", str(out)]
    if chats > 1:
        args += ["--account", "--chats", str(chats)]
    subprocess.run(args, check=True, capture_output=True)
    return out, json.loads(Path(str(out) + ".truth.json").read_text())


def msg(id: int, text: object = "", *, sender: str | None = "Alice", sender_id: str | None = "user1",
        date: int = 1_700_000_000, **extra: object) -> dict:
    """One message object as a modern Telegram Desktop writes it."""
    entry: dict = {"id": id, "type": "message", "date": "2023-11-14T22:13:20", "date_unixtime": str(date)}
    if sender is not None or sender_id is not None:
        entry["from"] = sender
        entry["from_id"] = sender_id
    entry.update(extra)
    entry["text"] = text
    return entry


def service(id: int, action: str = "pin_message", *, date: int = 1_700_000_000, actor: str = "Alice",
            actor_id: str = "user1") -> dict:
    return {"id": id, "type": "service", "date": "2023-11-14T22:13:20", "date_unixtime": str(date),
            "actor": actor, "actor_id": actor_id, "action": action, "text": "", "text_entities": []}


def write_chat(path: Path, messages: list[dict], *, chat_id: int = 1234, name: str = "Test group",
               chat_type: str = "private_supergroup") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": name, "type": chat_type, "id": chat_id, "messages": messages},
                               ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script, as a user would."""
    exe = Path(sys.executable).with_name("cookiebaker")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory) -> Path:
    from tiny import build_tiny_gemma

    return build_tiny_gemma(tmp_path_factory.mktemp("tiny_gemma"))


@pytest.fixture(scope="session")
def demo_pairs(tmp_path_factory) -> Path:
    """A pairs table of the demo's SFW sample chat, written by the real stages."""
    from cookiebaker import ingest, pairs
    from cookiebaker.demo.sample_chats import write_sample_exports

    root = tmp_path_factory.mktemp("demo_pairs")
    write_sample_exports(root / "data", messages_per_chat=300)
    ingest.run(ingest.IngestConfig(inputs=[str(root / "data" / "SFW")], output=str(root / "m.parquet")))
    pairs.run(pairs.PairsConfig(input=str(root / "m.parquet"), output=str(root / "qa.parquet")))
    return root / "qa.parquet"


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory) -> Path:
    """COOKIEBAKER_CACHE for the session, so the embedded model is converted once per test run."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["COOKIEBAKER_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def tiny_merged(tiny_gemma: Path, demo_pairs: Path, tmp_path_factory) -> Path:
    """The tiny Gemma, trained a few steps on the demo pairs and merged."""
    from cookiebaker import merge, train

    root = tmp_path_factory.mktemp("tiny_merged")
    train.run(train.TrainConfig(data=str(demo_pairs), output_dir=str(root / "adapter"), base_model=str(tiny_gemma),
                                max_steps=8, save_steps=8, warmup_steps=1, learning_rate=3e-3, grad_accum=1,
                                batch_size=8, report_to=["none"]))
    merge.run(merge.MergeConfig(adapter=str(root / "adapter"), output=str(root / "merged")))
    return root / "merged"


@pytest.fixture(scope="session")
def tiny_gguf(tiny_merged: Path, tmp_path_factory) -> Path:
    """The tiny merged model exported to an f16 GGUF folder (GGUF + Modelfile), as `serve` and `eval` take it."""
    from cookiebaker import export

    target = tmp_path_factory.mktemp("tiny_gguf")
    export.run(export.ExportConfig(model=str(tiny_merged), output_dir=str(target), name="cb-tiny", quantize="f16",
                                   check=False))
    return target


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_in_thread(app, header_timeout: float = 10.0) -> tuple[int, object]:  # noqa: ANN001
    """Run an ASGI app under uvicorn on a free loopback port in a daemon thread, as ``cookiebaker serve`` runs it
    (the guarded protocol); returns (port, server) (set ``server.should_exit = True`` to stop it)."""
    import threading
    import time

    import uvicorn

    from cookiebaker.serve.server import server_config

    port = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, header_timeout, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    return port, server
