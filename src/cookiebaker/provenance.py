"""Where a model came from, read from what the stages save beside their outputs: an export folder names its merged
model (``export_config.yaml``), a merged model its adapter (``merge_config.yaml``), and an adapter's folder holds the
training record (``heldout.json``: the held-out samples, the base, the system prompt and how samples were cut)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from cookiebaker.chat import HELDOUT_FILE


def _yaml(path: Path) -> dict:
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def merged_of(model: str | Path) -> Path | None:
    """The merged model folder behind an export folder, one of its GGUFs, or a merged folder itself."""
    path = Path(model)
    folder = path.parent if path.suffix == ".gguf" else path
    merged = _yaml(folder / "export_config.yaml").get("model") or (str(folder) if folder.is_dir() else None)
    return Path(merged) if merged else None


def training_record_path(model: str | Path) -> Path | None:
    """``heldout.json`` of the adapter a model came from: export → merged → adapter (its train output folder, or
    the folder above a checkpoint-N); also a merged folder or the adapter itself."""
    path = Path(model)
    merged = merged_of(path)
    adapter = _yaml(merged / "merge_config.yaml").get("adapter") if merged else None
    for folder in ([Path(adapter)] if adapter else []) + [path]:
        for candidate in (folder / HELDOUT_FILE, folder.parent / HELDOUT_FILE):
            if candidate.is_file():
                return candidate
    return None


def training_record(model: str | Path) -> dict:
    """The training record of a model (see :func:`training_record_path`); empty when there is none."""
    path = training_record_path(model)
    return json.loads(path.read_text(encoding="utf-8")) if path else {}
