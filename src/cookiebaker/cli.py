"""The ``cookiebaker`` command: parses arguments and calls each stage's ``run(config)``."""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cookiebaker import __version__
from cookiebaker.config import build_config, read_params
from cookiebaker.errors import CookiebakerError

log = logging.getLogger("cookiebaker")

DESCRIPTION = """\
Turn consented group-chat exports (Telegram, WhatsApp, Discord) into fine-tuned chat responders.

Only export chats whose participants agreed that their messages are used for training.
Stages: ingest (exports → messages table) → pairs (messages → training samples)
→ train (LoRA adapter) → merge (standalone model) → export (GGUF + Modelfile, or LoRA modules) → push (Ollama)
→ eval (the replies: tuned vs base on the held-out samples) → serve (HTTP) → bot (the responder in a
Telegram group).
Every option of every command is a flag (`cookiebaker COMMAND --help`) and lives in params.yaml under the
command's section (--params FILE, default ./params.yaml); flags override the file."""


POSITIONAL = "positional_value"
PARAMS_HELP = "params file with a section per stage (default: ./params.yaml when it exists); flags override it"


@dataclass(frozen=True)
class Command:
    """A subcommand: the stage's module and typed config (every field a flag, documented by its docstring),
    the params.yaml section it reads, and how its result is summarised."""

    module: str
    config: str
    help: str
    description: str
    summarize: Callable[[Any, Any], None]
    shortcuts: dict = field(default_factory=dict)
    positional: tuple[str, str] | None = None
    """A field also given as a positional argument, and its nargs (``cookiebaker ingest data/SFW``)."""

    def config_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.config)


def _ingest_summary(config: Any, report: dict) -> None:
    print(f"ingest: {report['rows']} rows from {report['chats']} chats in {report['files_read']} files "
          f"→ {config.output}")
    for skipped in report["skipped"]:
        print(f"  skipped {skipped['file']}: {skipped['error']}")


