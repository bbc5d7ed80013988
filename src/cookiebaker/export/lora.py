"""``export --format lora``: train's adapter as a LoRA module that vLLM and SGLang load beside one shared base
(``--enable-lora --lora-modules NAME=FOLDER``), with no merge and no second copy of the base.

The folder holds the PEFT adapter (``adapter_config.json`` naming the base to serve, ``adapter_model.safetensors``),
the tokenizer with its chat template (vLLM renders a LoRA module's chats with the module's own tokenizer), a
Modelfile (the trained system prompt and the sampling, for ``cookiebaker serve --sfw-modelfile``; also Ollama's
``FROM base`` + ``ADAPTER``), and ``export.json`` with the engine's command line.

Checked before anything is written: what the engines refuse (DoRA, biases, ``modules_to_save``, modules other than
the seven projections, a rank over the largest they take), and every tensor against the base model's own module of
that name and shape (built on the meta device: no weights are read).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from cookiebaker.errors import ModelError

if TYPE_CHECKING:
    from cookiebaker.export import ExportConfig

log = logging.getLogger(__name__)

#: Projections vLLM and SGLang apply LoRA to in Llama-, Gemma- and Qwen-style models (packed as qkv_proj and
#: gate_up_proj inside the engine).
ENGINE_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: vLLM's --max-lora-rank choices.
ENGINE_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
WEIGHTS = "adapter_model.safetensors"
TENSOR_NAME = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


class LoraReport(TypedDict):
    """export.json of a LoRA export (also the report, a DVC metric)."""

    format: str
    adapter: str
    base_model: str
    rank: int
    alpha: float
    target_modules: list[str]
    tensors: int
    adapter_bytes: int
    max_lora_rank: int
    module_name: str
    modelfile: str
    vllm: list[str]
    sglang: list[str]


def engine_problems(settings: dict) -> list[str]:
    """What in an adapter_config.json vLLM or SGLang would refuse."""
    problems = []
    if settings.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type is {settings.get('peft_type')}, not LORA")
    if settings.get("use_dora"):
        problems.append("DoRA (use_dora) is not supported by the engines")
    if settings.get("bias", "none") != "none":
        problems.append(f"bias '{settings['bias']}' needs the engine's LoRA biases: train with bias none")
    if settings.get("modules_to_save"):
        problems.append(f"modules_to_save {settings['modules_to_save']} (fully trained modules) are not LoRA")
    targets = settings.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    unknown = sorted(set(targets) - set(ENGINE_MODULES))
    if unknown:
        problems.append(f"target modules {unknown} are not among the engines' LoRA modules "
                        f"({', '.join(ENGINE_MODULES)})")
    if int(settings.get("r", 0)) > ENGINE_RANKS[-1]:
        problems.append(f"rank {settings['r']} is over the largest the engines take ({ENGINE_RANKS[-1]})")
    if settings.get("rank_pattern") or settings.get("alpha_pattern"):
        problems.append("per-module ranks or alphas (rank_pattern, alpha_pattern)")
    return problems


def tensor_problems(weights: Path, base: str) -> tuple[int, list[str]]:
    """Every LoRA tensor checked against the base's module of that name: a linear layer whose shape it fits."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    modules = dict(model.named_modules())
    problems: list[str] = []
    with safe_open(weights, framework="pt") as tensors:
        names = list(tensors.keys())
        for name in names:
            problem = _tensor_problem(name, tensors.get_slice(name).get_shape(), modules)
            if problem:
                problems.append(problem)
    if not names:
        problems.append(f"{weights.name} holds no tensors")
    return len(names), problems


def _tensor_problem(name: str, shape: list[int], modules: dict) -> str | None:
    import torch

    found = TENSOR_NAME.match(name)
    if not found:
        return f"tensor {name} is not named as PEFT names a LoRA weight (base_model.model.<module>.lora_A/B.weight)"
    module = modules.get(found["module"])
    if not isinstance(module, torch.nn.Linear):
        return f"tensor {name}: the base has no linear layer {found['module']}"
    if len(shape) != 2:
        return f"tensor {name} has shape {shape}"
    fits = shape[1] == module.in_features if found["part"] == "A" else shape[0] == module.out_features
    if not fits:
        return f"tensor {name} has shape {shape}, which does not fit {found['module']} ({module.in_features} → " \
               f"{module.out_features})"
    return None


