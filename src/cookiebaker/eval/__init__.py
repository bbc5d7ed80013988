"""Stage ``eval``: the replies themselves. The tuned responder and its base, side by side, on exactly the
samples ``train`` held out: response-only loss, and generated replies (through the backend ``serve`` uses,
with the export's sampling settings and a fixed seed) measured for echoes, loops, empty replies, stops on the
end-of-turn token, template leaks, diversity and length, beside the same statistics of the real responses.

Writes a JSON report (a DVC metric, no chat text) and a Markdown report with a side-by-side table, which holds
chat text and says so. Logs never hold chat text.
"""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import polars as pl
import yaml
from pydantic import Field

from cookiebaker.chat import HELDOUT_FILE, Message, sample_digest, sample_keys, samples_to_messages
from cookiebaker.config import StageConfig, config_path_for, save_resolved_config
from cookiebaker.errors import DatasetError, ModelError
from cookiebaker.io import atomic_path, write_json
from cookiebaker.progress import progress_bar
from cookiebaker.quality import ECHO_SIMILARITY, Reply, reply_statistics, text_statistics

__all__ = ["EvalConfig", "run", "find_split"]

log = logging.getLogger(__name__)



class EvalReport(TypedDict, total=False):
    """The JSON report (a DVC metric): numbers only, never chat text. ``base`` is absent without a base."""

    model: str
    base_model: str | None
    data: str
    split: str
    heldout_samples: int
    generated: int
    leaked: int
    sampling: dict
    tuned: dict
    base: dict
    real: dict


class EvalConfig(StageConfig):
    model: str = "models/export"
    """The tuned responder: an export folder (GGUF + Modelfile), a .gguf file, a merged model folder, or
    ollama:NAME: the same references ``serve`` takes, evaluated through the same backend."""
    data: str = "data/qa.parquet"
    """The samples table the responder was trained on (``cookiebaker pairs``)."""
    output: str = "reports/eval.json"
    """The JSON report (a DVC metric; no chat text)."""
    markdown: str | None = None
    """The side-by-side Markdown report (holds chat text); default: the output with the suffix .md."""
    split: str | None = None
    """The held-out file ``train`` wrote (``heldout.json`` in its output folder); default: found from the
    model's provenance (export → merged model → adapter)."""
    base_model: str | None = None
    """The base to compare with: a hub id, a model folder, ``embedded:NAME``, or a GGUF/export folder;
    default: the base recorded by train; ``none``: no comparison."""
    max_samples: int = Field(64, ge=1)
    """Held-out queries answered by each model (the loss uses every held-out sample)."""
    max_new_tokens: int = Field(64, ge=1)
    """Longest generated reply in tokens; a reply that reaches it did not stop."""
    seed: int = 0
    """Sampling seed of every generation."""
    temperature: float | None = Field(None, ge=0)
    """Override the export's temperature (default: the Modelfile's)."""
    top_p: float | None = Field(None, gt=0, le=1)
    """Override the export's top_p (default: the Modelfile's)."""
    echo_threshold: float = Field(ECHO_SIMILARITY, gt=0, le=1)
    """A reply at least this similar to its query (normalised words) is an echo."""
    table_rows: int = Field(16, ge=0)
    """Samples shown side by side in the Markdown report."""


@dataclass
class HeldOut:
    """The held-out samples, in the order train recorded them."""

    conversations: list[list[Message]]
    split: Path
    record: dict
    leaked: int


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {} if path.is_file() else {}


def find_split(model: str) -> Path | None:
    """``heldout.json`` of the adapter a model came from: export folder (or its GGUF) → merged folder →
    adapter (its train output folder, or the folder above a checkpoint-N)."""
    path = Path(model)
    folder = path.parent if path.suffix == ".gguf" else path
    merged = _yaml(folder / "export_config.yaml").get("model") or (str(folder) if folder.is_dir() else None)
    adapter = _yaml(Path(merged) / "merge_config.yaml").get("adapter") if merged else None
    if not adapter:
        return None
    for candidate in (Path(adapter) / HELDOUT_FILE, Path(adapter).parent / HELDOUT_FILE):
        if candidate.is_file():
            return candidate
    return None


