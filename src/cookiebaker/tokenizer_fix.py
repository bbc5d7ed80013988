"""tokenizer.json BPE merges as "a b" strings: tokenizers ≥ 0.20 writes pairs (["a", "b"]), which Ollama
before 0.5.0 cannot read when it imports a safetensors model itself."""

from __future__ import annotations

import json
from pathlib import Path

from cookiebaker.errors import ModelError
from cookiebaker.io import atomic_path


class AmbiguousMerges(ModelError):
    """A merge has a token with a space in it: as an "a b" string it could not be split back."""


def rewrite_merges(tokenizer_json: Path) -> int:
    """Rewrite pair merges as strings, in place and atomically. Returns how many were rewritten (0: nothing to
    do, e.g. already strings or not a BPE tokenizer). Raises AmbiguousMerges, changing nothing, when a token
    of a merge contains a space."""
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    merges = model.get("merges")
    if model.get("type") != "BPE" or not merges:
        return 0
    pairs = [m for m in merges if isinstance(m, list)]
    if not pairs:
        return 0
    spaced = [m for m in pairs if any(" " in part for part in m)]
    if spaced:
        example = " + ".join(repr(part) for part in spaced[0])
        raise AmbiguousMerges(f"{tokenizer_json}: {len(spaced)} merge(s) have a token with a space (e.g. {example}); "
                              "as 'a b' strings they would be ambiguous, so tokenizer.json was left as it is "
                              "(Ollama ≥ 0.5.0 reads it directly)")
    model["merges"] = [" ".join(m) if isinstance(m, list) else m for m in merges]
    with atomic_path(tokenizer_json) as tmp:
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    return len(pairs)


def ensure_added_tokens_decoder(model_dir: Path) -> int:
    """Write ``added_tokens_decoder`` into tokenizer_config.json when it is missing.

    transformers 5 no longer writes it, but llama.cpp's converter reads it to mark a SentencePiece model's
    chat tokens (``<start_of_turn>``, ``<end_of_turn>``) as control tokens; without it the GGUF tokenizes them
    as plain text. Returns how many tokens were written (0: nothing to do)."""
    from transformers import AutoTokenizer

    config_path = model_dir / "tokenizer_config.json"
    if not config_path.is_file():
        return 0
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("added_tokens_decoder"):
        return 0
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    special = set(tokenizer.all_special_tokens)
    decoder = {}
    for token_id, token in sorted(tokenizer.added_tokens_decoder.items()):
        decoder[str(token_id)] = {"content": token.content, "lstrip": token.lstrip, "normalized": token.normalized,
                                  "rstrip": token.rstrip, "single_word": token.single_word,
                                  "special": bool(token.special or token.content in special)}
    if not decoder:
        return 0
    config["added_tokens_decoder"] = decoder
    with atomic_path(config_path) as tmp:
        tmp.write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return len(decoder)
