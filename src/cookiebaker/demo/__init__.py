"""``cookiebaker demo``: the whole chain on built-in sample chats, offline, on the embedded SmolLM2-135M.

ingest → pairs → train → merge → export (GGUF q8_0, checked in llama.cpp) → serve → one webhook per route.
Every stage is the same code the CLI and ``dvc repro`` run; finished stages are reused on a second run.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path

from pydantic import Field

from cookiebaker import ingest, pairs
from cookiebaker.config import StageConfig
from cookiebaker.demo.sample_chats import write_sample_exports
from cookiebaker.io import write_json
from cookiebaker.progress import progress_bar

log = logging.getLogger(__name__)

LABELS = ("SFW", "NSFW")
SIDE_BY_SIDE_ROWS = 3
PROMPTS = {"SFW": "anyone up for board games on friday?", "NSFW": "who drank all my damn beer"}


class DemoConfig(StageConfig):
    workdir: str = "demo"
    """Folder that receives the sample exports, every stage's outputs and summary.json."""
    messages_per_chat: int = Field(600, ge=20)
    """Size of each sample chat."""
    base_model: str = "embedded:smollm2-135m"
    """Base model (the embedded one needs no hub)."""
    max_steps: int = Field(60, ge=1)
    """Optimizer steps per label: a short CPU schedule (about two passes over the training pairs; 24 steps
    left responders that echo the query: see the README)."""
    batch_size: int = Field(8, ge=1)
    """Samples per step (padding-free)."""
    learning_rate: float = Field(6e-4, gt=0)
    """Higher than the product's 1e-5: the demo has 60 steps of 8 samples, not 150 × 16 samples."""
    quantize: str = "q8_0"
    """GGUF type of the exports."""
    eval_samples: int = Field(64, ge=1)
    """Held-out queries each responder (and its base) answers in the eval stage."""
    quick: bool = False
    """A minimal run for the test suite: tiny chats, two steps."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ask_the_service(workdir: Path, exports: dict[str, Path]) -> dict[str, str]:
    """Start the service in this process on a free loopback port and send one webhook per route."""
    import httpx
    import uvicorn

    from cookiebaker.serve import ServeConfig, build_app

    config = ServeConfig(sfw_model=str(exports["SFW"]), nsfw_model=str(exports["NSFW"]),
                         history_db=str(workdir / "serve" / "history.sqlite3"), max_tokens=48)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(config), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    replies = {}
    try:
        for _ in range(300):
            if server.started:
                break
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            for label in LABELS:
                response = client.post("/webhook/response", json={
                    "prompt": PROMPTS[label], "chat_id": "demo", "sfw": label == "SFW", "sender_name": "You",
                    "client_name": "cookiebaker-demo"})
                response.raise_for_status()
                replies[label] = response.json()["response"]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    return replies


def run(config: DemoConfig) -> dict:
    from cookiebaker import eval as evaluation
    from cookiebaker import export, merge, train

    started = time.perf_counter()
    workdir = Path(config.workdir)
    data, models, reports = workdir / "data", workdir / "models", workdir / "reports"
    messages_per_chat = 120 if config.quick else config.messages_per_chat
    steps = 2 if config.quick else config.max_steps
    if not all((data / label / "result.json").is_file() for label in LABELS):
        write_sample_exports(data, messages_per_chat)
    summary: dict = {}
    exports: dict[str, Path] = {}
    stages = [(label, stage) for label in LABELS
              for stage in ("ingest", "pairs", "train", "merge", "export", "eval")]
    with progress_bar() as progress:
        task = progress.add_task("demo", total=len(stages) + 1)
        for label, stage in stages:
            progress.update(task, description=f"{stage} {label}")
            messages, qa = data / f"{label}.parquet", data / f"{label}_qa.parquet"
            adapter, merged, gguf_dir = models / label, models / f"{label}_merged", models / f"{label}_gguf"
            if stage == "ingest" and not messages.is_file():
                ingest.run(ingest.IngestConfig(inputs=[str(data / label)], output=str(messages),
                                               report=str(reports / f"ingest_{label}.json")))
            elif stage == "pairs" and not qa.is_file():
                pairs.run(pairs.PairsConfig(input=str(messages), output=str(qa),
                                            report=str(reports / f"pairs_{label}.json")))
            elif stage == "train" and not (adapter / "metrics.json").is_file():
                train.run(train.TrainConfig(
                    data=str(qa), output_dir=str(adapter), report=str(reports / f"train_{label}.json"),
                    base_model=config.base_model, max_steps=steps, batch_size=config.batch_size, grad_accum=1,
                    learning_rate=config.learning_rate, warmup_steps=min(3, steps - 1), save_steps=steps,
                    eval_fraction=0.2, max_eval_samples=config.eval_samples, report_to=["tensorboard"]))
            elif stage == "merge" and not (merged / "model.safetensors").is_file():
                merge.run(merge.MergeConfig(adapter=str(adapter), output=str(merged)))
            elif stage == "export" and not (gguf_dir / "export.json").is_file():
                export.run(export.ExportConfig(model=str(merged), output_dir=str(gguf_dir),
                                               name=f"cookiebaker-{label.lower()}", quantize=config.quantize,
                                               report=str(reports / f"export_{label}.json"),
                                               check_tokens=8 if config.quick else 16))
            elif stage == "eval" and not (reports / f"eval_{label}.json").is_file():
                evaluation.run(evaluation.EvalConfig(
                    model=str(gguf_dir), data=str(qa), output=str(reports / f"eval_{label}.json"),
                    max_samples=8 if config.quick else config.eval_samples, max_new_tokens=48))
            progress.advance(task)
            exports[label] = gguf_dir
        progress.update(task, description="serve")
        replies = _ask_the_service(workdir, exports)
        progress.advance(task)
    for label in LABELS:
        metrics = json.loads((models / label / "metrics.json").read_text())
        exported = json.loads((models / f"{label}_gguf" / "export.json").read_text())
        pairs_report = json.loads((reports / f"pairs_{label}.json").read_text())
        evaluated = json.loads((reports / f"eval_{label}.json").read_text())
        summary[label] = {
            "eval_loss_before": metrics["eval_loss_before"],
            "eval_loss_after": metrics["eval_loss_after"],
            "gguf": exported["gguf"],
            "reply": replies[label],
            "pairs": pairs_report["pairs"],
            "train_seconds": metrics["train_seconds"],
            "parity_agreement": exported["parity"]["agreement"] if exported["parity"] else None,
            "eval": {name: evaluated[name] for name in ("tuned", "base", "real") if name in evaluated},
            "eval_report": str(reports / f"eval_{label}.md"),
            "side_by_side": json.loads((reports / f"eval_{label}.samples.json").read_text())[:SIDE_BY_SIDE_ROWS],
        }
    from cookiebaker import report

    summary["charts"] = [str(p) for p in report.run(report.ReportConfig(workdir=str(workdir)))]
    summary["total_seconds"] = round(time.perf_counter() - started, 1)
    write_json(summary, workdir / "summary.json")
    _print_summary(workdir, summary)
    return summary


def _print_eval(evaluated: dict) -> None:
    """The eval stage's measures for one label, tuned beside base beside the real responses."""
    from cookiebaker.quality import measure_table

    print("    eval on held-out queries:")
    for line in measure_table(evaluated, indent="      "):
        print(line)


