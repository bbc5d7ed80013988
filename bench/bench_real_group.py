"""What to expect from a real chat: the whole pipeline on a real group conversation, with the embedded model.

    python bench/bench_real_group.py [--export ../shared/data/telegram/tele_statistics_offline/result.json]
                                     [--workdir bench/results/real_group] [--context-turns N] [--speakers S]

Runs the stage commands a user runs (ingest → pairs → train → merge → export → eval) on one export, with the
demo's CPU schedule on the embedded SmolLM2-135M (60 steps of 8 samples at lr 6e-4, the short system prompt), and
prints eval's table: the served q8_0 GGUF, its base and the real replies on the held-out samples (numbers only;
the side-by-side Markdown report in the workdir holds chat text). Writes bench/results/real_group.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLI = str(Path(sys.executable).with_name("cookiebaker"))
DEFAULT_EXPORT = HERE.parent.parent / "shared" / "data" / "telegram" / "tele_statistics_offline" / "result.json"


def stages(export: Path, work: Path, context_turns: int, speakers: str) -> list[tuple[str, list[str]]]:
    data, models, reports = work / "data", work / "models", work / "reports"
    return [
        ("ingest", ["ingest", str(export), "-o", str(data / "chat.parquet"), "--report", str(reports / "ingest.json")]),
        ("pairs", ["pairs", str(data / "chat.parquet"), "-o", str(data / "chat_qa.parquet"),
                   "--context-turns", str(context_turns), "--speakers", speakers,
                   "--report", str(reports / "pairs.json")]),
        ("train", ["train", "--data", str(data / "chat_qa.parquet"), "--output-dir", str(models / "chat"),
                   "--base-model", "embedded:smollm2-135m", "--max-steps", "60", "--batch-size", "8",
                   "--grad-accum", "1", "--learning-rate", "6e-4", "--warmup-steps", "3", "--save-steps", "60",
                   "--eval-fraction", "0.2", "--max-eval-samples", "64", "--system-prompt", "Reply as the group.",
                   "--no-eval-loss", "--report-to", "tensorboard", "--report", str(reports / "train.json")]),
        ("merge", ["merge", "--adapter", str(models / "chat"), "--output", str(models / "chat_merged")]),
        ("export", ["export", "--model", str(models / "chat_merged"), "--output-dir", str(models / "chat_gguf"),
                    "--name", "cookiebaker-chat", "--quantize", "q8_0", "--check-tokens", "8",
                    "--report", str(reports / "export.json")]),
        ("eval", ["eval", "--model", str(models / "chat_gguf"), "--data", str(data / "chat_qa.parquet"),
                  "--output", str(reports / "eval.json"), "--max-new-tokens", "48"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, default=DEFAULT_EXPORT)
    parser.add_argument("--workdir", type=Path, default=HERE / "results" / "real_group")
    parser.add_argument("--context-turns", type=int, default=0)
    parser.add_argument("--speakers", default="none")
    args = parser.parse_args()
    seconds = {}
    for name, command in stages(args.export, args.workdir, args.context_turns, args.speakers):
        started = time.perf_counter()
        subprocess.run([CLI, *command], check=True, stdout=subprocess.DEVNULL)
        seconds[name] = round(time.perf_counter() - started, 1)
    pairs = json.loads((args.workdir / "reports" / "pairs.json").read_text())
    evaluated = json.loads((args.workdir / "reports" / "eval.json").read_text())
    result = {"export": str(args.export), "context_turns": args.context_turns, "speakers": args.speakers,
              "samples": pairs["samples"], "heldout": evaluated["heldout_samples"], "seconds": seconds,
              "eval": {side: evaluated[side] for side in ("tuned", "base", "real") if side in evaluated}}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "real_group.json").write_text(json.dumps(result, indent=2))
    sys.path.insert(0, str(HERE.parent / "src"))
    from cookiebaker.quality import measure_table

    print(f"{pairs['samples']} samples, {evaluated['heldout_samples']} held out; seconds per stage: {seconds}")
    print("\n".join(measure_table(result["eval"])))


if __name__ == "__main__":
    main()
