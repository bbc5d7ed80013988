"""Stage ``export``: a merged model → GGUF + Ollama Modelfile, checked against llama.cpp."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, TypedDict

from pydantic import Field

from cookiebaker.config import StageConfig, save_resolved_config
from cookiebaker.errors import ConfigError, ModelError
from cookiebaker.export.lora import LoraReport, export_lora
from cookiebaker.gguf_convert import CONVERTER_TYPES, K_QUANTS, write_gguf
from cookiebaker.io import atomic_path, write_json
from cookiebaker.modelfile import default_system_prompt, family_of, render_modelfile
from cookiebaker.provenance import training_record

__all__ = ["ExportConfig", "run", "CONVERTER_TYPES", "K_QUANTS"]

log = logging.getLogger(__name__)

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


#: The parity check's default tolerance per GGUF type (see ExportConfig.logit_tolerance). Measured (the table in
#: the README's export section): f16 0.002-0.003, bf16 0.010-0.016, q8_0 0.03-0.10, q4_K_M 0.12-0.30; the SFW
#: responder's GGUF against the NSFW responder's merged model (same base, other LoRA) 0.70-0.80.
LOGIT_TOLERANCE = {"f16": 0.02, "bf16": 0.05, "q8_0": 0.2, "q6_K": 0.3, "q5_K_M": 0.4, "q4_K_M": 0.5}


class ExportConfig(StageConfig):
    format: Literal["gguf", "lora"] = "gguf"
    """``gguf``: the merged model as a GGUF + Ollama Modelfile (llama.cpp, Ollama, ``serve``); ``lora``: train's
    adapter as a LoRA module for vLLM and SGLang (PEFT adapter, tokenizer, chat template, Modelfile), served beside
    the other responder on one shared base, no merge."""
    model: str = "models/merged"
    """gguf: the merged model folder written by ``cookiebaker merge``; lora: the adapter folder written by
    ``cookiebaker train`` (or one of its checkpoint-N)."""
    output_dir: str = "models/export"
    """Where the GGUF (or the LoRA module), the Modelfiles and export.json go."""
    name: str = "cookiebaker"
    """Model name: the GGUF file is ``<name>.<quantize>.gguf``; the Ollama name for ``push``; a LoRA module's
    name in the engine (``--lora-modules NAME=...``)."""
    report: str | None = None
    """Also write export.json here (a DVC metric, which must live outside output_dir)."""
    quantize: Literal["f16", "bf16", "q8_0", "q4_K_M", "q5_K_M", "q6_K"] = "f16"
    """GGUF type: f16/bf16/q8_0 straight from the converter; K-quants through llama.cpp's quantizer (gguf only)."""
    temperature: float = Field(0.7, ge=0)
    """Modelfile PARAMETER temperature."""
    top_p: float = Field(0.7, gt=0, le=1)
    """Modelfile PARAMETER top_p."""
    stop: list[str] | None = None
    """Stop sequences; default: the family's (Gemma: <end_of_turn>, <eos>; ChatML: <|im_end|>, <|im_start|>)."""
    check: bool = True
    """gguf: compare llama.cpp with transformers greedily, an f16 export that disagrees fails the stage. (A LoRA
    export is always checked against its base: module names, shapes, what the engines refuse.)"""
    check_tokens: int = Field(16, ge=1)
    """Tokens generated per prompt in the check."""
    check_prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS))
    """Chat prompts of the check."""
    logit_tolerance: float | None = Field(None, ge=0)
    """How far llama.cpp's next-token log-probabilities may lie from transformers' after the same tokens (over
    transformers' 32 likeliest tokens, in standard deviations of its log-probabilities over the vocabulary); a
    greedy difference within it is a numerical tie. null: by GGUF type (LOGIT_TOLERANCE), between what that
    type's rounding costs and what another model (a sibling LoRA on the same base) differs by."""


def write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def run(config: ExportConfig) -> ExportReport | LoraReport:
    if Path(config.output_dir).resolve() == Path(config.model).resolve():
        raise ConfigError("export's output_dir is its model folder: give another folder (inputs are never changed)")
    if config.format == "lora":
        return export_lora(config)
    return export_gguf(config)


def export_gguf(config: ExportConfig) -> ExportReport:
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
    tokenizer_fix = write_gguf(model, gguf, config.quantize)

    # The system prompt the model was trained with (train.system_prompt), else the one its template adds itself.
    system = training_record(model).get("system_prompt") or default_system_prompt(tokenizer)
    stops = config.stop or list(family.stops)
    common = {"temperature": config.temperature, "top_p": config.top_p, "stops": stops, "system": system}
    write_text(output / "Modelfile", render_modelfile(f"./{gguf.name}", family, **common))
    # For users who let Ollama convert the safetensors themselves (needs the merges rewrite on Ollama < 0.5,
    # which `cookiebaker merge` writes into its output).
    write_text(output / "Modelfile.safetensors", render_modelfile(str(model.resolve()), family, **common))

    parity = None
    if config.check:
        from cookiebaker.export.parity import check_parity

        tolerance = LOGIT_TOLERANCE[config.quantize] if config.logit_tolerance is None else config.logit_tolerance
        parity = check_parity(gguf, model, config.check_prompts, config.check_tokens, family.end_of_turn,
                              tolerance)
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
            problems.append(f"greedy tokens agree on {parity['agreement']:.0%} of the prompts (logit error "
                            f"{parity['logit_error']:.3f} against a tolerance of {tolerance})")
        if not parity["end_of_turn_stops_generation"]:
            problems.append(f"llama.cpp does not stop at {family.end_of_turn}")
        if problems and config.quantize == "f16":
            raise ModelError(f"the f16 GGUF does not match the merged model: {'; '.join(problems)} "
                             f"(see {output / 'export.json'})")
        for problem in problems:
            log.warning("parity (%s): %s", config.quantize, problem)
    return report
