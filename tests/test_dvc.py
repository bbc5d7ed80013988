from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import yaml
from chat_formats import to_discord, to_whatsapp
from conftest import REPO

from cookiebaker.demo import sample_chats


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


def test_dvc_repro_from_a_fresh_clone(tmp_path: Path, tiny_gemma: Path) -> None:
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(REPO), str(clone)], tmp_path)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, clone / name)  # the working tree's versions, committed or not
    params = yaml.safe_load((clone / "params.yaml").read_text())
    # The production base model is a hub download: train a tiny local one, briefly, offline.
    params["train"].update(base_model=str(tiny_gemma), max_steps=2, warmup_steps=1, save_steps=2, grad_accum=1,
                           batch_size=4, report_to=["none"])
    params["eval"].update(max_samples=4, max_new_tokens=8)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (clone / "data").mkdir(exist_ok=True)
    shutil.copy(REPO / "data" / ".gitignore", clone / "data" / ".gitignore")
    dvc = str(Path(sys.executable).with_name("dvc"))
    # The README's step works in a plain clone: the repository carries its .dvc/ folder, analytics off.
    assert (clone / ".dvc" / "config").is_file(), "commit .dvc/ (dvc init): a fresh clone is no DVC repository"
    assert "analytics = false" in (clone / ".dvc" / "config").read_text()
    written = sample_chats.write_sample_exports(clone / "data", messages_per_chat=120)
    # Every app at once: SFW is the Telegram export and a WhatsApp export of another chat, NSFW a Discord channel.
    other = sample_chats.build_chat("Cookie Club 2", 1_700_000_303, sample_chats.SFW_MEMBERS, sample_chats.SFW_SCRIPTS,
                                    sample_chats.SFW_SLOTS, 120, seed=5)
    to_whatsapp(other, clone / "data" / "SFW" / "WhatsApp Chat with Cookie Club 2.txt")
    to_discord(json.loads(written["NSFW"].read_text()), clone / "data" / "NSFW" / "general.json")
    written["NSFW"].unlink()
    _run([dvc, "repro"], clone)
    sources = {label: json.loads((clone / "reports" / f"ingest_{label}.json").read_text())["files_by_source"]
               for label in ("SFW", "NSFW")}
    assert sources == {"SFW": {"telegram": 1, "whatsapp": 1, "discord": 0},
                       "NSFW": {"telegram": 0, "whatsapp": 0, "discord": 1}}
    implicit = json.loads((clone / "reports" / "pairs_SFW.json").read_text())["implicit_pairs"]
    assert implicit > 0  # the WhatsApp chat has no reply links
    for label in ("SFW", "NSFW"):
        assert pl.read_parquet(clone / "data" / f"{label}.parquet").height >= 120
        assert pl.read_parquet(clone / "data" / f"{label}_qa.parquet").height > 0
        assert (clone / "reports" / f"pairs_{label}.json").is_file()
        assert (clone / "models" / label / "checkpoint-2" / "adapter_config.json").is_file()
        assert (clone / "models" / f"{label}_merged" / "model.safetensors").is_file()
        assert (clone / "reports" / f"train_{label}_loss.json").is_file()
        assert (clone / "models" / f"{label}_gguf" / f"cookiebaker-{label.lower()}.f16.gguf").is_file()
        assert json.loads((clone / "reports" / f"export_{label}.json").read_text())["parity"]["agreement"] == 1.0
        module = json.loads((clone / "reports" / f"lora_{label}.json").read_text())
        assert module["module_name"] == f"cookiebaker-{label.lower()}" and module["base_model"] == str(tiny_gemma)
        assert (clone / "models" / f"{label}_lora" / "adapter_model.safetensors").is_file()
        evaluated = json.loads((clone / "reports" / f"eval_{label}.json").read_text())
        assert evaluated["base_model"] == str(tiny_gemma) and evaluated["tuned"]["loss"] > 0
        assert "holds chat text" in (clone / "reports" / f"eval_{label}.md").read_text()
    again = _run([dvc, "repro"], clone)
    assert "Data and pipelines are up to date" in again.stdout
    metrics = _run([dvc, "metrics", "show", "--json"], clone)
    assert "pairs_SFW.json" in metrics.stdout and "train_NSFW.json" in metrics.stdout
    assert "eval_NSFW.json" in metrics.stdout
    ignored = _run(["git", "check-ignore", "reports/eval_SFW.md", "reports/eval_NSFW.samples.json"], clone)
    assert "eval_SFW.md" in ignored.stdout and "eval_NSFW.samples.json" in ignored.stdout  # chat text: not in git