def base_for_engines(reference: str) -> str:
    """What an engine serves as the base: a hub id as it is; an embedded model's converted folder (a local path)."""
    from cookiebaker.models import EMBEDDED_PREFIX, resolve_base_model

    return resolve_base_model(reference) if reference.startswith(EMBEDDED_PREFIX) else reference


def engine_commands(base: str, name: str, folder: Path, rank: int) -> tuple[list[str], list[str]]:
    """vLLM's and SGLang's command lines serving the base with this adapter as the LoRA module ``name``."""
    max_rank = next(r for r in ENGINE_RANKS if r >= rank)
    vllm = ["vllm", "serve", base, "--enable-lora", "--max-lora-rank", str(max_rank), "--lora-modules",
            f"{name}={folder}"]
    sglang = ["python", "-m", "sglang.launch_server", "--model-path", base, "--enable-lora", "--max-lora-rank",
              str(max_rank), "--lora-paths", f"{name}={folder}"]
    return vllm, sglang


def write_lora(adapter: Path, staging: Path, settings: dict, tokenizer_source: str, base: str,
               modelfile_text: str) -> None:
    """The folder's files, written into ``staging``: the tokenizer as train saved it, the base's own tokenizer files
    over it (as merge does)."""
    from transformers import AutoTokenizer

    from cookiebaker.models import copy_tokenizer_files

    shutil.copy2(adapter / WEIGHTS, staging / WEIGHTS)
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(staging)
    copy_tokenizer_files(base, staging)
    (staging / "adapter_config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    (staging / "Modelfile").write_text(modelfile_text, encoding="utf-8")


def check_adapter(adapter: Path, base: str) -> tuple[dict, int]:
    """The adapter's settings and tensor count, or one ModelError naming every problem an engine would have."""
    settings = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    weights = adapter / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{adapter} has no {WEIGHTS}: export a folder that `cookiebaker train` wrote")
    problems = engine_problems(settings)
    tensors, found = tensor_problems(weights, base)
    problems += found[:5] + ([f"... and {len(found) - 5} more tensors"] if len(found) > 5 else [])
    if problems:
        raise ModelError(f"{adapter} cannot be served as a LoRA module: {'; '.join(problems)}")
    return settings, tensors


def export_lora(config: ExportConfig) -> LoraReport:
    """Check the adapter, then write the LoRA module folder (replaced atomically) and its report."""
    from transformers import AutoTokenizer

    from cookiebaker.config import save_resolved_config
    from cookiebaker.io import atomic_dir, write_json
    from cookiebaker.modelfile import default_system_prompt, family_of, render_modelfile
    from cookiebaker.models import find_adapter
    from cookiebaker.provenance import training_record

    adapter = find_adapter(config.model)
    recorded = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    reference = training_record(adapter).get("base_model") or recorded.get("base_model_name_or_path")
    if not reference:
        raise ModelError(f"{adapter} does not say which base it was trained on (no heldout.json, no "
                         "base_model_name_or_path)")
    base = base_for_engines(reference)
    settings, tensors = check_adapter(adapter, base)
    tokenizer_source = str(adapter) if (adapter / "tokenizer_config.json").is_file() else base
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    family = family_of(tokenizer.chat_template)
    system = training_record(adapter).get("system_prompt") or default_system_prompt(tokenizer)
    output = Path(config.output_dir)
    modelfile = render_modelfile(base, family, temperature=config.temperature, top_p=config.top_p,
                                 stops=config.stop or list(family.stops), system=system, adapter=".")
    settings = {**settings, "base_model_name_or_path": base, "inference_mode": True}
    vllm, sglang = engine_commands(base, config.name, output.resolve(), int(settings["r"]))
    report: LoraReport = {
        "format": "lora", "adapter": str(adapter), "base_model": base, "rank": int(settings["r"]),
        "alpha": settings.get("lora_alpha", settings["r"]), "target_modules": sorted(settings["target_modules"]),
        "tensors": tensors, "adapter_bytes": (adapter / WEIGHTS).stat().st_size, "max_lora_rank": int(vllm[5]),
        "module_name": config.name, "modelfile": str(output / "Modelfile"), "vllm": vllm, "sglang": sglang,
    }
    with atomic_dir(output) as staging:
        write_lora(adapter, staging, settings, tokenizer_source, base, modelfile)
        write_json(report, staging / "export.json")
        save_resolved_config(config, staging / "export_config.yaml")
    if config.report:
        write_json(report, config.report)
    log.info("export: %s as the LoRA module %s on %s (%d tensors) → %s", adapter, config.name, base, tensors, output)
    return report
