"""Benchmark: the responder service's own overhead, with a zero-latency backend.

    python bench/bench_serve.py [--requests 2000] [--concurrency 8]

Starts `cookiebaker serve`'s app under uvicorn on a free loopback port with an instant backend, then sends
webhook requests (history read + write in SQLite included) and Ollama-API requests from concurrent clients.
Reports requests/s and p50/p99 latency, and the overhead over calling the backend directly (p99 target
< 5 ms). Writes bench/results/serve.json. Traffic stays on 127.0.0.1 and the loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from cookiebaker.backends import Backend, Sampling  # noqa: E402
from cookiebaker.serve import ServeConfig, build_app  # noqa: E402


class Instant(Backend):
    description = "instant"
    default = Sampling()

    async def stream(self, messages, sampling):  # noqa: ANN001, ANN201
        yield "ok"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def load(url: str, path: str, body_of, total: int, concurrency: int) -> list[float]:  # noqa: ANN001
    import httpx

    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        counter = iter(range(total))

        async def worker() -> None:
            for i in counter:
                started = time.perf_counter()
                response = await client.post(path, json=body_of(i))
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def direct(total: int) -> list[float]:
    backend, latencies = Instant(), []
    for _ in range(total):
        started = time.perf_counter()
        await backend.complete([{"role": "user", "content": "hi"}], Sampling())
        latencies.append(time.perf_counter() - started)
    return latencies


def serve(port: int, history_db: str) -> None:
    """The server side, in its own process so that the load generator does not share its CPU time slice."""
    import uvicorn

    config = ServeConfig(sfw_model="x", nsfw_model="y", history_db=history_db, queue_size=10_000)
    app = build_app(config, backends={"cookiebaker-sfw": Instant(), "cookiebaker-nsfw": Instant()})
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--history-db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.history_db)
        return
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        port = _port()
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--history-db", f"{tmp}/h.sqlite3"])
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                httpx.get(f"{url}/healthz", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        results = {}
        for name, path, body in (
            ("webhook", "/webhook/response",
             lambda i: {"prompt": "hi", "chat_id": i % 50, "sfw": i % 2 == 0, "client_name": "bench"}),
            ("ollama_chat", "/api/chat",
             lambda i: {"model": "cookiebaker-sfw", "messages": [{"role": "user", "content": "hi"}], "stream": False}),
        ):
            started = time.perf_counter()
            latencies = asyncio.run(load(url, path, body, args.requests, args.concurrency))
            seconds = time.perf_counter() - started
            results[name] = {"requests_per_second": round(len(latencies) / seconds, 1),
                             "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
                             "p99_ms": round(percentile(latencies, 0.99) * 1000, 2)}
        sequential = asyncio.run(load(url, "/api/chat", lambda i: {"model": "cookiebaker-sfw", "messages": [
            {"role": "user", "content": "hi"}], "stream": False}, 500, 1))
        backend_alone = asyncio.run(direct(500))
        overhead = [a - b for a, b in zip(sorted(sequential), sorted(backend_alone))]
        results["overhead_one_client"] = {"p50_ms": round(statistics.median(overhead) * 1000, 3),
                                          "p99_ms": round(percentile(overhead, 0.99) * 1000, 3)}
        server.terminate()
        server.wait(timeout=30)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "serve.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
