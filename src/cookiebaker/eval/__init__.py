"""Stage ``eval``: the replies themselves. The tuned responder and its base, side by side, on exactly the
samples ``train`` held out: response-only loss; whether the model knows which message a real reply answers
(``context_hit``: the reply's log-likelihood after its own message against 7 others); and generated replies
(through the backend ``serve`` uses, with the export's sampling settings and a fixed seed) measured for echoes,
loops, empty replies, stops, template leaks, genericness, diversity and length, for whether they fit their
message (``judge_hit``, the same 1-of-8 test scored by the frozen base) and for whether they can be told from the
chat's own (``style_auc``), beside the same measures of the real responses. Every measure is in one registry,
``quality.MEASURES``.

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
from pydantic import Field

from cookiebaker.chat import HELDOUT_FILE, Message, sample_digest, sample_keys, samples_to_messages
from cookiebaker.config import StageConfig, config_path_for, save_resolved_config
from cookiebaker.errors import DatasetError, ModelError
from cookiebaker.io import atomic_path, write_json
from cookiebaker.progress import progress_bar
from cookiebaker.quality import (
    ECHO_SIMILARITY,
    OTHER_PROMPTS,
    Reply,
    ReplySet,
    candidate_prompts,
    measure_rows,
    measure_texts,
    one_in_k_hit_rate,
)

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
    hit_chance: float
    """The chance level of context_hit and judge_hit: 1 / (1 + the other prompts each reply is scored after)."""
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
    hit_tokens: int = Field(16, ge=1)
    """The 1-of-8 tests (context_hit, judge_hit) read at most this many tokens of a reply, its beginning (with the
    end of turn when it is that short): a long reply is judged by how it starts, and scoring eight prompts per
    reply stays cheap."""


@dataclass
class HeldOut:
    """The held-out samples, in the order train recorded them."""

    conversations: list[list[Message]]
    split: Path
    record: dict
    leaked: int


def find_split(model: str) -> Path | None:
    """``heldout.json`` of the adapter a model came from (``provenance.training_record_path``)."""
    from cookiebaker.provenance import training_record_path

    return training_record_path(model)


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


def _open(reference: str, kind: str | None = None):  # noqa: ANN202
    """The backend ``serve`` would use for a reference (``backends.resolve``); an embedded base is served as a GGUF
    of ``kind`` (the tuned export's type), a hub id or a model folder by transformers."""
    from cookiebaker.backends import resolve

    return resolve(reference, gguf_kind=kind, hub=True)


def gguf_type(model: str) -> str | None:
    """The GGUF type of an export (its export.json), or of a .gguf named ``<name>.<type>.gguf``; None otherwise."""
    path = Path(model)
    report = (path.parent if path.suffix == ".gguf" else path) / "export.json"
    if report.is_file():
        return json.loads(report.read_text(encoding="utf-8")).get("quantize")
    return None


def _loss(backend, samples: list[list[Message]], max_length: int) -> dict:  # noqa: ANN001
    try:
        scored = backend.score(samples, max_length)
    except ModelError as exc:
        log.warning("eval: no loss for %s: %s", backend.description, exc)
        return {"loss": None, "loss_tokens": 0}
    tokens = sum(count for _, count in scored)
    return {"loss": round(sum(total for total, _ in scored) / tokens, 4) if tokens else None, "loss_tokens": tokens}


#: Prompts a backend answers at once (a GGUF decodes them side by side).
REPLY_BATCH = 32


def _generate(backend, prompts: list[list[Message]], sampling, label: str) -> list[Reply]:  # noqa: ANN001
    replies: list[Reply] = []
    with progress_bar() as progress:
        task = progress.add_task(f"eval: {label} replies", total=len(prompts))
        for start in range(0, len(prompts), REPLY_BATCH):
            replies += backend.replies(prompts[start:start + REPLY_BATCH], sampling)
            progress.advance(task, len(prompts[start:start + REPLY_BATCH]))
    return replies


@dataclass
class Answered:
    """The held-out samples that are answered: their prompts, the real replies, and the prompts each reply is
    scored after in the 1-of-8 tests (its own first)."""

    prompts: list[list[Message]]
    queries: list[str]
    real: list[str]
    candidates: list[list[int]]


def capped(held: HeldOut, backend) -> HeldOut:  # noqa: ANN001
    """The held-out samples with their earlier turns cut as train cut them (``turn_tokens``), in the backend's
    tokens (the tuned model and its base share a tokenizer)."""
    from cookiebaker.chat import cap_sample

    limit = held.record.get("turn_tokens")
    try:
        backend.text_tokens("")
    except NotImplementedError:  # a backend that cannot count tokens renders (and cuts) prompts itself
        return held
    samples = [cap_sample(sample, backend.text_tokens, limit) for sample in held.conversations]
    return HeldOut(samples, held.split, held.record, held.leaked)


def answered_samples(held: HeldOut, config: EvalConfig) -> Answered:
    samples = held.conversations[: config.max_samples]
    queries = [sample[-2]["content"] for sample in samples]
    return Answered([sample[:-1] for sample in samples], queries, [sample[-1]["content"] for sample in samples],
                    candidate_prompts(queries, OTHER_PROMPTS, config.seed))


def hit_rates(backend, answered: Answered, reply_sets: dict[str, list[str]], max_length: int,  # noqa: ANN001
              label: str, reply_tokens: int | None = None) -> dict[str, float | None]:
    """For each set of replies, the 1-of-8 hit rate of ``backend``'s log-likelihoods: every reply scored after its
    own prompt and its candidates, all sets in one pass (a prompt is decoded once for every reply scored after it)."""
    requests: list[tuple[int, str]] = []
    rows: dict[str, list[range]] = {}
    for name, texts in reply_sets.items():
        rows[name] = []
        for text, candidates in zip(texts, answered.candidates):
            rows[name].append(range(len(requests), len(requests) + len(candidates)))
            requests += [(prompt, text) for prompt in candidates]
    log.info("eval: %s scores %d replies after %d prompts", label, len(requests), len(answered.prompts))
    try:
        scores = backend.score_replies(answered.prompts, requests, max_length, reply_tokens)
    except ModelError as exc:
        log.warning("eval: no 1-of-8 scores from %s: %s", backend.description, exc)
        return dict.fromkeys(reply_sets)
    return {name: one_in_k_hit_rate([[scores[k] for k in row] for row in rows[name]]) for name in reply_sets}


@dataclass
class Measured:
    """One model's part of the report: what its backend measured, its replies and the sampling it used."""

    values: dict
    replies: list[Reply]
    sampling: object
    backend: object


def _measure(backend, what: str, held: HeldOut, answered: Answered, config: EvalConfig,
             sampling) -> Measured:  # noqa: ANN001
    """Loss on every held-out sample and the replies to the answered queries. The backend stays open (for the
    1-of-8 scores)."""
    if sampling is None:
        sampling = getattr(backend, "default", None)
    sampling = sampling.merged(max_tokens=config.max_new_tokens, seed=config.seed, temperature=config.temperature,
                               top_p=config.top_p)
    max_length = int(held.record.get("max_length") or 1024)
    loss = _loss(backend, held.conversations, max_length)
    replies = _generate(backend, answered.prompts, sampling, what)
    values = {"backend": backend.description, **loss, "generated": len(replies)}
    return Measured(values, replies, sampling, backend)


def _close(measured: Measured) -> None:
    measured.backend = None
    gc.collect()


def _text_measures(answered: Answered, replies: list[Reply] | None, config: EvalConfig) -> dict:
    texts = [r.text for r in replies] if replies is not None else answered.real
    return measure_texts(ReplySet(answered.queries, texts, answered.real,
                                  [r.finish_reason for r in replies] if replies is not None else None,
                                  config.echo_threshold))


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
    sets = {name: report[name] for name in (*columns, "real")}
    lines = ["# cookiebaker eval", "",
             "> **This report holds chat text** (held-out queries, real responses and generated replies). "
             "Keep it where the chat itself may be kept; the JSON report beside it has numbers only.", "",
             f"Model `{config.model}`, base `{report['base_model']}`, {report['heldout_samples']} held-out samples "
             f"({report['generated']} answered; chance of the 1-of-8 measures {report['hit_chance']:g}).", "",
             "| measure | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    lines += [f"| {title} | " + " | ".join(cells) + " |" for title, cells in measure_rows(sets)]
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
    max_length = int(held.record.get("max_length") or 1024)
    backend = _open(config.model)
    held = capped(held, backend)
    answered = answered_samples(held, config)
    log.info("eval: %d held-out samples from %s; answering %d", len(held.conversations), held.split,
             len(answered.prompts))
    tuned = _measure(backend, "tuned", held, answered, config, None)
    del backend
    tuned.values["context_hit"] = hit_rates(tuned.backend, answered, {"real": answered.real}, max_length,
                                            "the tuned model", config.hit_tokens)["real"]
    _close(tuned)
    measured = {"tuned": tuned}
    if compare:
        base = _measure(_open(str(base_reference), gguf_type(config.model)), "base", held, answered, config,
                        tuned.sampling)
        judged = hit_rates(base.backend, answered, {"real": answered.real, "tuned": [r.text for r in tuned.replies],
                                                    "base": [r.text for r in base.replies]}, max_length, "the base",
                           config.hit_tokens)
        _close(base)
        base.values["context_hit"] = judged["real"]  # the base knowing which message a real reply answers
        measured["base"] = base
    report: EvalReport = {
        "model": config.model,
        "base_model": base_reference if compare else None,
        "data": config.data,
        "split": str(held.split),
        "heldout_samples": len(held.conversations),
        "generated": len(tuned.replies),
        "leaked": held.leaked,
        "sampling": {"temperature": tuned.sampling.temperature, "top_p": tuned.sampling.top_p,
                     "max_tokens": tuned.sampling.max_tokens, "seed": tuned.sampling.seed,
                     "stop": tuned.sampling.stop},
        "hit_chance": round(1 / (1 + OTHER_PROMPTS), 4),
    }
    for name, model in measured.items():
        report[name] = {**model.values, **_text_measures(answered, model.replies, config),
                        "judge_hit": judged[name] if compare else None}
    report["real"] = {"samples": len(answered.real), **_text_measures(answered, None, config),
                      "judge_hit": judged["real"] if compare else None}
    write_reports(config, report, held, {name: model.replies for name, model in measured.items()})
    log.info("eval: tuned loss %s, context hit %s, judge hit %s, style AUC %s; base loss %s, context hit %s",
             report["tuned"]["loss"], report["tuned"]["context_hit"], report["tuned"]["judge_hit"],
             report["tuned"]["style_auc"], report.get("base", {}).get("loss"),
             report.get("base", {}).get("context_hit"))
    return report


def write_reports(config: EvalConfig, report: EvalReport, held: HeldOut, replies: dict[str, list[Reply]]) -> None:
    """The JSON report (numbers only), the Markdown side by side and its rows as JSON, the resolved config."""
    write_json(report, config.output)
    markdown = Path(config.markdown) if config.markdown else Path(config.output).with_suffix(".md")
    table = side_by_side(held, replies, config.table_rows)
    write_markdown(markdown, config, report, table)
    write_json(table, samples_path(markdown))
    save_resolved_config(config, config_path_for(config.output))