def _one_line(text: str, width: int = 60) -> str:
    text = " / ".join(line.strip() for line in text.splitlines() if line.strip())
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_summary(workdir: Path, summary: dict) -> None:
    print(f"\ncookiebaker demo finished in {summary['total_seconds']:.0f} s — everything is in {workdir}/")
    for label in LABELS:
        s = summary[label]
        print(f"\n  {label}: {s['pairs']} training pairs; eval loss {s['eval_loss_before']:.3f} → "
              f"{s['eval_loss_after']:.3f} in {s['train_seconds']:.0f} s of training")
        print(f"    GGUF: {s['gguf']}")
        print(f"    asked \"{PROMPTS[label]}\" → \"{s['reply']}\"")
        _print_eval(s["eval"])
        for row in s["side_by_side"]:
            print(f"      \"{_one_line(row['query'])}\"  real: \"{_one_line(row['real'])}\"")
            print(f"        tuned: \"{_one_line(row['tuned'])}\"  base: \"{_one_line(row.get('base', ''))}\"")
        print(f"    side by side (holds chat text): {s['eval_report']}")
    print("\n  serve both responders:  cookiebaker serve "
          f"--sfw-model {workdir}/models/SFW_gguf --nsfw-model {workdir}/models/NSFW_gguf")
    print(f"  or in Ollama:           cd {workdir}/models/SFW_gguf && ollama create cookiebaker-sfw -f Modelfile")
    print(f"  charts:  {workdir / 'reports'}/*.png ({len(summary['charts'])})")
    print(f"  summary: {workdir / 'summary.json'}")
