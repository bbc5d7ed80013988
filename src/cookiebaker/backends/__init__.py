"""Responder backends: what answers a model reference, for ``serve`` and ``eval`` alike.

``base`` declares what every backend is (:class:`Backend`: streaming chunks whose last says why generation ended,
the whole reply derived from it, optional scoring and token counting, its default sampling); ``registry`` resolves a
reference; one module per kind: ``llama`` (a GGUF in llama.cpp, in this process), ``hf`` (a merged model in
transformers), ``ollama`` (an Ollama server), ``remote`` (any engine with OpenAI's chat API: vLLM, SGLang,
llama.cpp's server).
"""

from __future__ import annotations

from cookiebaker.backends.base import (
    PROMPT_MARGIN,
    Backend,
    BackendUnavailable,
    Chunk,
    Completion,
    ContextOverflow,
    Fitted,
    Sampling,
    Unsupported,
    Usage,
    fit_to_context,
    iterate_in_thread,
    sampling_from_modelfile,
    with_system,
)
from cookiebaker.backends.registry import SCHEMES, open_backend, resolve
from cookiebaker.chat import cap_turns

__all__ = ["PROMPT_MARGIN", "SCHEMES", "Backend", "BackendUnavailable", "Chunk", "Completion", "ContextOverflow",
           "Fitted", "Sampling", "Unsupported", "Usage", "cap_turns", "fit_to_context", "iterate_in_thread",
           "open_backend", "resolve", "sampling_from_modelfile", "with_system", "LlamaCppBackend",
           "TransformersBackend", "OllamaBackend", "OpenAIBackend"]

_CLASSES = {"LlamaCppBackend": "llama", "TransformersBackend": "hf", "OllamaBackend": "ollama",
            "OpenAIBackend": "remote"}


def __getattr__(name: str):  # noqa: ANN202 (the backend classes, imported when asked for)
    if name in _CLASSES:
        import importlib

        return getattr(importlib.import_module(f"cookiebaker.backends.{_CLASSES[name]}"), name)
    raise AttributeError(name)
