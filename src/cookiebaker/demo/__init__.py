"""``cookiebaker demo``: the pipeline end to end on built-in sample chats, offline."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from pydantic import Field

from cookiebaker import ingest, pairs
from cookiebaker.config import StageConfig
from cookiebaker.demo.sample_chats import write_sample_exports
from cookiebaker.io import write_json

log = logging.getLogger(__name__)

LABELS = ("SFW", "NSFW")


class DemoConfig(StageConfig):
    workdir: str = "demo"
    """Folder that receives the sample exports, every stage's outputs and summary.json."""
    messages_per_chat: int = Field(300, ge=20)
    """Size of each sample chat."""


def run(config: DemoConfig) -> dict:
    started = time.perf_counter()
    workdir = Path(config.workdir)
    data = workdir / "data"
    write_sample_exports(data, config.messages_per_chat)
    summary: dict = {}
    for label in LABELS:
        ingest_report = ingest.run(ingest.IngestConfig(
            inputs=[str(data / label)], output=str(data / f"{label}.parquet"),
            report=str(workdir / "reports" / f"ingest_{label}.json")))
        pairs_report = pairs.run(pairs.PairsConfig(
            input=str(data / f"{label}.parquet"), output=str(data / f"{label}_qa.parquet"),
            report=str(workdir / "reports" / f"pairs_{label}.json")))
        summary[label] = {
            "messages": ingest_report["rows"],
            "pairs": pairs_report["pairs"],
            "dropped": {k: v for k, v in pairs_report["dropped"].items() if v},
            "messages_table": str(data / f"{label}.parquet"),
            "pairs_table": str(data / f"{label}_qa.parquet"),
        }
    summary["total_seconds"] = round(time.perf_counter() - started, 2)
    write_json(summary, workdir / "summary.json")
    print(f"\ncookiebaker demo finished in {summary['total_seconds']} s (workdir: {workdir})")
    for label in LABELS:
        s = summary[label]
        print(f"  {label:5s} {s['messages']:4d} messages → {s['pairs']:4d} training pairs  ({s['pairs_table']})")
        print(f"        dropped: {json.dumps(s['dropped'])}")
    print(f"  summary: {workdir / 'summary.json'}")
    return summary
