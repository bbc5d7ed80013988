"""Benchmark: the responder service's own overhead, with a zero-latency backend, and with a real model.

    python bench/bench_serve.py [--requests 2000] [--concurrency 8]
    python bench/bench_serve.py --gguf demo/models/SFW_gguf/cookiebaker-sfw.q8_0.gguf [--rounds 4]

Without --gguf: starts `cookiebaker serve`'s app under uvicorn on a free loopback port with an instant backend,
then sends webhook requests (history read + write in SQLite included) and Ollama-API requests from concurrent
clients. Reports requests/s and p50/p99 latency, and the overhead over calling the backend directly (p99 target
< 5 ms). Writes bench/results/serve.json.

With --gguf (the demo's q8_0 GGUF): 1, 4 and 16 concurrent webhook clients against three set-ups on the same
model: `cookiebaker serve` with the GGUF in its own process (llama.cpp in-process), `cookiebaker serve` in front of
llama-cpp-python's OpenAI-compatible server (`openai:` backend), and that server alone (its chat API, the same
messages the service sends). Every request is a new chat (the same prompt, no history), greedy, the same
max_tokens, so all three generate the same tokens. Requests/s, p50/p99 latency, and the service's overhead as a
ratio of the server alone. Writes bench/results/serve_engine.json. Traffic stays on 127.0.0.1.
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


def _port_pair() -> int:
    """A free port whose next one is free too (the engine behind the service takes it)."""
    while True:
        port = _port()
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue


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


def wait_for(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[:4]} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {seconds:g} s")


PROMPT = "anyone up for pizza tonight?"
MAX_TOKENS = 24


def engine_process(gguf: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "cb",
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--verbose", "False"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def service_process(model: str, port: int, tmp: str, modelfile: Path | None) -> subprocess.Popen:
    params = Path(tmp) / f"serve{port}.yaml"
    params.write_text(json.dumps({"serve": {"queue_size": 64, "temperature": 0.0, "max_tokens": MAX_TOKENS,
                                            "history_db": f"{tmp}/h{port}.sqlite3"}}))
    extra = ["--sfw-modelfile", str(modelfile)] if modelfile else []
    return subprocess.Popen([sys.executable, "-m", "cookiebaker", "serve", "--sfw-model", model, *extra,
                             "--port", str(port), "--params", str(params)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def engine_rounds(url: str, path: str, body_of, clients: int, rounds: int) -> dict:  # noqa: ANN001
    asyncio.run(load(url, path, body_of, clients, clients))  # warm-up: one request per client
    started = time.perf_counter()
    latencies = asyncio.run(load(url, path, body_of, clients * rounds, clients))
    seconds = time.perf_counter() - started
    return {"requests": len(latencies), "requests_per_second": round(len(latencies) / seconds, 2),
            "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 1)}


def engine_bench(gguf: Path, rounds: int) -> dict:
    """The three set-ups on one GGUF, 1/4/16 clients each; the service's overhead over the server alone."""
    from cookiebaker.backends import sampling_from_modelfile

    modelfile = gguf.parent / "Modelfile"
    system = sampling_from_modelfile(modelfile).system if modelfile.is_file() else None
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": PROMPT}]
    webhook = lambda i: {"prompt": PROMPT, "chat_id": f"bench-{i}-{time.monotonic_ns()}", "sfw": True}  # noqa: E731
    alone = lambda i: {"model": "cb", "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0.0,  # noqa: E731
                       "stop": ["<|im_end|>", "<end_of_turn>"]}
    results: dict = {"gguf": gguf.name, "max_tokens": MAX_TOKENS, "rounds": rounds, "setups": {}}
    with tempfile.TemporaryDirectory() as tmp:
        engine = lambda port: (engine_process(gguf, port), f"http://127.0.0.1:{port}/v1/models")  # noqa: E731
        service = lambda model, port, mf: (service_process(model, port, tmp, mf),  # noqa: E731
                                           f"http://127.0.0.1:{port}/healthz")
        setups = {
            "in_process": lambda port: [service(str(gguf), port, None)],
            "in_front_of_llama_cpp_server": lambda port: [
                engine(port + 1), service(f"openai:http://127.0.0.1:{port + 1}/v1#cb", port, modelfile)],
            "llama_cpp_server_alone": lambda port: [engine(port)],
        }
        for name, start in setups.items():
            port = _port_pair()
            processes = start(port)
            try:
                for process, health in processes:
                    wait_for(health, process)
                path, body = ("/v1/chat/completions", alone) if name == "llama_cpp_server_alone" \
                    else ("/webhook/response", webhook)
                results["setups"][name] = {str(clients): engine_rounds(f"http://127.0.0.1:{port}", path, body,
                                                                       clients, rounds) for clients in (1, 4, 16)}
                print(name, json.dumps(results["setups"][name]), flush=True)
            finally:
                for process, _ in processes:
                    process.terminate()
                    process.wait(timeout=30)
    alone = results["setups"]["llama_cpp_server_alone"]
    results["overhead_ratio"] = {
        name: {clients: {"p50": round(setup[clients]["p50_ms"] / alone[clients]["p50_ms"], 3),
                         "requests_per_second": round(setup[clients]["requests_per_second"]
                                                      / alone[clients]["requests_per_second"], 3)}
               for clients in setup}
        for name, setup in results["setups"].items() if name != "llama_cpp_server_alone"}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--gguf", type=Path, help="a real model (the demo's q8_0 GGUF): the engine benchmark")
    parser.add_argument("--rounds", type=int, default=4, help="--gguf: requests per client after a warm-up one")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--history-db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.history_db)
        return
    if args.gguf:
        results = engine_bench(args.gguf, args.rounds)
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "serve_engine.json").write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results["overhead_ratio"], indent=2))
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