def load_heldout(config: EvalConfig) -> HeldOut:
    """The samples train held out, checked against the data: every one must still be there, unchanged."""
    split = Path(config.split) if config.split else find_split(config.model)
    if split is None or not split.is_file():
        raise DatasetError(f"cannot find the held-out split of {config.model}"
                           f"{f' ({split})' if split else ''}: pass --split <train output>/{HELDOUT_FILE}")
    record = json.loads(split.read_text(encoding="utf-8"))
    try:
        frame = pl.read_parquet(config.data)
    except FileNotFoundError:
        raise DatasetError(f"{config.data}: no such file (run `cookiebaker pairs` first)") from None
    conversations = samples_to_messages(frame)
    digests = [sample_digest(messages) for messages in conversations]
    rows_of: dict[str, list[int]] = {}
    for row, key in enumerate(sample_keys(frame)):
        rows_of.setdefault(key, []).append(row)
    chosen = []
    for sample in record["heldout"]:
        rows = [row for row in rows_of.get(sample["key"], []) if digests[row] == sample["digest"]]
        if rows:
            chosen.append(rows[0])
    missing = len(record["heldout"]) - len(chosen)
    if missing or not chosen:
        raise DatasetError(f"{config.data} does not match the split in {split}: {missing} of "
                           f"{len(record['heldout'])} held-out samples are missing or changed (evaluate with the "
                           f"data the model was trained on, {record.get('data')})")
    held = set(chosen)
    trained_digests = {digests[row] for row in range(len(digests)) if row not in held}
    leaked = sum(digests[row] in trained_digests for row in chosen)
    system = record.get("system_prompt")
    samples = [([{"role": "system", "content": system}] if system else []) + conversations[row] for row in chosen]
    return HeldOut(samples, split, record, leaked)


def _open(reference: str):  # noqa: ANN202
    """The backend ``serve`` would use for a reference; an embedded base is served from the GGUF it ships as,
    a hub id or a model folder by transformers."""
    from cookiebaker.backends import Sampling, TransformersBackend, open_backend
    from cookiebaker.models import EMBEDDED_PREFIX, embedded_gguf, load_failure, resolve_base_model

    if reference.startswith(EMBEDDED_PREFIX):
        return open_backend(str(embedded_gguf(reference.removeprefix(EMBEDDED_PREFIX))))
    path = Path(reference).expanduser()
    servable = reference.startswith("ollama:") or path.suffix == ".gguf" or (
        path.is_dir() and (any(path.glob("*.gguf")) or (path / "config.json").is_file()))
    if servable:
        return open_backend(reference)
    folder = resolve_base_model(reference)
    try:
        return TransformersBackend(Path(folder), Sampling())
    except (OSError, ValueError) as exc:
        raise load_failure(folder, exc) from None


def _loss(backend, samples: list[list[Message]], max_length: int) -> dict:  # noqa: ANN001
    try:
        scored = backend.score(samples, max_length)
    except ModelError as exc:
        log.warning("eval: no loss for %s: %s", backend.description, exc)
        return {"loss": None, "loss_tokens": 0}
    tokens = sum(count for _, count in scored)
    return {"loss": round(sum(total for total, _ in scored) / tokens, 4) if tokens else None, "loss_tokens": tokens}


def _generate(backend, prompts: list[list[Message]], sampling, label: str) -> list[Reply]:  # noqa: ANN001
    replies = []
    with progress_bar() as progress:
        task = progress.add_task(f"eval: {label} replies", total=len(prompts))
        for prompt in prompts:
            replies.append(backend.reply(prompt, sampling))
            progress.advance(task)
    return replies


def _measure(reference: str, what: str, held: HeldOut, config: EvalConfig,
             sampling):  # noqa: ANN001, ANN202
    """Loss on every held-out sample and statistics of the replies to the first ``max_samples`` queries."""
    backend = _open(reference)
    if sampling is None:
        sampling = getattr(backend, "default", None)
    sampling = sampling.merged(max_tokens=config.max_new_tokens, seed=config.seed, temperature=config.temperature,
                               top_p=config.top_p)
    prompts = [sample[:-1] for sample in held.conversations[: config.max_samples]]
    queries = [prompt[-1]["content"] for prompt in prompts]
    loss = _loss(backend, held.conversations, int(held.record.get("max_length") or 1024))
    replies = _generate(backend, prompts, sampling, what)
    description = backend.description
    del backend
    gc.collect()
    return {"backend": description, **loss, **reply_statistics(queries, replies, config.echo_threshold)}, replies, \
        sampling


