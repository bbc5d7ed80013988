"""Stage ``merge``: a LoRA adapter + its full-precision base → one standalone model folder (safetensors)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal, TypedDict

from cookiebaker.config import StageConfig, save_resolved_config
from cookiebaker.errors import ModelError
from cookiebaker.io import atomic_dir

__all__ = ["MergeConfig", "run"]

log = logging.getLogger(__name__)


class MergeReport(TypedDict):
    adapter: str
    base_model: str
    output: str
    dtype: str
    tokenizer_files: list[str]


class MergeConfig(StageConfig):
    adapter: str = "models/adapter"
    """A LoRA adapter folder: ``checkpoint-N`` or the train output folder (its final adapter)."""
    output: str = "models/merged"
    """Where the merged model is written (replaced atomically if it exists)."""
    base_model: str | None = None
    """Override the base recorded in the adapter (a hub id, a folder or embedded:NAME)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Precision of the merged weights. The base is always loaded unquantized: never merge into 4-bit."""


def _rewrite_merges_for_ollama(folder: Path) -> None:
    from cookiebaker.tokenizer_fix import AmbiguousMerges, ensure_added_tokens_decoder, rewrite_merges

    ensure_added_tokens_decoder(folder)
    if (folder / "tokenizer.json").is_file():
        try:
            rewrite_merges(folder / "tokenizer.json")
        except AmbiguousMerges as exc:
            log.warning("%s", exc)


def run(config: MergeConfig) -> MergeReport:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cookiebaker.models import copy_tokenizer_files, find_adapter, load_failure, resolve_base_model

    adapter = find_adapter(config.adapter)
    recorded = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    reference = config.base_model or recorded
    if not reference:
        raise ModelError(f"{adapter}/adapter_config.json does not name its base model: pass --base-model")
    base = resolve_base_model(reference)
    dtype = getattr(torch, config.dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(adapter if (adapter / "tokenizer_config.json").is_file() else base)
    except (OSError, ValueError) as exc:
        raise load_failure(base, exc) from None
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    output = Path(config.output)
    with atomic_dir(output) as staging:
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        copied = copy_tokenizer_files(base, staging)  # the base's own files win (tokenizer.model for GGUF)
        _rewrite_merges_for_ollama(staging)
        save_resolved_config(config, staging / "merge_config.yaml")
    report: MergeReport = {"adapter": str(adapter), "base_model": reference, "output": str(output), "dtype": config.dtype,
              "tokenizer_files": sorted(set(copied) | {p.name for p in output.glob("tokenizer*")})}
    log.info("merge: %s + %s → %s", reference, adapter, output)
    return report
