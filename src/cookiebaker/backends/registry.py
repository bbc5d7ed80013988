"""One way from a model reference to the backend that answers it, for ``serve`` and ``eval`` alike.

| reference | backend |
|---|---|
| ``ollama:NAME`` | :class:`OllamaBackend` (the server at ``OLLAMA_HOST``) |
| ``openai:http://HOST:PORT/v1#MODEL`` | :class:`OpenAIBackend` (vLLM, SGLang, llama.cpp's server, ...) |
| a ``.gguf`` file, or an export folder (GGUF + Modelfile) | :class:`LlamaCppBackend`, with the Modelfile's sampling |
| a merged model folder (``config.json``), a hub id | :class:`TransformersBackend` |
| ``embedded:NAME`` | the embedded model's GGUF (in a given GGUF type: converted once and cached) |

A new kind of backend is one module and one entry in :data:`SCHEMES` (a prefix) or in :func:`resolve`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cookiebaker.backends.base import Backend, Sampling, sampling_from_modelfile
from cookiebaker.errors import ModelError


def _ollama(reference: str, n_ctx: int) -> Backend:
    from cookiebaker.backends.ollama import OllamaBackend

    return OllamaBackend(reference.removeprefix("ollama:"), Sampling())


def _openai(reference: str, n_ctx: int) -> Backend:
    from cookiebaker.backends.remote import OpenAIBackend

    return OpenAIBackend(reference)


def _embedded(reference: str, n_ctx: int, kind: str | None = None) -> Backend:
    from cookiebaker.models import EMBEDDED_PREFIX, embedded_gguf, embedded_gguf_as

    name = reference.removeprefix(EMBEDDED_PREFIX)
    return _gguf(embedded_gguf_as(name, kind) if kind else embedded_gguf(name), n_ctx)


#: Reference prefixes and the backends they name.
SCHEMES: dict[str, Callable[[str, int], Backend]] = {"ollama:": _ollama, "openai:": _openai, "embedded:": _embedded}


def _gguf(path: Path, n_ctx: int) -> Backend:
    from cookiebaker.backends.llama import LlamaCppBackend

    modelfile = path.parent / "Modelfile"
    return LlamaCppBackend(path, sampling_from_modelfile(modelfile) if modelfile.is_file() else Sampling(), n_ctx)


def _export_folder(path: Path, n_ctx: int) -> Backend:
    """The GGUF an export folder's Modelfile names (else its first), with the Modelfile's sampling."""
    from cookiebaker.backends.llama import LlamaCppBackend

    ggufs = sorted(path.glob("*.gguf"))
    modelfile = path / "Modelfile"
    chosen = ggufs[0]
    if modelfile.is_file():
        from cookiebaker.modelfile import parse_modelfile

        source = parse_modelfile(modelfile.read_text(encoding="utf-8"))["from"] or ""
        chosen = path / source.removeprefix("./") if source.endswith(".gguf") else chosen
    return LlamaCppBackend(chosen, sampling_from_modelfile(modelfile) if modelfile.is_file() else Sampling(), n_ctx)


def _transformers(folder: str) -> Backend:
    from cookiebaker.backends.hf import TransformersBackend
    from cookiebaker.models import load_failure

    try:
        return TransformersBackend(Path(folder), Sampling())
    except (OSError, ValueError) as exc:
        raise load_failure(folder, exc) from None


def resolve(reference: str, n_ctx: int = 4096, *, gguf_kind: str | None = None, hub: bool = False) -> Backend:
    """The backend for a model reference (see the table above). A GGUF gets a context of ``n_ctx`` tokens; an
    embedded model is served as a GGUF of ``gguf_kind`` where given (eval serves a base in its tuned model's type);
    ``hub``: a hub id is loaded by transformers (eval's bases), else it is no reference."""
    for prefix, make in SCHEMES.items():
        if reference.startswith(prefix):
            return _embedded(reference, n_ctx, gguf_kind) if prefix == "embedded:" else make(reference, n_ctx)
    path = Path(reference).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _gguf(path, n_ctx)
    if path.is_dir() and any(path.glob("*.gguf")):
        return _export_folder(path, n_ctx)
    if path.is_dir() and (path / "config.json").is_file():
        return _transformers(str(path))
    if hub:
        from cookiebaker.models import resolve_base_model

        return _transformers(resolve_base_model(reference))
    raise ModelError(f"model '{reference}' is neither ollama:NAME, openai:URL#MODEL, a .gguf file, an export folder "
                     "nor a merged model folder")


def open_backend(reference: str, n_ctx: int = 4096) -> Backend:
    """``resolve`` as serve uses it (no hub downloads)."""
    return resolve(reference, n_ctx)