def _pairs_summary(config: Any, report: dict) -> None:
    print(f"pairs: {report['samples']} {config.mode} samples from {report['messages']} messages "
          f"({sum(report['dropped'].values())} dropped, see the report) → {config.output}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _train_summary(config: Any, metrics: dict) -> None:
    print(f"train: {metrics['steps']} steps on {metrics['samples']} samples, eval loss "
          f"{_fmt(metrics['eval_loss_before'])} → {_fmt(metrics['eval_loss_after'])}, "
          f"{metrics['tokens_per_second']} tokens/s → {config.output_dir}")


def _merge_summary(config: Any, report: dict) -> None:
    print(f"merge: {report['adapter']} + {report['base_model']} → {report['output']}")


def _export_summary(config: Any, report: dict) -> None:
    if report.get("format") == "lora":
        print(f"export: {config.output_dir}: LoRA module {report['module_name']} (rank {report['rank']}, "
              f"{report['tensors']} tensors, {report['adapter_bytes'] / 2**20:.1f} MiB) on {report['base_model']}")
        print(f"  {' '.join(report['vllm'])}")
        return
    parity = report["parity"]
    check = "not checked" if parity is None else (
        f"llama.cpp agrees on {parity['agreement']:.0%} of {len(parity['prompts'])} prompts "
        f"(logit error {parity['logit_error']:.3f}), "
        f"tokenizer {'matches' if parity['tokenizer_matches'] else 'DIFFERS'}, "
        f"end of turn {'stops' if parity['end_of_turn_stops_generation'] else 'does NOT stop'} generation")
    print(f"export: {report['gguf']} ({report['gguf_bytes'] / 2**20:.1f} MiB, {report['quantize']}); {check}")
    print(f"  ollama create {config.name} -f {report['modelfile']}")


def _push_summary(config: Any, steps: list[str]) -> None:
    print("push: " + "; ".join(steps))


def _eval_summary(config: Any, report: dict) -> None:
    from cookiebaker.quality import measure_table

    print(f"eval: {report['heldout_samples']} held-out samples, {report['generated']} answered → {config.output} "
          f"(1-of-8 chance: {report['hit_chance']:g})")
    for line in measure_table({name: report[name] for name in ("tuned", "base", "real") if name in report}):
        print(line)


def _report_summary(config: Any, written: list) -> None:
    print(f"report: {len(written)} charts")
    for path in written:
        print(f"  {path}")


def _nothing(config: Any, result: Any) -> None:
    """The stage prints what it has to say itself (serve, demo)."""


COMMANDS: dict[str, Command] = {
    "ingest": Command(
        "cookiebaker.ingest", "IngestConfig", "read chat exports (Telegram, WhatsApp, Discord) into a messages table "
        "(Parquet)",
        "Read chat exports into one Parquet table with one row per message, service entry or unsupported entry, "
        "each file by the reader that recognises its content: Telegram Desktop JSON (single-chat or full-account, "
        "any tdesktop version), WhatsApp's \"Export chat\" (.txt, or the .zip with _chat.txt; any phone locale) and "
        "DiscordChatExporter JSON. The same chat in several files is kept once per message id (the latest edit "
        "wins).", _ingest_summary, {"output": "o"}, ("inputs", "*")),
    "pairs": Command(
        "cookiebaker.pairs", "PairsConfig", "turn a messages table into training samples (reply pairs or "
        "conversations)",
        "Build training samples from a messages table. 'pairs' mode: query = the replied-to message, response = "
        "the reply plus the same sender's burst right after it. 'conversations' mode: multi-turn samples. "
        "Forwards, bots, service entries, empty messages and opted-out senders never enter a sample; phone "
        "numbers, e-mails and card numbers are scrubbed. Every dropped candidate is counted in the report.",
        _pairs_summary, {"output": "o"}, ("input", "?")),
    "train": Command(
        "cookiebaker.train", "TrainConfig", "fine-tune a LoRA responder adapter on training samples",
        "Fine-tune a LoRA adapter (QLoRA NF4 on CUDA; the same recipe without 4-bit on CPU) on the samples written "
        "by `cookiebaker pairs`, rendered with the base model's chat template, with loss on the answers only. "
        "Writes checkpoint-N folders, the final adapter, metrics.json (eval loss before/after, throughput), "
        "heldout.json (the held-out samples, for eval) and a loss curve into the output folder. Runs unchanged "
        "under `accelerate launch` / `torchrun` with several processes.", _train_summary),
    "merge": Command(
        "cookiebaker.merge", "MergeConfig", "merge a LoRA adapter into its full-precision base model",
        "Reload the adapter's base model unquantized, merge the adapter into it and save a standalone model "
        "(safetensors) with every tokenizer file of the base.", _merge_summary),
    "export": Command(
        "cookiebaker.export", "ExportConfig", "convert a merged model to GGUF with an Ollama Modelfile, checked "
        "against llama.cpp (or an adapter to a LoRA module for vLLM/SGLang)",
        "Convert a merged model to GGUF with llama.cpp's converter (f16, bf16, q8_0; K-quants through llama.cpp's "
        "quantizer), write the Ollama Modelfile (template, temperature, top_p, stops) and a variant that lets "
        "Ollama convert the safetensors itself, and check that llama.cpp generates the same tokens as "
        "transformers. --format lora instead writes train's adapter as a LoRA module that vLLM and SGLang load "
        "beside the other responder on one base (checked against the base's modules), with the engine's command "
        "line. The input folder is never changed.", _export_summary),
    "push": Command(
        "cookiebaker.export.push", "PushConfig", "create the exported model in Ollama and push it",
        "Run `ollama create NAME -f Modelfile` and `ollama push NAME` in the export folder, or, without the "
        "ollama CLI, the same through the REST API of the server at OLLAMA_HOST.", _push_summary),
    "eval": Command(
        "cookiebaker.eval", "EvalConfig", "measure the replies: tuned responder and its base on the samples "
        "train held out",
        "Evaluate a responder on exactly the samples `cookiebaker train` held out (heldout.json beside the "
        "adapter): response-only loss, and replies generated through the backend `serve` uses, with the export's "
        "sampling settings and a fixed seed, measured for echoes of the query, loops, empty replies, stops on the "
        "end-of-turn token, chat-template leaks, distinct bigrams and length, beside the base model and the real "
        "responses. Writes a JSON report (numbers only, a DVC metric) and a Markdown side-by-side table (holds "
        "chat text).", _eval_summary, {"output": "o"}),
    "serve": Command(
        "cookiebaker.serve", "ServeConfig", "serve the SFW and NSFW responders over HTTP",
        "One HTTP service for both responders: POST /webhook/response routes a client's message by its sfw flag "
        "and keeps the chat's history; /api/chat and /api/tags speak Ollama's API and /v1/chat/completions "
        "OpenAI's (streaming too), with model names cookiebaker-sfw and cookiebaker-nsfw; /healthz; /metrics "
        "(Prometheus). Set COOKIEBAKER_API_KEY to require Authorization: Bearer <key> (required off loopback). "
        "A model is a .gguf or export folder (llama.cpp in this process), a merged model folder (transformers), "
        "ollama:NAME, or openai:http://HOST:PORT/v1#MODEL (vLLM, SGLang, llama.cpp's server: any engine with "
        "OpenAI's chat API; with --sfw-modelfile/--nsfw-modelfile for the export's system prompt and sampling).",
        _nothing),
    "bot": Command(
        "cookiebaker.bot", "BotConfig", "the responder in a Telegram group: a bot that answers through `serve`",
        "Long-poll Telegram's Bot API (token from TELEGRAM_BOT_TOKEN) and take part in the chats the bot is in: "
        "answer every message in a private chat; in a group answer mentions, replies to the bot and trigger words "
        "(and unasked with reply_probability), once per burst after debounce_seconds, at most once per "
        "cooldown_seconds; store what it does not answer as context, with who said it. /sfw on|off (admins) picks "
        "the responder per chat, /forget deletes the sender's messages from the history, /privacy says what is "
        "kept. Opted-out senders are never stored or sent. Replies come from `cookiebaker serve` (service_url, "
        "key from COOKIEBAKER_API_KEY).", _nothing),
    "report": Command(
        "cookiebaker.report", "ReportConfig", "draw PNG charts of the datasets and of training",
        "Charts in <workdir>/reports: messages per chat and per sender, reply and burst statistics, what was "
        "dropped and why, sample lengths in tokens, and the train/eval loss curves.", _report_summary),
    "demo": Command(
        "cookiebaker.demo", "DemoConfig", "run the pipeline end to end on built-in sample chats, offline",
        "Write sample SFW and NSFW Telegram exports (invented people, no real data) into WORKDIR/data and run the "
        "whole chain on them with the real stages: ingest, pairs, train on the embedded SmolLM2-135M (a short CPU "
        "schedule), merge, export to GGUF checked in llama.cpp, eval, and the service, asked once per route. "
        "Finished stages are reused when run again.", _nothing),
}


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def _build_parser(command: str | None):  # noqa: ANN202
    """The top-level parser, and the chosen command's options derived from its config (others stay unbuilt, so
    a command imports only its own stage)."""
    from pydantic_settings import CliSettingsSource

    parser = argparse.ArgumentParser(prog="cookiebaker", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cookiebaker {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    source = None
    for name, spec in COMMANDS.items():
        sub = commands.add_parser(name, help=spec.help, description=spec.description)
        if name == command:
            sub.add_argument("--params", metavar="FILE", help=PARAMS_HELP)
            if spec.positional:
                field_name, nargs = spec.positional
                sub.add_argument(POSITIONAL, nargs=nargs, metavar=field_name.upper(),
                                 help=f"the same as --{field_name.replace('_', '-')}")
            source = CliSettingsSource(spec.config_class(), root_parser=sub, cli_kebab_case=True,
                                       cli_implicit_flags=True, cli_avoid_json=True, cli_shortcuts=spec.shortcuts)
    return parser, source


def _given_options(source: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line (nested as the config nests them), not yet validated."""
    skip = ("command", "verbose", "quiet", "params", POSITIONAL)
    given = source(parsed_args={key: value for key, value in vars(args).items() if key not in skip})()
    positional = getattr(args, POSITIONAL, None)
    if positional not in (None, []):
        given[COMMANDS[args.command].positional[0]] = positional
    return given


def run_command(args: argparse.Namespace, source: Any) -> None:
    spec = COMMANDS[args.command]
    config = build_config(spec.config_class(), args.command, read_params(args.params), _given_options(source, args))
    stage = importlib.import_module(spec.module)
    spec.summarize(config, stage.run(config))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, source = _build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        run_command(args, source)
    except CookiebakerError as exc:
        print(f"cookiebaker {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cookiebaker {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def console() -> None:
    """The ``cookiebaker`` command. The process ends right after the command: objects that exist by then (the
    imports', the results') are frozen out of the cyclic collector, whose passes would walk them to no end."""
    gc.freeze()
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    console()
