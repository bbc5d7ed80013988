"""Benchmark: ingest + pairs of a large synthetic export, cookiebaker vs the straightforward version.

    python bench/bench_dataset.py [--source telegram|whatsapp] [--messages 1000000] [--workdir bench/results]

Writes the export (Telegram: ../shared/tools/synth_telegram_export.py; WhatsApp: bench/synth_whatsapp.py, an
Android export in the US locale, 12-hour clock), cached in the workdir, then times each implementation in its own
processes, in alternating rounds (--repeat, default 3; the fastest round of each counts), and reports wall time
and peak memory (the resident memory of the command and its child processes together). The straightforward
versions are bench/straightforward.py (json.load → pandas → a Python loop per row) and
bench/straightforward_whatsapp.py (a regex per line → pandas → a Python loop per row, as the common WhatsApp
parsers work). Prints a table and writes bench/results/dataset.json (dataset_whatsapp.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
SYNTH = {"telegram": HERE.parent.parent / "shared" / "tools" / "synth_telegram_export.py",
         "whatsapp": HERE / "synth_whatsapp.py"}
STRAIGHTFORWARD = {"telegram": HERE / "straightforward.py", "whatsapp": HERE / "straightforward_whatsapp.py"}


def _family(pid: int) -> list[int]:
    """The process and all of its descendants (Linux /proc)."""
    family, queue = [], [pid]
    while queue:
        current = queue.pop()
        family.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                queue.extend(int(child) for child in task.read_text().split())
            except OSError:
                pass
    return family


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_measured(args: list[str]) -> tuple[float, int]:
    """Wall seconds of a command (until it is reaped), and the peak of the summed resident memory of it and its
    child processes, sampled every 50 ms by a thread (or the command's own peak RSS, if that is larger)."""
    started = time.perf_counter()
    process = subprocess.Popen(args, env={**os.environ, "COOKIEBAKER_PROGRESS": "off"}, stdout=subprocess.DEVNULL)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, sum(_rss(member) for member in _family(process.pid)))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed with exit code {process.returncode}")
    return elapsed, max(peak, usage.ru_maxrss * 1024)


def measure(steps: list[list[str]]) -> tuple[float, int]:
    total, peak = 0.0, 0
    for step in steps:
        seconds, step_peak = run_measured(step)
        total += seconds
        peak = max(peak, step_peak)
    return total, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("telegram", "whatsapp"), default="telegram")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=HERE / "results")
    parser.add_argument("--skip-baseline", action="store_true", help="time cookiebaker only")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per implementation; the fastest counts")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    export = work / (f"synth_{args.messages}.json" if args.source == "telegram" else
                     f"WhatsApp Chat with Synth {args.messages}.txt")
    if not export.exists():
        print(f"writing a {args.messages:,}-entry export with {SYNTH[args.source].name} ...", flush=True)
        extra = ["--locale", "en_US"] if args.source == "whatsapp" else []
        subprocess.run([sys.executable, str(SYNTH[args.source]), "--messages", str(args.messages), "--out",
                        str(export), *extra], check=True, stdout=subprocess.DEVNULL)
    size_mb = export.stat().st_size / 1e6
    cookiebaker = str(Path(sys.executable).with_name("cookiebaker"))
    ours_steps = [
        [cookiebaker, "-q", "ingest", str(export), "-o", str(work / "messages.parquet")],
        # The samples the straightforward versions make: each pair alone, no speakers (`--context-turns 6
        # --speakers names`, the defaults, cost 0.7 s more per 500,000 pairs).
        [cookiebaker, "-q", "pairs", str(work / "messages.parquet"), "-o", str(work / "qa.parquet"),
         "--context-turns", "0", "--speakers", "none"],
    ]
    base_steps = [[sys.executable, str(STRAIGHTFORWARD[args.source]), str(export), str(work / "sf_messages.parquet"),
                   str(work / "sf_qa.parquet")]]
    # Rounds alternate the two implementations, so that a slow spell of a shared machine hits both; each side's
    # fastest round is compared (as timeit does), and every round is kept in the results.
    ours_runs, base_runs = [], []
    for round_number in range(1, args.repeat + 1):
        ours_runs.append(measure(ours_steps))
        print(f"round {round_number}: cookiebaker {ours_runs[-1][0]:.2f} s", end="", flush=True)
        if not args.skip_baseline:
            base_runs.append(measure(base_steps))
            print(f", straightforward {base_runs[-1][0]:.2f} s", end="", flush=True)
        print()
    ours = (min(seconds for seconds, _ in ours_runs), max(peak for _, peak in ours_runs))
    results = {"source": args.source, "messages": args.messages, "export_mb": round(size_mb, 1),
               "cpus": os.cpu_count(),
               "rounds": args.repeat, "cookiebaker_seconds": round(ours[0], 2),
               "cookiebaker_peak_mib": round(ours[1] / 2**20),
               "cookiebaker_rounds": [round(seconds, 2) for seconds, _ in ours_runs]}
    pairs = pl.read_parquet(work / "qa.parquet").height
    results["pairs"] = pairs
    if not args.skip_baseline:
        base = (min(seconds for seconds, _ in base_runs), max(peak for _, peak in base_runs))
        results.update({"straightforward_seconds": round(base[0], 2),
                        "straightforward_peak_mib": round(base[1] / 2**20),
                        "straightforward_rounds": [round(seconds, 2) for seconds, _ in base_runs],
                        "speedup": round(base[0] / ours[0], 1), "memory_ratio": round(ours[1] / base[1], 2)})
        assert pl.read_parquet(work / "sf_qa.parquet").height == pairs, "the two implementations disagree"
    name = "dataset.json" if args.source == "telegram" else f"dataset_{args.source}.json"
    (work / name).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{args.messages:,} entries ({size_mb:.0f} MB), {pairs:,} pairs")
    print(f"{'':16s}{'seconds':>10s}{'peak MiB':>10s}")
    print(f"{'cookiebaker':16s}{results['cookiebaker_seconds']:>10.2f}{results['cookiebaker_peak_mib']:>10d}")
    if not args.skip_baseline:
        print(f"{'straightforward':16s}{results['straightforward_seconds']:>10.2f}{results['straightforward_peak_mib']:>10d}")
        print(f"speed-up {results['speedup']}×, memory {results['memory_ratio']}× of the straightforward version")


if __name__ == "__main__":
    main()
