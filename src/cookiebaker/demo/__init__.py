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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
    """Optimizer steps per label: a short CPU schedule (about two passes over the training samples; 24 steps
    left responders that echo the query: see the README)."""
    batch_size: int = Field(8, ge=1)
    """Samples per step (padding-free)."""
    learning_rate: float = Field(6e-4, gt=0)
    """Higher than the product's 1e-5: the demo has 60 steps of 8 samples, not 150 × 16 samples."""
    system_prompt: str | None = "Reply as the group."
    """The system text the responders are trained and served with (export writes it into the Modelfile).
    SmolLM2's template adds its own 16-token assistant prompt to a chat that has none; a short one costs less of
    the CPU's training time and fits a twin better. None: the template's own."""
    mode: Literal["pairs", "conversations"] = "pairs"
    """Samples the responders are trained on (``pairs.mode``)."""
    context_turns: int = Field(6, ge=0)
    """Earlier messages of the chat given with each pair (``pairs.context_turns``; 0: the query alone)."""
    speakers: Literal["names", "aliases", "none"] = "names"
    """Who speaks in the user turns (``pairs.speakers``); the service is asked alike (names unless none)."""
    quantize: str = "q8_0"
    """GGUF type of the exports."""
    eval_samples: int = Field(64, ge=1)
    """Held-out queries each responder (and its base) answers in the eval stage."""
    quick: bool = False
    """A minimal run for the test suite: tiny chats, two steps."""


@dataclass(frozen=True)
class Paths:
    """Where one label's inputs and outputs live under the workdir."""

    workdir: Path
    label: str

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def reports(self) -> Path:
        return self.workdir / "reports"

    @property
    def messages(self) -> Path:
        return self.data / f"{self.label}.parquet"

    @property
    def samples(self) -> Path:
        return self.data / f"{self.label}_qa.parquet"

    @property
    def adapter(self) -> Path:
        return self.workdir / "models" / self.label

    @property
    def merged(self) -> Path:
        return self.workdir / "models" / f"{self.label}_merged"

    @property
    def export(self) -> Path:
        return self.workdir / "models" / f"{self.label}_gguf"

    def report(self, stage: str) -> Path:
        return self.reports / f"{stage}_{self.label}.json"


def _ingest(config: DemoConfig, paths: Paths) -> None:
    ingest.run(ingest.IngestConfig(inputs=[str(paths.data / paths.label)], output=str(paths.messages),
                                   report=str(paths.report("ingest"))))


def _pairs(config: DemoConfig, paths: Paths) -> None:
    pairs.run(pairs.PairsConfig(input=str(paths.messages), output=str(paths.samples),
                                report=str(paths.report("pairs")), mode=config.mode,
                                context_turns=config.context_turns, speakers=config.speakers))


def _train(config: DemoConfig, paths: Paths) -> None:
    from cookiebaker import train

    steps = 2 if config.quick else config.max_steps
    # The eval stage measures the held-out loss of the tuned model and its base through the served GGUF: train
    # does not measure it a second time.
    train.run(train.TrainConfig(
        data=str(paths.samples), output_dir=str(paths.adapter), report=str(paths.report("train")),
        base_model=config.base_model, max_steps=steps, batch_size=config.batch_size, grad_accum=1,
        learning_rate=config.learning_rate, warmup_steps=min(3, steps - 1), save_steps=steps, eval_fraction=0.2,
        max_eval_samples=config.eval_samples, system_prompt=config.system_prompt, eval_loss=False,
        report_to=["tensorboard"]))


def _merge(config: DemoConfig, paths: Paths) -> None:
    from cookiebaker import merge

    merge.run(merge.MergeConfig(adapter=str(paths.adapter), output=str(paths.merged)))


def _export(config: DemoConfig, paths: Paths) -> None:
    from cookiebaker import export

    export.run(export.ExportConfig(model=str(paths.merged), output_dir=str(paths.export),
                                   name=f"cookiebaker-{paths.label.lower()}", quantize=config.quantize,
                                   report=str(paths.report("export")), check_tokens=8))


def _eval(config: DemoConfig, paths: Paths) -> None:
    from cookiebaker import eval as evaluation

    evaluation.run(evaluation.EvalConfig(
        model=str(paths.export), data=str(paths.samples), output=str(paths.report("eval")),
        max_samples=8 if config.quick else config.eval_samples, max_new_tokens=48))


