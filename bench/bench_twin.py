"""Benchmark: which training samples make a twin of the chat? The demo, once per recipe, measured by eval.

    python bench/bench_twin.py [--variants pairs,context,context_names,conversations] [--avx2]

Each variant runs ``cookiebaker demo`` (both labels: the same sample chats, the same schedule) into its own folder
under bench/results/twin/, with one recipe of samples (``pairs.mode``, ``context_turns``, ``speakers``; some
variants another learning rate, batch or number of steps), and prints the eval measures of the served GGUFs
(tuned, base, real) side by side: style_auc, context_hit, judge_hit, top5_share, echo, loops, stops, and the demo's
seconds.
``--avx2`` runs the demo as on a CPU without AVX-512 or native bf16 (PyTorch's AVX2 kernels, oneDNN capped at AVX2,
so training runs in fp32: the slowest CPU the demo's 15-minute budget must hold on; llama.cpp keeps the instructions
it was compiled for). Writes bench/results/twin.json; a variant already measured is read back (delete its folder to
measure it again).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CLI = Path(sys.executable).with_name("cookiebaker")

#: name → the demo's sample options.
VARIANTS = {
    "pairs": {"mode": "pairs", "context_turns": 0, "speakers": "none"},
    "pairs_names": {"mode": "pairs", "context_turns": 0, "speakers": "names"},
    "context": {"mode": "pairs", "context_turns": 6, "speakers": "none"},
    "context_names": {"mode": "pairs", "context_turns": 6, "speakers": "names"},
    "conversations": {"mode": "conversations", "context_turns": 0, "speakers": "none"},
    "conversations_names": {"mode": "conversations", "context_turns": 0, "speakers": "names"},
    # The same budget, a steeper schedule: does the default recipe learn more in the demo's 60 steps?
    "context_names_lr1e-3": {"mode": "pairs", "context_turns": 6, "speakers": "names", "learning_rate": 1e-3},
    # The same budget spent on twice the updates: half the batch, twice the steps (the same samples seen).
    "context_names_batch4_120steps": {"mode": "pairs", "context_turns": 6, "speakers": "names", "batch_size": 4,
                                      "max_steps": 120},
    # The same budget spent on more passes: half the context, half again as many steps.
    "context3_names_90steps": {"mode": "pairs", "context_turns": 3, "speakers": "names", "max_steps": 90},
    # Past the budget: three times the steps (about six passes), at the demo's rate and at a third of it: how far
    # more training moves the targets, which the demo's 15 minutes cannot show.
    "context_names_180steps": {"mode": "pairs", "context_turns": 6, "speakers": "names", "max_steps": 180},
    "context_names_180steps_lr2e-4": {"mode": "pairs", "context_turns": 6, "speakers": "names", "max_steps": 180,
                                      "learning_rate": 2e-4},
}
MEASURES = ("loss", "context_hit", "judge_hit", "style_auc", "top5_share", "echo_rate", "loop_rate", "stop_rate",
            "mean_reply_words")
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def run_variant(name: str, options: dict, avx2: bool) -> dict:
    workdir = RESULTS / "twin" / name
    summary = workdir / "summary.json"
    if not summary.is_file():
        flags = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
        env = {**os.environ, **(AVX2 if avx2 else {})}
        started = time.perf_counter()
        subprocess.run([str(CLI), "demo", "--workdir", str(workdir), *flags], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return json.loads(summary.read_text())


def rows(name: str, summary: dict) -> list[dict]:
    out = []
    for label in ("SFW", "NSFW"):
        entry = summary[label]
        for side in ("tuned", "base", "real"):
            measured = entry["eval"].get(side)
            if measured:
                out.append({"variant": name, "label": label, "side": side, "pairs": entry["pairs"],
                            "train_seconds": entry["train_seconds"], "total_seconds": summary["total_seconds"],
                            **{m: measured.get(m) for m in MEASURES}})
    return out


def fmt(value) -> str:
    return "–" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--avx2", action="store_true")
    args = parser.parse_args()
    table = []
    for name in args.variants.split(","):
        table += rows(name, run_variant(name, VARIANTS[name], args.avx2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "twin.json").write_text(json.dumps({"avx2": args.avx2, "variants": VARIANTS, "rows": table},
                                                  indent=2))
    header = ["variant", "label", "side", "pairs", "total_seconds", *MEASURES]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in table:
        print("| " + " | ".join(fmt(row[key]) for key in header) + " |")


if __name__ == "__main__":
    main()