def side_by_side(held: HeldOut, replies: dict[str, list[Reply]], rows: int) -> list[dict]:
    """The first ``rows`` held-out samples: query, real response and every model's reply (chat text)."""
    table = []
    for index, sample in enumerate(held.conversations[: min(rows, len(replies["tuned"]))]):
        row = {"query": sample[-2]["content"], "real": sample[-1]["content"]}
        for name, answers in replies.items():
            row[name] = answers[index].text
            row[f"{name}_finish"] = answers[index].finish_reason
        table.append(row)
    return table


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or "*(empty)*"


def write_markdown(target: Path, config: EvalConfig, report: dict, table: list[dict]) -> None:
    columns = [name for name in ("tuned", "base") if name in report]
    lines = ["# cookiebaker eval", "",
             "> **This report holds chat text** (held-out queries, real responses and generated replies). "
             "Keep it where the chat itself may be kept; the JSON report beside it has numbers only.", "",
             f"Model `{config.model}`, base `{report['base_model']}`, {report['heldout_samples']} held-out samples "
             f"({report['generated']} answered).", "",
             "| measure | " + " | ".join(columns) + " | real |", "|---|" + "---|" * (len(columns) + 1)]
    for measure in ("loss", "echo_rate", "loop_rate", "empty_rate", "stop_rate", "template_leak_rate",
                    "distinct_2", "mean_reply_words"):
        values = [report[c].get(measure) for c in columns] + [report["real"].get(measure)]
        lines.append(f"| {measure} | " + " | ".join("–" if v is None else f"{v:g}" for v in values) + " |")
    lines += ["", "| # | query | real response | " + " | ".join(columns) + " |",
              "|---|---|---|" + "---|" * len(columns)]
    for index, row in enumerate(table):
        cells = [_cell(row["query"]), _cell(row["real"])]
        cells += [_cell(row[c]) + ("" if row[f"{c}_finish"] == "stop" else " *(cut)*") for c in columns]
        lines.append(f"| {index + 1} | " + " | ".join(cells) + " |")
    with atomic_path(target) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")


def samples_path(markdown: Path) -> Path:
    """The side-by-side rows as JSON, beside the Markdown report (chat text too)."""
    return markdown.with_name(f"{markdown.stem}.samples.json")


def run(config: EvalConfig) -> EvalReport:
    """Evaluate the tuned model (and its base) on the held-out samples; write the JSON and Markdown reports."""
    held = load_heldout(config)
    if held.leaked:
        log.warning("eval: %d held-out samples have the same text as a trained one (split made by an older train)",
                    held.leaked)
    base_reference = config.base_model or held.record.get("base_model")
    compare = bool(base_reference) and str(base_reference).lower() != "none"
    log.info("eval: %d held-out samples from %s; answering %d", len(held.conversations), held.split,
             min(config.max_samples, len(held.conversations)))
    tuned, tuned_replies, sampling = _measure(config.model, "tuned", held, config, None)
    replies = {"tuned": tuned_replies}
    report: EvalReport = {
        "model": config.model,
        "base_model": base_reference if compare else None,
        "data": config.data,
        "split": str(held.split),
        "heldout_samples": len(held.conversations),
        "generated": len(tuned_replies),
        "leaked": held.leaked,
        "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens,
                     "seed": sampling.seed, "stop": sampling.stop},
        "tuned": tuned,
    }
    if compare:
        report["base"], replies["base"], _ = _measure(str(base_reference), "base", held, config, sampling)
    answered = held.conversations[: config.max_samples]
    report["real"] = text_statistics([s[-2]["content"] for s in answered], [s[-1]["content"] for s in answered],
                                     config.echo_threshold)
    write_json(report, config.output)
    markdown = Path(config.markdown) if config.markdown else Path(config.output).with_suffix(".md")
    table = side_by_side(held, replies, config.table_rows)
    write_markdown(markdown, config, report, table)
    write_json(table, samples_path(markdown))
    save_resolved_config(config, config_path_for(config.output))
    log.info("eval: tuned loss %s, echo %s, loop %s, stop %s; base loss %s, echo %s", tuned["loss"],
             tuned["echo_rate"], tuned["loop_rate"], tuned["stop_rate"], report.get("base", {}).get("loss"),
             report.get("base", {}).get("echo_rate"))
    return report
