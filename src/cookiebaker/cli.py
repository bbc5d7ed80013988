"""The ``cookiebaker`` command: parses arguments and calls each stage's ``run(config)``."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from typing import Any

from cookiebaker import __version__
from cookiebaker.config import build_config, read_params
from cookiebaker.errors import CookiebakerError

log = logging.getLogger("cookiebaker")

DESCRIPTION = """\
Turn consented Telegram Desktop chat exports into fine-tuned chat responders.

Only export chats whose participants agreed that their messages are used for training.
Stages: ingest (exports → messages table) → pairs (messages → training samples)
→ train (LoRA adapter) → merge (standalone model) → export (GGUF + Modelfile) → push (Ollama)
→ eval (the replies: tuned vs base on the held-out samples) → serve (HTTP).
Every option also lives in params.yaml (one section per stage); flags override it."""


def _add_params_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", metavar="FILE", default=None,
                        help="params file with a section per stage (default: ./params.yaml when it exists)")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cookiebaker", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cookiebaker {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ingest = commands.add_parser(
        "ingest", help="read Telegram Desktop JSON exports into a messages table (Parquet)",
        description="Read Telegram Desktop JSON exports (single-chat or full-account, any tdesktop version) "
                    "into one Parquet table with one row per message, service entry or unsupported entry. "
                    "The same chat in several files is kept once per message id (the latest edit wins).")
    ingest.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="export file or folder (a folder means every *.json below it)")
    ingest.add_argument("-o", "--output", help="messages table to write (default: data/messages.parquet)")
    ingest.add_argument("--report", help="report to write (JSON; default: <output stem>_ingest.json)")
    ingest.add_argument("--skip-invalid", action="store_true", default=None,
                        help="continue past files that are not Telegram JSON exports, listing them in the report")
    _add_params_option(ingest)

    pairs = commands.add_parser(
        "pairs", help="turn a messages table into training samples (reply pairs or conversations)",
        description="Build training samples from a messages table. 'pairs' mode: query = the replied-to "
                    "message, response = the reply plus the same sender's burst right after it. "
                    "'conversations' mode: multi-turn samples. Forwards, bots, service entries, empty messages "
                    "and opted-out senders never enter a sample; phone numbers, e-mails and card numbers are "
                    "scrubbed. Every dropped candidate is counted in the report.")
    pairs.add_argument("input", metavar="MESSAGES", help="messages table written by `cookiebaker ingest`")
    pairs.add_argument("-o", "--output", help="samples to write (Parquet; default: data/qa.parquet)")
    pairs.add_argument("--report", help="report to write (JSON; default: <output stem>_report.json)")
    pairs.add_argument("--mode", choices=["pairs", "conversations"], help="kind of samples (default: pairs)")
    pairs.add_argument("--burst-window-minutes", type=float, metavar="M",
                       help="a response burst continues while its sender writes again within M minutes (default 5)")
    pairs.add_argument("--session-gap-minutes", type=float, metavar="M",
                       help="conversations: silence that starts a new session (default 60)")
    pairs.add_argument("--max-turns", type=int, metavar="N", help="conversations: turns per sample (default 16)")
    pairs.add_argument("--response-sender-id", action="append", dest="response_sender_ids", metavar="ID",
                       help="keep only responses by this sender (repeatable), e.g. user123")
    pairs.add_argument("--bot-sender-id", action="append", dest="bot_sender_ids", metavar="ID",
                       help="treat this sender as a bot (repeatable)")
    pairs.add_argument("--opt-out-sender-id", action="append", dest="opt_out_sender_ids", metavar="ID",
                       help="never use this sender's messages (repeatable; adds to params.yaml's list)")
    _add_params_option(pairs)

    train = commands.add_parser(
        "train", help="fine-tune a LoRA responder adapter on training samples",
        description="Fine-tune a LoRA adapter (QLoRA NF4 on CUDA; the same recipe without 4-bit on CPU) on the "
                    "samples written by `cookiebaker pairs`, rendered with the base model's chat template, with "
                    "loss on the answers only. Writes checkpoint-N folders, the final adapter, metrics.json "
                    "(eval loss before/after, throughput) and a loss curve into the output folder. Runs "
                    "unchanged under `accelerate launch` / `torchrun` with several processes.")
    train.add_argument("--data", help="samples table (default: data/qa.parquet)")
    train.add_argument("--output-dir", help="adapter and checkpoints folder (default: models/adapter)")
    train.add_argument("--report", help="also write the metrics here (JSON, a DVC metric) and the loss curve beside it")
    train.add_argument("--base-model", help="hub id, local model folder or embedded:smollm2-135m")
    train.add_argument("--max-steps", type=int, help="optimizer steps (default 150)")
    train.add_argument("--learning-rate", type=float, help="peak learning rate (default 1e-5)")
    train.add_argument("--warmup-steps", type=int, help="warm-up steps (default 15)")
    train.add_argument("--batch-size", type=int, help="samples per micro-batch (default 1)")
    train.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 16)")
    train.add_argument("--lora-r", type=int, help="LoRA rank (default 8)")
    train.add_argument("--eval-fraction", type=float, help="share of samples held out (default 0.05)")
    train.add_argument("--max-length", type=int, help="longest sample in tokens (default 1024)")
    train.add_argument("--save-steps", type=int, help="checkpoint every N steps (default 50)")
    train.add_argument("--seed", type=int, help="random seed (default 42)")
    train.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], help="mixed precision (default auto)")
    train.add_argument("--quantization", choices=["auto", "nf4", "none"], help="4-bit base (default auto: on CUDA)")
    train.add_argument("--report-to", action="append", choices=["tensorboard", "wandb", "none"],
                       help="metric logger (repeatable; default tensorboard and wandb, offline without a key)")
    train.add_argument("--resume", action="store_true", default=None,
                       help="continue from the latest checkpoint in the output folder")
    _add_params_option(train)

    merge = commands.add_parser(
        "merge", help="merge a LoRA adapter into its full-precision base model",
        description="Reload the adapter's base model unquantized, merge the adapter into it and save a "
                    "standalone model (safetensors) with every tokenizer file of the base.")
    merge.add_argument("--adapter", help="adapter folder: the train output or one of its checkpoint-N folders")
    merge.add_argument("--output", help="merged model folder (default: models/merged)")
    merge.add_argument("--base-model", help="base model, if not the one recorded in the adapter")
    merge.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="merged weights (default float32)")
    _add_params_option(merge)

    export = commands.add_parser(
        "export", help="convert a merged model to GGUF with an Ollama Modelfile, checked against llama.cpp",
        description="Convert a merged model to GGUF with llama.cpp's converter (f16, bf16, q8_0; K-quants through "
                    "llama.cpp's quantizer), write the Ollama Modelfile (template, temperature, top_p, stops) and a "
                    "variant that lets Ollama convert the safetensors itself, rewrite tokenizer.json merges for "
                    "Ollama < 0.5, and check that llama.cpp generates the same tokens as transformers.")
    export.add_argument("--model", help="merged model folder (default: models/merged)")
    export.add_argument("--output-dir", help="where the GGUF and Modelfiles go (default: models/export)")
    export.add_argument("--name", help="model name (GGUF file name; Ollama name for push)")
    export.add_argument("--report", help="also write export.json here (a DVC metric)")
    export.add_argument("--quantize", choices=["f16", "bf16", "q8_0", "q4_K_M", "q5_K_M", "q6_K"],
                        help="GGUF type (default f16)")
    export.add_argument("--no-check", dest="check", action="store_false", default=None,
                        help="skip the llama.cpp vs transformers check")
    export.add_argument("--check-tokens", type=int, help="tokens generated per check prompt (default 16)")
    _add_params_option(export)

    push = commands.add_parser(
        "push", help="create the exported model in Ollama and push it",
        description="Run `ollama create NAME -f Modelfile` and `ollama push NAME` in the export folder, or, "
                    "without the ollama CLI, the same through the REST API of the server at OLLAMA_HOST.")
    push.add_argument("--output-dir", help="the export folder (default: models/export)")
    push.add_argument("--name", help="Ollama model name, e.g. USER/cookiebaker-sfw")
    push.add_argument("--no-push", dest="push", action="store_false", default=None, help="create locally only")
    push.add_argument("--host", help="Ollama server for the REST API (default: OLLAMA_HOST or 127.0.0.1:11434)")
    _add_params_option(push)

    evaluate = commands.add_parser(
        "eval", help="measure the replies: tuned responder and its base on the samples train held out",
        description="Evaluate a responder on exactly the samples `cookiebaker train` held out (heldout.json beside "
                    "the adapter): response-only loss, and replies generated through the backend `serve` uses, with "
                    "the export's sampling settings and a fixed seed, measured for echoes of the query, loops, empty "
                    "replies, stops on the end-of-turn token, chat-template leaks, distinct bigrams and length, "
                    "beside the base model and the real responses. Writes a JSON report (numbers only, a DVC "
                    "metric) and a Markdown side-by-side table (holds chat text).")
    evaluate.add_argument("--model", metavar="REF", help="export folder, .gguf, merged folder or ollama:NAME")
    evaluate.add_argument("--data", help="the samples table the model was trained on")
    evaluate.add_argument("--output", help="JSON report (default: reports/eval.json; the .md goes beside it)")
    evaluate.add_argument("--markdown", help="side-by-side Markdown report (default: the output with .md)")
    evaluate.add_argument("--split", help="heldout.json written by train (default: found from the model)")
    evaluate.add_argument("--base-model", metavar="REF",
                          help="base to compare with (default: the one train recorded; 'none': no comparison)")
    evaluate.add_argument("--max-samples", type=int, help="held-out queries answered per model (default 64)")
    evaluate.add_argument("--max-new-tokens", type=int, help="longest generated reply in tokens (default 64)")
    evaluate.add_argument("--seed", type=int, help="sampling seed (default 0)")
    evaluate.add_argument("--temperature", type=float, help="override the export's temperature")
    evaluate.add_argument("--top-p", type=float, help="override the export's top_p")
    _add_params_option(evaluate)

    serve = commands.add_parser(
        "serve", help="serve the SFW and NSFW responders over HTTP",
        description="One HTTP service for both responders: POST /webhook/response routes a client's message by "
                    "its sfw flag and keeps the chat's history; /api/chat and /api/tags speak Ollama's API and "
                    "/v1/chat/completions OpenAI's (streaming too), with model names cookiebaker-sfw and "
                    "cookiebaker-nsfw; /healthz; /metrics (Prometheus). Set COOKIEBAKER_API_KEY to require "
                    "Authorization: Bearer <key> (required off loopback). A model is a .gguf or export folder "
                    "(llama.cpp in this process), a merged model folder (transformers), or ollama:NAME.")
    serve.add_argument("--sfw-model", metavar="REF", help="SFW responder")
    serve.add_argument("--nsfw-model", metavar="REF", help="NSFW responder")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--config", dest="params", metavar="FILE",
                       help="YAML file with a serve: section (default: ./params.yaml when it exists)")

    report = commands.add_parser(
        "report", help="draw PNG charts of the datasets and of training",
        description="Charts in <workdir>/reports: messages per chat and per sender, reply and burst statistics, "
                    "what was dropped and why, sample lengths in tokens, and the train/eval loss curves.")
    report.add_argument("--workdir", default=".", help="project folder with data/, models/ and reports/ (default .)")
    report.add_argument("--tokenizer", help="model folder whose tokenizer measures sample lengths")

    demo = commands.add_parser(
        "demo", help="run the pipeline end to end on built-in sample chats, offline",
        description="Write sample SFW and NSFW Telegram exports (invented people, no real data) into "
                    "WORKDIR/data and run the whole chain on them with the real stages: ingest, pairs, train on the "
                    "embedded SmolLM2-135M (a short CPU schedule), merge, export to GGUF checked in llama.cpp, and "
                    "the service, asked once per route. Finished stages are reused when run again.")
    demo.add_argument("--workdir", default="demo", help="where the demo writes everything (default: ./demo)")
    demo.add_argument("--quick", action="store_true", help="a minimal run (tiny chats, two training steps)")
    return parser


def _overrides(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names}


def _run_ingest(args: argparse.Namespace) -> None:
    from cookiebaker import ingest

    config = build_config(ingest.IngestConfig, "ingest", read_params(args.params),
                          _overrides(args, ["inputs", "output", "report", "skip_invalid"]))
    report = ingest.run(config)
    print(f"ingest: {report['rows']} rows from {report['chats']} chats in {report['files_read']} files "
          f"→ {config.output}")
    for skipped in report["skipped"]:
        print(f"  skipped {skipped['file']}: {skipped['error']}")


def _run_pairs(args: argparse.Namespace) -> None:
    from cookiebaker import pairs

    params = read_params(args.params)
    overrides = _overrides(args, ["input", "output", "report", "mode", "burst_window_minutes",
                                  "session_gap_minutes", "max_turns", "response_sender_ids", "bot_sender_ids"])
    if args.opt_out_sender_ids:
        section = dict(params.get("pairs") or {})
        privacy = dict(section.get("privacy") or {})
        privacy["opt_out_sender_ids"] = list(privacy.get("opt_out_sender_ids") or []) + args.opt_out_sender_ids
        section["privacy"] = privacy
        params = {**params, "pairs": section}
    config = build_config(pairs.PairsConfig, "pairs", params, overrides)
    report = pairs.run(config)
    dropped = sum(report["dropped"].values())
    print(f"pairs: {report['samples']} {config.mode} samples from {report['messages']} messages "
          f"({dropped} dropped, see the report) → {config.output}")


def _run_train(args: argparse.Namespace) -> None:
    from cookiebaker import train

    names = ["data", "output_dir", "report", "base_model", "max_steps", "learning_rate", "warmup_steps", "batch_size",
             "grad_accum", "lora_r", "eval_fraction", "max_length", "save_steps", "seed", "precision",
             "quantization", "report_to", "resume"]
    config = build_config(train.TrainConfig, "train", read_params(args.params), _overrides(args, names))
    metrics = train.run(config)
    print(f"train: {metrics['steps']} steps on {metrics['samples']} samples, eval loss "
          f"{_fmt(metrics['eval_loss_before'])} → {_fmt(metrics['eval_loss_after'])}, "
          f"{metrics['tokens_per_second']} tokens/s → {config.output_dir}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _run_merge(args: argparse.Namespace) -> None:
    from cookiebaker import merge

    config = build_config(merge.MergeConfig, "merge", read_params(args.params),
                          _overrides(args, ["adapter", "output", "base_model", "dtype"]))
    report = merge.run(config)
    print(f"merge: {report['adapter']} + {report['base_model']} → {report['output']}")


def _run_export(args: argparse.Namespace) -> None:
    from cookiebaker import export

    config = build_config(export.ExportConfig, "export", read_params(args.params),
                          _overrides(args, ["model", "output_dir", "name", "report", "quantize", "check", "check_tokens"]))
    report = export.run(config)
    parity = report["parity"]
    check = "not checked" if parity is None else (
        f"llama.cpp agrees on {parity['agreement']:.0%} of {len(parity['prompts'])} prompts, "
        f"tokenizer {'matches' if parity['tokenizer_matches'] else 'DIFFERS'}, "
        f"end of turn {'stops' if parity['end_of_turn_stops_generation'] else 'does NOT stop'} generation")
    print(f"export: {report['gguf']} ({report['gguf_bytes'] / 2**20:.1f} MiB, {report['quantize']}); {check}")
    print(f"  ollama create {config.name} -f {report['modelfile']}")


def _run_push(args: argparse.Namespace) -> None:
    from cookiebaker.export import push

    config = build_config(push.PushConfig, "push", read_params(args.params),
                          _overrides(args, ["output_dir", "name", "push", "host"]))
    steps = push.run(config)
    print("push: " + "; ".join(steps))


def _run_eval(args: argparse.Namespace) -> None:
    from cookiebaker import eval as evaluation

    names = ["model", "data", "output", "markdown", "split", "base_model", "max_samples", "max_new_tokens", "seed",
             "temperature", "top_p"]
    config = build_config(evaluation.EvalConfig, "eval", read_params(args.params), _overrides(args, names))
    report = evaluation.run(config)
    print(f"eval: {report['heldout_samples']} held-out samples, {report['generated']} answered → {config.output}")
    print(f"  {'':6} {'loss':>7} {'echo':>6} {'loop':>6} {'empty':>6} {'stop':>6} {'leak':>6} {'dist-2':>7} "
          f"{'words':>6}")
    for name in ("tuned", "base", "real"):
        if name in report:
            print("  " + _eval_row(name, report[name]))


def _eval_row(name: str, values: dict) -> str:
    def cell(key: str, width: int) -> str:
        value = values.get(key)
        return f"{'–' if value is None else f'{value:.3f}' if key != 'mean_reply_words' else f'{value:.1f}':>{width}}"

    return (f"{name:6} {cell('loss', 7)} {cell('echo_rate', 6)} {cell('loop_rate', 6)} {cell('empty_rate', 6)} "
            f"{cell('stop_rate', 6)} {cell('template_leak_rate', 6)} {cell('distinct_2', 7)} "
            f"{cell('mean_reply_words', 6)}")


def _run_serve(args: argparse.Namespace) -> None:
    from cookiebaker import serve

    config = build_config(serve.ServeConfig, "serve", read_params(args.params),
                          _overrides(args, ["sfw_model", "nsfw_model", "host", "port"]))
    print(f"serving on http://{config.host}:{config.port} (Ctrl-C to stop)", flush=True)
    serve.run(config)


def _run_report(args: argparse.Namespace) -> None:
    from cookiebaker import report

    written = report.run(report.ReportConfig(workdir=args.workdir, tokenizer=args.tokenizer))
    print(f"report: {len(written)} charts")
    for path in written:
        print(f"  {path}")


def _run_demo(args: argparse.Namespace) -> None:
    from cookiebaker import demo

    demo.run(demo.DemoConfig(workdir=args.workdir, quick=args.quick))


COMMANDS = {"ingest": _run_ingest, "pairs": _run_pairs, "train": _run_train, "merge": _run_merge,
            "export": _run_export, "push": _run_push, "eval": _run_eval, "serve": _run_serve, "report": _run_report,
            "demo": _run_demo}


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        COMMANDS[args.command](args)
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