#: The demo's stages in order, each with the output that says it is done (a second run reuses it).
STAGES: tuple[tuple[str, Callable[[DemoConfig, Paths], None], Callable[[Paths], Path]], ...] = (
    ("ingest", _ingest, lambda p: p.messages),
    ("pairs", _pairs, lambda p: p.samples),
    ("train", _train, lambda p: p.adapter / "metrics.json"),
    ("merge", _merge, lambda p: p.merged / "model.safetensors"),
    ("export", _export, lambda p: p.export / "export.json"),
    ("eval", _eval, lambda p: p.report("eval")),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ask_the_service(config: DemoConfig, workdir: Path, exports: dict[str, Path]) -> dict[str, str]:
    """Start the service in this process on a free loopback port and send one webhook per route."""
    import httpx
    import uvicorn

    from cookiebaker.serve import ServeConfig, build_app

    config = ServeConfig(sfw_model=str(exports["SFW"]), nsfw_model=str(exports["NSFW"]),
                         history_db=str(workdir / "serve" / "history.sqlite3"), max_tokens=48,
                         speakers="none" if config.speakers == "none" else "names")
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


@contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started


def run(config: DemoConfig) -> dict:
    """Sample chats → every stage for both labels → the service, asked once per route → charts and summary."""
    started = time.perf_counter()
    workdir = Path(config.workdir)
    if not all((workdir / "data" / label / "result.json").is_file() for label in LABELS):
        write_sample_exports(workdir / "data", 120 if config.quick else config.messages_per_chat)
    seconds: dict[str, float] = {}  # where the time went, stage by stage (both labels), this run only
    with progress_bar() as progress:
        task = progress.add_task("demo", total=len(LABELS) * len(STAGES) + 1)
        for label in LABELS:
            paths = Paths(workdir, label)
            for name, stage, done in STAGES:
                progress.update(task, description=f"{name} {label}")
                if not done(paths).is_file():
                    with _timed(seconds, name):
                        stage(config, paths)
                progress.advance(task)
        progress.update(task, description="serve")
        with _timed(seconds, "serve"):
            replies = _ask_the_service(config, workdir, {label: Paths(workdir, label).export for label in LABELS})
        progress.advance(task)
    summary: dict = {label: _label_summary(Paths(workdir, label), replies[label]) for label in LABELS}
    summary["samples"] = {"mode": config.mode, "context_turns": config.context_turns, "speakers": config.speakers}
    from cookiebaker import report

    with _timed(seconds, "charts"):
        summary["charts"] = [str(p) for p in report.run(report.ReportConfig(workdir=str(workdir)))]
    summary["stage_seconds"] = {name: round(value, 1) for name, value in seconds.items()}
    summary["total_seconds"] = round(time.perf_counter() - started, 1)
    write_json(summary, workdir / "summary.json")
    _print_summary(workdir, summary)
    return summary


def _label_summary(paths: Paths, reply: str) -> dict:
    """What one label's stages measured: the held-out loss of the base (before) and the tuned model (after),
    through the served GGUF, the eval measures, the reply and where everything is."""
    metrics = json.loads((paths.adapter / "metrics.json").read_text())
    exported = json.loads((paths.export / "export.json").read_text())
    pairs_report = json.loads(paths.report("pairs").read_text())
    evaluated = json.loads(paths.report("eval").read_text())
    markdown = paths.report("eval").with_suffix(".md")
    return {
        "eval_loss_before": evaluated.get("base", {}).get("loss"),
        "eval_loss_after": evaluated["tuned"]["loss"],
        "gguf": exported["gguf"],
        "reply": reply,
        "pairs": pairs_report["samples"],
        "train_seconds": metrics["train_seconds"],
        "parity_agreement": exported["parity"]["agreement"] if exported["parity"] else None,
        "eval": {name: evaluated[name] for name in ("tuned", "base", "real") if name in evaluated},
        "eval_report": str(markdown),
        "side_by_side": json.loads(markdown.with_name(f"{markdown.stem}.samples.json").read_text())[:SIDE_BY_SIDE_ROWS],
    }


def _print_eval(evaluated: dict) -> None:
    """The eval stage's measures for one label, tuned beside base beside the real responses."""
    from cookiebaker.quality import measure_table

    print("    eval on held-out queries:")
    for line in measure_table(evaluated, indent="      "):
        print(line)


def _one_line(text: str, width: int = 60) -> str:
    text = " / ".join(line.strip() for line in text.splitlines() if line.strip())
    return text if len(text) <= width else text[: width - 1] + "…"


def _loss(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _print_summary(workdir: Path, summary: dict) -> None:
    print(f"\ncookiebaker demo finished in {summary['total_seconds']:.0f} s — everything is in {workdir}/")
    if summary["stage_seconds"]:
        print("  seconds by stage (both labels): "
              + ", ".join(f"{name} {value:.0f}" for name, value in summary["stage_seconds"].items()))
    for label in LABELS:
        s = summary[label]
        print(f"\n  {label}: {s['pairs']} training samples, {s['train_seconds']:.0f} s of training; held-out loss "
              f"{_loss(s['eval_loss_before'])} (base) → {_loss(s['eval_loss_after'])} (tuned)")
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
