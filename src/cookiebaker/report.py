"""``cookiebaker report``: charts of the datasets and of training, as PNG files (also DVC plots)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl

from cookiebaker.config import StageConfig
from cookiebaker.errors import DatasetError

log = logging.getLogger(__name__)


class ReportConfig(StageConfig):
    workdir: str = "."
    """Project folder: reads data/<LABEL>.parquet, data/<LABEL>_qa.parquet, reports/pairs_<LABEL>.json and
    models/<LABEL>/loss_curve.json for every label found."""
    output_dir: str | None = None
    """Where the PNG files go (default: <workdir>/reports)."""
    tokenizer: str | None = None
    """Tokenizer for the sample-length histogram (a model folder); default: the first trained adapter's, else
    words."""


def _labels(workdir: Path) -> list[str]:
    return sorted(p.stem for p in (workdir / "data").glob("*.parquet") if not p.stem.endswith("_qa"))


def _save(figure, path: Path) -> Path:  # noqa: ANN001
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _token_counter(config: ReportConfig, workdir: Path):  # noqa: ANN202
    folder = config.tokenizer or next((str(p.parent) for p in sorted((workdir / "models").glob("*/tokenizer_config.json"))),
                                      None)
    if folder:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        return "tokens", lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return "words", lambda texts: [len(t.split()) for t in texts]


def run(config: ReportConfig) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workdir = Path(config.workdir)
    labels = _labels(workdir)
    if not labels:
        raise DatasetError(f"{workdir / 'data'} has no messages tables: run ingest (or the demo) first")
    out = Path(config.output_dir) if config.output_dir else workdir / "reports"
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    unit, count = _token_counter(config, workdir)
    for label in labels:
        messages = pl.read_parquet(workdir / "data" / f"{label}.parquet")
        figure, (chats, senders) = plt.subplots(1, 2, figsize=(11, 4))
        per_chat = messages.group_by(pl.col("chat_name").fill_null("(no name)")).len().sort("len", descending=True)
        chats.barh(per_chat["chat_name"].to_list()[:10][::-1], per_chat["len"].to_list()[:10][::-1], color="#c77d3a")
        chats.set_title(f"{label}: messages per chat")
        per_sender = (messages.filter(pl.col("kind") == "message")
                      .group_by(pl.col("sender").fill_null("(deleted)")).len().sort("len", descending=True))
        senders.barh(per_sender["sender"].to_list()[:15][::-1], per_sender["len"].to_list()[:15][::-1], color="#5b8bd0")
        senders.set_title(f"{label}: messages per sender")
        written.append(_save(figure, out / f"{label}_messages.png"))

        report_path = workdir / "reports" / f"pairs_{label}.json"
        qa_path = workdir / "data" / f"{label}_qa.parquet"
        if report_path.is_file() and qa_path.is_file():
            report = json.loads(report_path.read_text())
            figure, (stats, dropped) = plt.subplots(1, 2, figsize=(11, 4))
            numbers = {"reply candidates": report.get("reply_candidates", 0), "pairs": report.get("pairs", 0),
                       "pairs with a burst": report.get("pairs_with_burst", 0),
                       "burst messages merged": report.get("burst_messages_merged", 0)}
            stats.bar(list(numbers), list(numbers.values()), color="#6aa84f")
            stats.set_title(f"{label}: replies and bursts")
            stats.tick_params(axis="x", rotation=20)
            reasons = dict(report.get("dropped") or {})
            dropped.barh(list(reasons)[::-1], list(reasons.values())[::-1], color="#cc4125")
            dropped.set_title(f"{label}: what was dropped, and why")
            written.append(_save(figure, out / f"{label}_pairs.png"))
            samples = pl.read_parquet(qa_path)
            if "query" in samples.columns and samples.height:
                lengths = count([q + "\n" + r for q, r in zip(samples["query"].to_list(), samples["response"].to_list())])
                figure, axis = plt.subplots(figsize=(7, 4))
                axis.hist(lengths, bins=30, color="#8e7cc3")
                axis.set_xlabel(f"sample length ({unit}, query + response)")
                axis.set_ylabel("samples")
                axis.set_title(f"{label}: sample lengths")
                written.append(_save(figure, out / f"{label}_sample_lengths.png"))

        curve = workdir / "models" / label / "loss_curve.json"
        if curve.is_file():
            data = json.loads(curve.read_text())
            figure, axis = plt.subplots(figsize=(7, 4))
            axis.plot([p["step"] for p in data["train"]], [p["train_loss"] for p in data["train"]], label="train")
            if data["eval"]:
                axis.plot([p["step"] for p in data["eval"]], [p["eval_loss"] for p in data["eval"]], "o--", label="eval")
            axis.set_xlabel("optimizer step")
            axis.set_ylabel("loss")
            axis.set_title(f"{label}: training")
            axis.legend()
            axis.grid(alpha=0.3)
            written.append(_save(figure, out / f"{label}_training.png"))
    log.info("report: %d charts in %s", len(written), out)
    return written
